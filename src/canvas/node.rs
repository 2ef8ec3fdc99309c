//! A workflow as built, before it runs: the erased tree every public type
//! of the canvas wraps.
//!
//! The public types ([`Signature`](crate::Signature),
//! [`Workflow`](crate::Workflow), [`Group`](crate::Group)) carry their
//! result types; underneath, every workflow is a [`Node`] whose leaves are
//! jobs ([`Spec`], which holds nothing of the pool) with their arguments
//! already encoded, or waiting for the previous step's result. Building is
//! all the caller's: when a workflow is submitted, `flow.rs` turns the tree
//! into the coordinator's state and leaves the tree as it was, so it can be
//! submitted again.
//!
//! Size: a node per step, one per group and chain, and each argument once
//! — a group of many arguments of one job keeps them together ([`Items`]).
//! Nothing is copied per level of nesting.

use crate::canvas::args::Args;
use crate::error::JobError;
use crate::options::callbacks::JobCallbacks;
use crate::options::signature::Spec;
use std::fmt;
use std::sync::Arc;

/// One part of a workflow, with the callbacks set on it as a whole.
///
/// `pub` (in a private module, so nameable only in this crate) because the
/// canvas's sealed traits hand it over.
#[derive(Clone)]
pub struct Node {
    pub(crate) kind: Kind,
    /// Set with `Workflow::on_success` / `on_error` (and the group's):
    /// told once when this part resolves.
    pub(crate) callbacks: Option<JobCallbacks>,
}

/// What a part is.
#[derive(Clone)]
pub(crate) enum Kind {
    /// One job.
    Step(Leaf),
    /// Parts one after another, each started when the one before
    /// succeeded; the first failure ends it.
    Chain {
        steps: Vec<Node>,
        errors: ChainErrors,
    },
    /// Parts side by side; the result combines theirs in order.
    Group {
        members: Vec<Member>,
        shape: Shape,
        policy: Policy,
    },
}

/// How a chain reports the failure of one of its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainErrors {
    /// Naming the step: [`JobError::StepFailed`]. A chain built with `then`.
    Numbered,
    /// As the step's own error: a chord (its group, then its body), whose
    /// members' failures are already named by the group.
    AsIs,
}

/// How a group's result is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `Vec<R>`: a length, then the members' results.
    Vec,
    /// A tuple: the members' results one after another.
    Tuple,
}

/// What a group does with its members' failures. `pub` as [`Node`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Any failure fails the group, naming every failed member.
    FailFast,
    /// Every member gives a `Result<R, JobError>`; the group never fails
    /// of its members.
    CollectAll,
}

/// A job as a step of a workflow.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) spec: Arc<Spec>,
    pub(crate) arg: Arg,
}

/// Where a step's argument comes from.
#[derive(Clone)]
pub(crate) enum Arg {
    /// Bound when the step was built: one encoded `[len][bytes]` item, or
    /// why the argument could not be encoded (the step then fails when it
    /// is launched). Shared, so cloning a workflow copies no argument.
    Bound(Arc<Result<Vec<u8>, JobError>>),
    /// The previous step's result, as it came back (a chain's step after
    /// the first).
    Previous,
}

/// A member of a group.
#[derive(Clone)]
pub(crate) enum Member {
    /// Any part.
    Node(Node),
    /// Consecutive members that are jobs of one spec with bound arguments.
    Items(Items),
}

/// Jobs of one spec, one per argument: arguments `from..from + count` of
/// `args` (a group built by `starmap`, or a chunk of `chunks`, which share
/// their arguments).
#[derive(Clone)]
pub(crate) struct Items {
    pub(crate) spec: Arc<Spec>,
    pub(crate) args: Arc<dyn Args>,
    pub(crate) from: u32,
    pub(crate) count: u32,
    /// Sent as one batch, to one worker (a chunk of `chunks`), rather than
    /// split as `map` would.
    pub(crate) whole: bool,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Step(_) => "step",
            Kind::Chain { .. } => "chain",
            Kind::Group { .. } => "group",
        };
        f.debug_struct("Node")
            .field("kind", &kind)
            .field("steps", &self.steps())
            .field("callbacks", &self.callbacks.is_some())
            .finish()
    }
}

impl Node {
    pub(crate) fn new(kind: Kind) -> Node {
        Node {
            kind,
            callbacks: None,
        }
    }

    /// A step of `spec` whose argument is `arg`.
    pub(crate) fn step(spec: Arc<Spec>, arg: Arg) -> Node {
        Node::new(Kind::Step(Leaf { spec, arg }))
    }

    /// Jobs in the workflow: its steps, each group member's included.
    pub(crate) fn steps(&self) -> u64 {
        match &self.kind {
            Kind::Step(_) => 1,
            Kind::Chain { steps, .. } => steps.iter().map(Node::steps).sum(),
            Kind::Group { members, .. } => members.iter().map(Member::steps).sum(),
        }
    }

    /// `self`, then `next`: appended to `self` when it is a numbered chain
    /// with no callbacks of its own, so chains built step by step stay
    /// flat (and their step numbers are the user's).
    pub(crate) fn then(self, next: Node) -> Node {
        match self {
            Node {
                kind:
                    Kind::Chain {
                        mut steps,
                        errors: ChainErrors::Numbered,
                    },
                callbacks: None,
            } => {
                steps.push(next);
                Node::new(Kind::Chain {
                    steps,
                    errors: ChainErrors::Numbered,
                })
            }
            first => Node::new(Kind::Chain {
                steps: vec![first, next],
                errors: ChainErrors::Numbered,
            }),
        }
    }

    /// Whether anything in the workflow has callbacks (then they need the
    /// pool's callback thread).
    pub(crate) fn has_callbacks(&self) -> bool {
        if self.callbacks.is_some() {
            return true;
        }
        match &self.kind {
            Kind::Step(leaf) => !leaf.spec.callbacks.is_empty(),
            Kind::Chain { steps, .. } => steps.iter().any(Node::has_callbacks),
            Kind::Group { members, .. } => members.iter().any(|m| match m {
                Member::Node(n) => n.has_callbacks(),
                Member::Items(items) => !items.spec.callbacks.is_empty(),
            }),
        }
    }

    /// Every job spec in the workflow, once per node or item run.
    pub(crate) fn for_each_spec(&self, f: &mut dyn FnMut(&Spec)) {
        match &self.kind {
            Kind::Step(leaf) => f(&leaf.spec),
            Kind::Chain { steps, .. } => steps.iter().for_each(|s| s.for_each_spec(f)),
            Kind::Group { members, .. } => {
                for m in members {
                    match m {
                        Member::Node(n) => n.for_each_spec(f),
                        Member::Items(items) => f(&items.spec),
                    }
                }
            }
        }
    }
}

impl Member {
    fn steps(&self) -> u64 {
        match self {
            Member::Node(n) => n.steps(),
            Member::Items(items) => u64::from(items.count),
        }
    }
}
