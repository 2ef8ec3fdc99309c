//! [`Group`]: members run side by side, their results in order; a
//! [`chord`](Group::chord) runs a body once every member is done. The
//! failure policy is a type ([`FailFast`], [`CollectAll`]); groups of
//! members of different types are tuples ([`Members`]).

use crate::batch::JobId;
use crate::canvas::launch::{Home, Target};
use crate::canvas::node::{self, ChainErrors, Kind, Member, Node, Shape};
use crate::canvas::sealed::Sealed;
use crate::canvas::workflow::{IntoWorkflow, Step, Workflow};
use crate::client::handle::JobHandle;
use crate::error::{GroupFailure, JobError};
use crate::options::callbacks::{OnError, OnSuccess, RawFailure};
use crate::transport::codec::Codec;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// What a group does with its members' failures; a type parameter of
/// [`Group`].
pub trait Policy: Sealed {
    /// What each member gives the group (and a chord's body).
    type Member<R>;
    #[doc(hidden)]
    fn kind() -> node::Policy;
}

/// The default policy: if any member fails, the group fails — after every
/// member is done, with [`JobError::MembersFailed`] naming each failed
/// member and keeping the others' results — and a chord's body does not
/// run. Members give `R`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailFast;

/// Every member gives `Result<R, JobError>`: the group never fails of its
/// members, and a chord's body always runs, with every outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectAll;

impl Sealed for FailFast {}
impl Sealed for CollectAll {}

impl Policy for FailFast {
    type Member<R> = R;
    fn kind() -> node::Policy {
        node::Policy::FailFast
    }
}

impl Policy for CollectAll {
    type Member<R> = Result<R, JobError>;
    fn kind() -> node::Policy {
        node::Policy::CollectAll
    }
}

/// Members that run side by side, each giving `R`; the group gives a
/// `Vec` of them in member order (`Vec<R>`, or `Vec<Result<R, JobError>>`
/// with [`CollectAll`]). Celery's `group`.
///
/// Built by [`Pool::group`](crate::Pool::group) from signatures or any
/// workflows, or by [`Job::starmap`](crate::Job::starmap) and
/// [`Job::chunks`](crate::Job::chunks). Members that are signatures of one
/// job with the same options go to the workers in batches, as
/// [`Pool::map`](crate::Pool::map)'s items do: a group of a hundred
/// thousand costs about what a `map` over them does.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// fn square(x: u64) -> u64 { x * x }
/// fn sum(xs: Vec<u64>) -> u64 { xs.iter().sum() }
/// let pool = forkpool::Pool::new(2)?;
/// let squares = pool.group((1..=3).map(|x| pool.job(square).sig(x)));
/// assert_eq!(squares.submit().get(), Ok(vec![1, 4, 9]));
/// let total = squares.chord(pool.job(sum)); // the body runs once, after all
/// assert_eq!(total.submit().get(), Ok(14));
/// # Ok(()) }
/// ```
#[must_use = "a group does nothing until it is submitted"]
pub struct Group<R, P: Policy = FailFast> {
    home: Home,
    members: Vec<Member>,
    callbacks: Option<crate::options::callbacks::JobCallbacks>,
    _types: PhantomData<fn() -> (R, P)>,
}

impl<R, P: Policy> Clone for Group<R, P> {
    fn clone(&self) -> Self {
        Group {
            home: self.home.clone(),
            members: self.members.clone(),
            callbacks: self.callbacks.clone(),
            _types: PhantomData,
        }
    }
}

impl<R, P: Policy> fmt::Debug for Group<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("member_result", &std::any::type_name::<R>())
            .field("policy", &P::kind())
            .field("members", &self.len())
            .finish()
    }
}

impl<R, P: Policy> Sealed for Group<R, P> {}

impl<R, P: Policy> IntoWorkflow for Group<R, P> {
    type Output = Vec<P::Member<R>>;
    fn into_workflow(self) -> Node {
        Node {
            kind: Kind::Group {
                members: self.members,
                shape: Shape::Vec,
                policy: P::kind(),
            },
            callbacks: self.callbacks,
        }
    }
}

impl<R> Group<R, FailFast> {
    pub(crate) fn from_members(home: Home, members: Vec<Member>) -> Group<R> {
        Group {
            home,
            members,
            callbacks: None,
            _types: PhantomData,
        }
    }

    /// The members of `members`, in order.
    pub(crate) fn of<W: IntoWorkflow<Output = R>>(
        home: Home,
        members: impl IntoIterator<Item = W>,
    ) -> Group<R> {
        let members = members
            .into_iter()
            .map(|w| Member::Node(w.into_workflow()))
            .collect();
        Group::from_members(home, members)
    }
}

impl<R, P: Policy> Group<R, P> {
    pub(crate) fn home(&self) -> &Home {
        &self.home
    }

    fn with_policy<Q: Policy>(self) -> Group<R, Q> {
        Group {
            home: self.home,
            members: self.members,
            callbacks: self.callbacks,
            _types: PhantomData,
        }
    }

    /// The same group, giving every member's outcome: a
    /// `Vec<Result<R, JobError>>`, and a chord's body always runs.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::JobError;
    /// fn check(x: u32) -> u32 { assert!(x != 1, "one"); x }
    /// fn ok_count(all: Vec<Result<u32, JobError>>) -> usize { all.iter().filter(|r| r.is_ok()).count() }
    /// let pool = forkpool::Pool::new(2)?;
    /// let chord = pool.job(check).starmap(0..3).collect_all().chord(pool.job(ok_count));
    /// assert_eq!(chord.submit().get(), Ok(2));
    /// # Ok(()) }
    /// ```
    pub fn collect_all(self) -> Group<R, CollectAll> {
        self.with_policy()
    }

    /// The same group, failing if any member does (the default).
    pub fn fail_fast(self) -> Group<R, FailFast> {
        self.with_policy()
    }

    /// Members in the group: signatures and workflows count one each, a
    /// `starmap` one per argument.
    pub fn len(&self) -> usize {
        self.members
            .iter()
            .map(|m| match m {
                Member::Node(_) => 1,
                Member::Items(items) => items.count as usize,
            })
            .sum()
    }

    /// Whether the group has no members (it then gives an empty `Vec`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A chord (Celery's): this group, then `body` once every member is
    /// done — exactly once. With [`FailFast`] the body receives the
    /// members' results in order (`fn(Vec<R>) -> S`), and does not run if
    /// a member failed: the chord then gives [`JobError::MembersFailed`]. With
    /// [`CollectAll`] it receives every outcome
    /// (`fn(Vec<Result<R, JobError>>) -> S`). A failure of the body itself
    /// is the chord's error as it is. The members' results are handed to
    /// the body as the bytes the workers encoded, assembled as they come
    /// in, never decoded in between.
    ///
    /// For an errback that fires once for the whole chord, use
    /// [`Workflow::on_error`] on the chord.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forkpool::JobError;
    /// fn count(word: String) -> usize { assert!(!word.is_empty(), "empty word"); word.len() }
    /// fn total(lens: Vec<usize>) -> usize { lens.iter().sum() }
    /// let pool = forkpool::Pool::new(2)?;
    /// let words = ["fork", "pool"].map(String::from);
    /// let chord = pool.job(count).starmap(words).chord(pool.job(total));
    /// assert_eq!(chord.submit().get(), Ok(8));
    ///
    /// let words = ["fork", "", "pool"].map(String::from);
    /// let chord = pool.job(count).starmap(words).chord(pool.job(total));
    /// let Err(JobError::MembersFailed(failure)) = chord.submit().get() else { panic!() };
    /// assert_eq!(failure.failed()[0].0, 1); // member 1 failed; the body never ran
    /// assert_eq!(failure.succeeded::<usize>()?, [(0, 4), (2, 4)]);
    /// # Ok(()) }
    /// ```
    pub fn chord<B: Step<Vec<P::Member<R>>>>(self, body: B) -> Workflow<B::Output> {
        let home = self.home.clone();
        let node = Node::new(Kind::Chain {
            steps: vec![self.into_workflow(), body.into_node()],
            errors: ChainErrors::AsIs,
        });
        Workflow::new(home, node)
    }

    /// Calls `f` with the error when the group fails (once), on the pool's
    /// callback thread.
    pub fn on_error(mut self, f: impl Fn(&JobError) + Send + Sync + 'static) -> Self {
        let on_error: OnError = Arc::new(move |failure| match failure {
            RawFailure::Job(e) => f(&e),
            RawFailure::Returned(_) => f(&JobError::Codec(
                "a group's result was taken for an error".into(),
            )),
        });
        self.callbacks.get_or_insert_default().on_error = Some(on_error);
        self
    }

    /// Calls `f` with the results when the group succeeds (once), on the
    /// pool's callback thread.
    pub fn on_success(mut self, f: impl Fn(&Vec<P::Member<R>>) + Send + Sync + 'static) -> Self
    where
        P::Member<R>: DeserializeOwned,
    {
        let on_success: OnSuccess = Arc::new(move |body: &[u8]| {
            let value: Vec<P::Member<R>> = Codec::Bincode
                .decode(body)
                .map_err(|e| JobError::Codec(format!("result: {e}")))?;
            f(&value);
            Ok(())
        });
        self.callbacks.get_or_insert_default().on_success = Some(on_success);
        self
    }

    /// How many jobs the group runs: every member's steps.
    pub fn steps(&self) -> u64 {
        self.clone().into_workflow().steps()
    }

    fn node(&self) -> Node {
        self.clone().into_workflow()
    }

    /// Submits the group; returns a handle to its results.
    pub fn submit(&self) -> JobHandle<Vec<P::Member<R>>>
    where
        P::Member<R>: DeserializeOwned,
    {
        self.home.handle(&self.node())
    }

    /// Runs the group and waits for its results: `submit().get()` for a
    /// caller that waits at once (see [`Workflow::apply`]).
    pub fn apply(&self) -> Result<Vec<P::Member<R>>, JobError>
    where
        P::Member<R>: DeserializeOwned,
    {
        self.home.apply(&self.node())
    }

    /// Submits the group and returns only its id (see
    /// [`Workflow::detach`]).
    pub fn detach(&self) -> JobId {
        self.home.submit(&self.node(), Target::Store, false).0.id
    }

    /// Submits the group and forgets it; its callbacks still run.
    pub fn spawn(&self) -> JobId {
        self.home.submit(&self.node(), Target::Nowhere, false).0.id
    }
}

/// Members of different types, as a tuple of two to eight signatures or
/// workflows: what [`Pool::group_tuple`](crate::Pool::group_tuple) takes.
/// The group gives the tuple of their results.
pub trait Members: Sealed {
    /// The tuple of the members' results.
    type Output;
    #[doc(hidden)]
    fn into_nodes(self) -> Vec<Node>;
}

macro_rules! tuple_members {
    ($($t:ident $i:tt),+) => {
        impl<$($t: IntoWorkflow),+> Sealed for ($($t,)+) {}
        impl<$($t: IntoWorkflow),+> Members for ($($t,)+) {
            type Output = ($($t::Output,)+);
            fn into_nodes(self) -> Vec<Node> {
                vec![$(self.$i.into_workflow()),+]
            }
        }
    };
}

tuple_members!(A 0, B 1);
tuple_members!(A 0, B 1, C 2);
tuple_members!(A 0, B 1, C 2, D 3);
tuple_members!(A 0, B 1, C 2, D 3, E 4);
tuple_members!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_members!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_members!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// A group of members of different types: the workflow of `members`,
/// giving the tuple of their results (fail-fast).
pub(crate) fn tuple<M: Members>(home: Home, members: M) -> Workflow<M::Output> {
    let members = members.into_nodes().into_iter().map(Member::Node).collect();
    let node = Node::new(Kind::Group {
        members,
        shape: Shape::Tuple,
        policy: node::Policy::FailFast,
    });
    Workflow::new(home, node)
}

/// The results of a failed group's other members, decoded.
impl GroupFailure {
    /// The members that succeeded, with their results decoded as `R`, in
    /// order of index. For a group of members of different types, decode
    /// them one by one with [`result`](Self::result).
    pub fn succeeded<R: DeserializeOwned>(&self) -> Result<Vec<(usize, R)>, JobError> {
        self.encoded_successes()
            .map(|(index, bytes)| {
                Codec::Bincode
                    .decode(bytes)
                    .map(|value| (index, value))
                    .map_err(|e| JobError::Codec(format!("member {index}: {e}")))
            })
            .collect()
    }

    /// What member `index` gave: its result decoded as `R`, or why it
    /// failed; `None` past the last member.
    pub fn result<R: DeserializeOwned>(&self, index: usize) -> Option<Result<R, JobError>> {
        if let Some((_, error)) = self.failed().iter().find(|(i, _)| *i == index) {
            return Some(Err(error.clone()));
        }
        let (_, bytes) = self.encoded_successes().find(|(i, _)| *i == index)?;
        Some(
            Codec::Bincode
                .decode(bytes)
                .map_err(|e| JobError::Codec(format!("member {index}: {e}"))),
        )
    }
}
