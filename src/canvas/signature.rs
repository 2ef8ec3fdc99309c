//! [`Signature`]: a job bound to its argument; and the ways a [`Job`]
//! becomes signatures — one ([`Job::sig`]), one per argument
//! ([`Job::starmap`]), or one per chunk of arguments ([`Job::chunks`]).
//!
//! A signature keeps its argument encoded (encoded once, when it is made)
//! and its job's options without the pool ([`Spec`]), so signatures of
//! different argument types can sit side by side in a group, and a
//! signature can be submitted any number of times, alone or as a step.
//! The groups `starmap` and `chunks` build keep their arguments as given,
//! and encode them as they are sent, as `map` does (`args.rs`).

use crate::batch::JobId;
use crate::canvas::args::{Args, Typed};
use crate::canvas::group::Group;
use crate::canvas::launch::{Home, Target};
use crate::canvas::node::{Arg, Items, Kind, Leaf, Member, Node, Policy, Shape};
use crate::canvas::sealed::Sealed;
use crate::canvas::workflow::{IntoWorkflow, Step, Workflow};
use crate::client::handle::JobHandle;
use crate::error::JobError;
use crate::options::signature::{Job, NoError, Spec};
use crate::transport::codec::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A job bound to its argument (Celery's signature, `add.s(2, 2)`): it can
/// be submitted on its own — once or many times — or become a step of a
/// workflow. Made with [`Job::sig`]; every option of the job applies to
/// each run of it.
///
/// Its handle gives `R`: the job's result, or `Result<T, E>` for a job
/// built with [`Pool::try_job`](crate::Pool::try_job).
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), forkpool::Error> {
/// fn add((a, b): (u32, u32)) -> u32 { a + b }
/// let pool = forkpool::Pool::new(2)?;
/// let two_and_two = pool.job(add).time_limit(Duration::from_secs(5)).sig((2, 2));
/// assert_eq!(two_and_two.submit().get(), Ok(4));
/// assert_eq!(two_and_two.submit().get(), Ok(4)); // kept, submitted again
/// # Ok(()) }
/// ```
#[must_use = "a signature does nothing until it is submitted"]
pub struct Signature<R> {
    home: Home,
    leaf: Leaf,
    _result: PhantomData<fn() -> R>,
}

impl<R> Clone for Signature<R> {
    fn clone(&self) -> Self {
        Signature {
            home: self.home.clone(),
            leaf: self.leaf.clone(),
            _result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Signature<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = match &self.leaf.arg {
            Arg::Bound(arg) => arg.as_ref().as_ref().map(|a| a.len()).ok(),
            Arg::Previous => None,
        };
        f.debug_struct("Signature")
            .field("result", &std::any::type_name::<R>())
            .field("job", &self.leaf.spec)
            .field("argument_bytes", &encoded)
            .finish()
    }
}

impl<R> Sealed for Signature<R> {}

impl<R> IntoWorkflow for Signature<R> {
    type Output = R;
    fn into_workflow(self) -> Node {
        Node::new(Kind::Step(self.leaf))
    }
}

impl<R> Signature<R> {
    pub(crate) fn home(&self) -> &Home {
        &self.home
    }

    /// Runs `next` after this job succeeds: a [`Job`] taking `R` receives
    /// its result (the bytes the worker encoded go straight on); a whole
    /// workflow runs ignoring it. See [`Workflow::then`].
    ///
    /// Steps whose types do not line up do not compile:
    ///
    /// ```compile_fail
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn count(text: String) -> usize { text.len() }
    /// fn shout(text: String) -> String { text.to_uppercase() }
    /// let pool = forkpool::Pool::new(1)?;
    /// // `count` gives a usize, `shout` takes a String.
    /// let wf = pool.job(count).sig("hello".into()).then(pool.job(shout));
    /// # Ok(()) }
    /// ```
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn count(text: String) -> usize { text.len() }
    /// fn half(n: usize) -> usize { n / 2 }
    /// fn greet(name: String) -> String { format!("hello {name}") }
    /// let pool = forkpool::Pool::new(1)?;
    /// let wf = pool.job(count).sig("hello".into()).then(pool.job(half));
    /// assert_eq!(wf.submit().get(), Ok(2));
    /// // A signature as a step ignores the result before it.
    /// let wf = pool.job(count).sig("x".into()).then(pool.job(greet).sig("you".into()));
    /// assert_eq!(wf.submit().get(), Ok("hello you".to_string()));
    /// # Ok(()) }
    /// ```
    pub fn then<S: Step<R>>(self, next: S) -> Workflow<S::Output> {
        let first = Node::new(Kind::Step(self.leaf));
        Workflow::new(self.home, first.then(next.into_node()))
    }

    /// Submits the job; returns a handle to its result, as
    /// [`Job::submit`] would with the bound argument.
    pub fn submit(&self) -> JobHandle<R>
    where
        R: DeserializeOwned,
    {
        let slot = self.home.submit_job(&self.leaf, Target::Handle, false);
        JobHandle::new(slot, Arc::downgrade(&self.home.shared), Codec::Bincode)
    }

    /// Runs the job and waits for its result, as
    /// [`Pool::apply`](crate::Pool::apply) does.
    pub fn apply(&self) -> Result<R, JobError>
    where
        R: DeserializeOwned,
    {
        let slot = self.home.submit_job(&self.leaf, Target::Handle, true);
        JobHandle::<R>::new(slot, Arc::downgrade(&self.home.shared), Codec::Bincode).get()
    }

    /// Submits the job and returns only its id (see [`Job::detach`]).
    pub fn detach(&self) -> JobId {
        self.home.submit_job(&self.leaf, Target::Store, false).id
    }

    /// Submits the job and forgets it (see [`Job::spawn`]).
    pub fn spawn(&self) -> JobId {
        self.home.submit_job(&self.leaf, Target::Nowhere, false).id
    }
}

/// A job's signatures, for any job: the result type is `O`.
fn sig<A, R, E, O>(job: &Job<A, R, E>, arg: &A) -> Signature<O>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
    E: Send + 'static,
{
    let arg = job.shared().encode_arg(arg);
    Signature {
        home: Home::new(job.shared(), job.layers()),
        leaf: Leaf {
            spec: Arc::new(job.spec()),
            arg: Arg::Bound(Arc::new(arg)),
        },
        _result: PhantomData,
    }
}

/// Members of one job per argument: arguments `from..from + count` of
/// `args` (`whole`: sent as one batch).
fn items(spec: &Arc<Spec>, args: &Arc<dyn Args>, from: u32, count: u32, whole: bool) -> Member {
    Member::Items(Items {
        spec: spec.clone(),
        args: args.clone(),
        from,
        count,
        whole,
    })
}

/// A group of one member per argument. The arguments are kept as they are
/// and encoded as they are sent (see `args.rs`).
fn starmap<A, R, E, O>(job: &Job<A, R, E>, args: impl IntoIterator<Item = A>) -> Group<O>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
    E: Send + 'static,
{
    let spec = Arc::new(job.spec());
    let args: Vec<A> = args.into_iter().collect();
    let count = u32::try_from(args.len()).expect("fewer than 2^32 members");
    let args: Arc<dyn Args> = Arc::new(Typed::new(args));
    let home = Home::new(job.shared(), job.layers());
    let members = if count == 0 {
        Vec::new()
    } else {
        vec![items(&spec, &args, 0, count, false)]
    };
    Group::from_members(home, members)
}

/// A group of one member per `n` arguments, each member a group of its
/// own sent as one batch.
fn chunks<A, R, E, O>(
    job: &Job<A, R, E>,
    args: impl IntoIterator<Item = A>,
    n: usize,
) -> Group<Vec<O>>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
    E: Send + 'static,
{
    let spec = Arc::new(job.spec());
    let args: Vec<A> = args.into_iter().collect();
    let total = u32::try_from(args.len()).expect("fewer than 2^32 members");
    let args: Arc<dyn Args> = Arc::new(Typed::new(args));
    let home = Home::new(job.shared(), job.layers());
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let chunks = (0..total)
        .step_by(n as usize)
        .map(|from| {
            let count = n.min(total - from);
            Member::Node(Node::new(Kind::Group {
                members: vec![items(&spec, &args, from, count, true)],
                shape: Shape::Vec,
                policy: Policy::FailFast,
            }))
        })
        .collect();
    Group::from_members(home, chunks)
}

/// Signatures of jobs built with [`Pool::job`](crate::Pool::job).
impl<A, R> Job<A, R, NoError>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// This job bound to `arg`: a [`Signature`], to submit or to use as a
    /// step of a workflow. The argument is encoded now; one that cannot be
    /// encoded fails the job when it is submitted.
    pub fn sig(&self, arg: A) -> Signature<R> {
        sig(self, &arg)
    }

    /// A group of one signature of this job per argument, in order
    /// (Celery's `starmap`; a job of several values takes them as a tuple).
    /// The members travel in batches, as [`Pool::map`](crate::Pool::map)'s
    /// items do, yet each is a job with every option of this one.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn add((a, b): (u64, u64)) -> u64 { a + b }
    /// let pool = forkpool::Pool::new(2)?;
    /// let sums = pool.job(add).starmap((0..4).map(|i| (i, 10 * i)));
    /// assert_eq!(sums.submit().get(), Ok(vec![0, 11, 22, 33]));
    /// # Ok(()) }
    /// ```
    pub fn starmap(&self, args: impl IntoIterator<Item = A>) -> Group<R> {
        starmap(self, args)
    }

    /// A group of one member per `n` arguments (Celery's `chunks`): each
    /// member runs this job on its `n` arguments, in one batch on one
    /// worker, and gives their results; the group gives a `Vec` per chunk.
    /// A chunk fails if any of its jobs does ([`JobError::MembersFailed`](crate::JobError::MembersFailed)
    /// for the chunk). `n` below 1 is taken as 1.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn square(x: u32) -> u32 { x * x }
    /// let pool = forkpool::Pool::new(2)?;
    /// let chunks = pool.job(square).chunks(1..=5, 2);
    /// assert_eq!(chunks.submit().get(), Ok(vec![vec![1, 4], vec![9, 16], vec![25]]));
    /// # Ok(()) }
    /// ```
    pub fn chunks(&self, args: impl IntoIterator<Item = A>, n: usize) -> Group<Vec<R>> {
        chunks(self, args, n)
    }
}

/// Signatures of fallible jobs, built with [`Pool::try_job`](crate::Pool::try_job):
/// their result is the whole `Result<T, E>`.
impl<A, T, E> Job<A, T, E>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// This job bound to `arg` (see [`Job::sig`] of an infallible job).
    /// In a workflow its `Err` is a value: the next step receives the
    /// whole `Result`.
    pub fn sig(&self, arg: A) -> Signature<Result<T, E>> {
        sig(self, &arg)
    }

    /// A group of one signature per argument (see [`Job::starmap`] of an
    /// infallible job).
    pub fn starmap(&self, args: impl IntoIterator<Item = A>) -> Group<Result<T, E>> {
        starmap(self, args)
    }

    /// A group of one member per `n` arguments (see [`Job::chunks`] of an
    /// infallible job).
    pub fn chunks(&self, args: impl IntoIterator<Item = A>, n: usize) -> Group<Vec<Result<T, E>>> {
        chunks(self, args, n)
    }
}
