//! [`Workflow`]: parts run one after another or side by side, with the
//! traits that say what composes with what ([`Step`], [`IntoWorkflow`]).
//!
//! Types carry the results: a workflow's type parameter is what its handle
//! gives, and a chain only accepts a next step that takes the result of the
//! one before (or ignores it: a whole workflow as a step is Celery's
//! immutable signature). A chain whose types do not line up does not
//! compile.

use crate::batch::JobId;
use crate::canvas::launch::{Home, Target};
use crate::canvas::node::{Arg, Node};
use crate::canvas::sealed::Sealed;
use crate::client::handle::JobHandle;
use crate::error::JobError;
use crate::options::callbacks::{OnError, OnSuccess, RawFailure};
use crate::options::signature::{Job, NoError};
use crate::transport::codec::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// What can follow a part whose result is `In` in a chain
/// ([`Signature::then`](crate::Signature::then), [`Workflow::then`],
/// [`Group::chord`](crate::Group::chord)).
///
/// - A [`Job`] taking `In`: it receives the result. Its output is what its
///   handle would give: `R` for [`Pool::job`](crate::Pool::job),
///   `Result<T, E>` for [`Pool::try_job`](crate::Pool::try_job) (whose
///   `Err` is then a value the next step receives, not a failure of the
///   chain).
/// - Any workflow ([`IntoWorkflow`]): it runs after, ignoring the result
///   (Celery's immutable signature).
///
/// Implemented by this crate's types only.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot follow a step that gives `{In}`",
    label = "this step does not take `{In}`",
    note = "a job that follows a step must take its result (`Job<{In}, _>`); \
            a Signature, Workflow or Group runs after it, ignoring the result"
)]
pub trait Step<In>: Sealed {
    /// What the step gives.
    type Output;
    #[doc(hidden)]
    fn into_node(self) -> Node;
}

/// A workflow, or a part of one: a [`Signature`](crate::Signature), a
/// [`Workflow`], or a [`Group`](crate::Group). What
/// [`Pool::group`](crate::Pool::group) takes as members.
///
/// Implemented by this crate's types only.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a workflow",
    note = "a job that follows a step must take that step's result; \
            workflows are Signatures (`job.sig(arg)`), Workflows and Groups"
)]
pub trait IntoWorkflow: Sealed {
    /// What it gives.
    type Output;
    #[doc(hidden)]
    fn into_workflow(self) -> Node;
}

impl<In, W: IntoWorkflow> Step<In> for W {
    type Output = W::Output;
    fn into_node(self) -> Node {
        self.into_workflow()
    }
}

impl<A, R, E> Sealed for Job<A, R, E> {}

impl<A, R> Step<A> for Job<A, R, NoError>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    type Output = R;
    fn into_node(self) -> Node {
        Node::step(Arc::new(self.spec()), Arg::Previous)
    }
}

impl<A, T, E> Step<A> for Job<A, T, E>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    type Output = Result<T, E>;
    fn into_node(self) -> Node {
        Node::step(Arc::new(self.spec()), Arg::Previous)
    }
}

/// Parts run one after another or side by side: a chain, a chord, a
/// group of different types — anything built from signatures and groups
/// but a lone signature or a plain group. Its handle gives `R`.
///
/// Built by [`Signature::then`](crate::Signature::then),
/// [`Group::chord`](crate::Group::chord) and
/// [`Pool::group_tuple`](crate::Pool::group_tuple); submitted with
/// [`submit`](Self::submit) for a [`JobHandle`] — `get`, `wait_timeout`,
/// `.await`, `cancel`, and `progress` as steps done out of all — or
/// [`detach`](Self::detach) for an id. It can be kept and submitted again.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// fn parse(text: String) -> u64 { text.trim().parse().unwrap() }
/// fn double(x: u64) -> u64 { 2 * x }
/// fn describe(x: u64) -> String { format!("got {x}") }
/// let pool = forkpool::Pool::new(2)?;
/// let workflow = pool
///     .job(parse)
///     .sig(" 21 ".into())
///     .then(pool.job(double))      // receives 21
///     .then(pool.job(describe));   // receives 42
/// assert_eq!(workflow.submit().get(), Ok("got 42".to_string()));
/// # Ok(()) }
/// ```
#[must_use = "a workflow does nothing until it is submitted"]
pub struct Workflow<R> {
    pub(crate) home: Home,
    pub(crate) node: Node,
    pub(crate) _result: PhantomData<fn() -> R>,
}

impl<R> Clone for Workflow<R> {
    fn clone(&self) -> Self {
        Workflow {
            home: self.home.clone(),
            node: self.node.clone(),
            _result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Workflow<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("result", &std::any::type_name::<R>())
            .field("steps", &self.node.steps())
            .finish()
    }
}

impl<R> Sealed for Workflow<R> {}

impl<R> IntoWorkflow for Workflow<R> {
    type Output = R;
    fn into_workflow(self) -> Node {
        self.node
    }
}

/// A signature as a workflow of one step: to put signatures and other
/// workflows of one result type side by side in a group.
///
/// ```
/// use forkpool::Workflow;
/// # fn main() -> Result<(), forkpool::Error> {
/// fn inc(x: u32) -> u32 { x + 1 }
/// let pool = forkpool::Pool::new(2)?;
/// let members: Vec<Workflow<u32>> = vec![
///     pool.job(inc).sig(1).into(),
///     pool.job(inc).sig(10).then(pool.job(inc)),
/// ];
/// assert_eq!(pool.group(members).submit().get(), Ok(vec![2, 12]));
/// # Ok(()) }
/// ```
impl<R> From<crate::Signature<R>> for Workflow<R> {
    fn from(sig: crate::Signature<R>) -> Workflow<R> {
        let home = sig.home().clone();
        Workflow::new(home, sig.into_workflow())
    }
}

/// A group as a workflow (see the conversion from a signature).
impl<R, P: crate::Policy> From<crate::Group<R, P>> for Workflow<Vec<P::Member<R>>> {
    fn from(group: crate::Group<R, P>) -> Self {
        let home = group.home().clone();
        Workflow::new(home, group.into_workflow())
    }
}

impl<R> Workflow<R> {
    pub(crate) fn new(home: Home, node: Node) -> Workflow<R> {
        Workflow {
            home,
            node,
            _result: PhantomData,
        }
    }

    /// Runs `next` once this workflow has succeeded: a [`Job`] taking `R`
    /// receives the result; a workflow runs ignoring it. The first failure
    /// ends the chain: its handle then gives [`JobError::StepFailed`] with
    /// the index of the step that failed (the first step is 0; a chord or a
    /// group is one step).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::JobError;
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// fn check(x: u32) -> u32 { assert!(x < 2, "{x} is too big"); x }
    /// let pool = forkpool::Pool::new(1)?;
    /// let wf = pool.job(inc).sig(0).then(pool.job(check)).then(pool.job(inc)).then(pool.job(check));
    /// match wf.submit().get() {
    ///     Err(JobError::StepFailed { step, error }) => {
    ///         assert_eq!(step, 3);
    ///         assert!(matches!(*error, JobError::Panicked { .. }));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn then<S: Step<R>>(self, next: S) -> Workflow<S::Output> {
        Workflow::new(self.home, self.node.then(next.into_node()))
    }

    /// Calls `f` with the error when the workflow fails — once, whatever
    /// failed in it (a member, a body, a step), cancellation included. It
    /// runs on the pool's callback thread. On a chord, this is Celery's
    /// chord errback.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use std::sync::mpsc;
    /// fn check(x: u32) -> u32 { assert!(x != 3, "three"); x }
    /// fn total(xs: Vec<u32>) -> u32 { xs.iter().sum() }
    /// let pool = forkpool::Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let chord = pool
    ///     .job(check)
    ///     .starmap(0..5)
    ///     .chord(pool.job(total))
    ///     .on_error(move |e| tx.send(e.to_string()).unwrap());
    /// assert!(chord.submit().get().is_err());
    /// assert!(rx.recv().unwrap().contains("member 3"));
    /// # Ok(()) }
    /// ```
    pub fn on_error(mut self, f: impl Fn(&JobError) + Send + Sync + 'static) -> Self {
        let on_error: OnError = Arc::new(move |failure| match failure {
            RawFailure::Job(e) => f(&e),
            RawFailure::Returned(_) => f(&JobError::Codec(
                "a workflow's result was taken for an error".into(),
            )),
        });
        self.node.callbacks.get_or_insert_default().on_error = Some(on_error);
        self
    }

    /// Calls `f` with the result when the workflow succeeds, once, on the
    /// pool's callback thread.
    pub fn on_success(mut self, f: impl Fn(&R) + Send + Sync + 'static) -> Self
    where
        R: DeserializeOwned,
    {
        let on_success: OnSuccess = Arc::new(move |body: &[u8]| {
            let value: R = Codec::Bincode
                .decode(body)
                .map_err(|e| JobError::Codec(format!("result: {e}")))?;
            f(&value);
            Ok(())
        });
        self.node.callbacks.get_or_insert_default().on_success = Some(on_success);
        self
    }

    /// How many jobs the workflow runs if nothing fails: its steps, every
    /// group member and chord body included (what
    /// [`JobHandle::progress`] counts).
    pub fn steps(&self) -> u64 {
        self.node.steps()
    }

    /// Submits the workflow; returns a handle to its result.
    pub fn submit(&self) -> JobHandle<R>
    where
        R: DeserializeOwned,
    {
        self.home.handle(&self.node)
    }

    /// Runs the workflow and waits for its result: `submit().get()` for a
    /// caller that waits at once. The calling thread drives the pool from
    /// the start, as [`Pool::apply`](crate::Pool::apply) and
    /// [`Pool::map`](crate::Pool::map) do, so the supervisor's thread is not
    /// woken to share the work (for a big group, a third of a `map`'s time
    /// on two cores).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn inc(x: u64) -> u64 { x + 1 }
    /// fn sum(xs: Vec<u64>) -> u64 { xs.iter().sum() }
    /// let pool = forkpool::Pool::new(2)?;
    /// let chord = pool.job(inc).starmap(0..1000).chord(pool.job(sum));
    /// assert_eq!(chord.apply(), Ok(500_500));
    /// # Ok(()) }
    /// ```
    pub fn apply(&self) -> Result<R, JobError>
    where
        R: DeserializeOwned,
    {
        self.home.apply(&self.node)
    }

    /// Submits the workflow and returns only its id, for
    /// [`Pool::status`](crate::Pool::status) (`Running` with its steps done
    /// as progress, then `Succeeded` or `Failed`) and
    /// [`Pool::take_result`](crate::Pool::take_result).
    pub fn detach(&self) -> JobId {
        self.home.submit(&self.node, Target::Store, false).0.id
    }

    /// Submits the workflow and forgets it; its callbacks still run.
    pub fn spawn(&self) -> JobId {
        self.home.submit(&self.node, Target::Nowhere, false).0.id
    }
}
