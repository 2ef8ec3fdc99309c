//! Workflows — Celery's canvas: signatures, chains, groups and chords,
//! typed at compile time, run by a coordinator on the caller's side.
//!
//! A [`Signature`] is a job bound to its argument ([`Job::sig`](crate::Job::sig)). A
//! chain runs steps one after another, each receiving the result of the
//! one before ([`Signature::then`], [`Workflow::then`]); a [`Group`] runs
//! members side by side and gives their results in order; a chord is a
//! group and a body that runs once after every member
//! ([`Group::chord`]). They nest freely — groups of chains, chains of
//! chords, chords whose members are groups — and a workflow's handle is a
//! [`JobHandle`](crate::JobHandle) like a job's.
//!
//! What it promises:
//! - **Types line up or it does not compile.** A step after a part giving
//!   `R` is a job taking `R`, or a whole workflow that ignores it.
//! - **It always ends.** Every workflow resolves exactly once: with its
//!   result, its first failure (the step's number, or every failed member),
//!   or `Cancelled` — when cancelled, or when the pool is terminated under
//!   it. A chord's body runs at most once, and not at all after a member
//!   failed (fail-fast) or the workflow was cancelled. Nothing starts once
//!   the workflow is over.
//! - **No job waits for another.** Results move from step to step in the
//!   caller's process, when a job resolves (`flow.rs`); a worker only ever
//!   runs jobs whose arguments are there, so no arrangement of workflows
//!   can deadlock the pool.
//! - **Bytes pass through.** A step's result goes on to the next step as
//!   the worker encoded it; a group's result is assembled from its
//!   members' encodings (`assemble.rs`). Nothing is decoded between steps.
//! - **Jobs are jobs.** Every step is a job with all its options (time
//!   limits, retries, expiry, countdown, callbacks, rate limits), counted in
//!   the pool's stats as any job. A group of many signatures of one job
//!   travels in batches, as `map`'s items do (`segment.rs`).
//! - **Size is linear** in the steps: the built tree holds a node per step
//!   and each argument once; the coordinator a part per node.
//!
//! | file | owns |
//! | --- | --- |
//! | `signature.rs` | [`Signature`]; `Job::sig`, `Job::starmap`, `Job::chunks` |
//! | `workflow.rs` | [`Workflow`], and what composes: [`Step`], [`IntoWorkflow`] |
//! | `group.rs` | [`Group`], the policies [`FailFast`] and [`CollectAll`], tuples ([`Members`]) |
//! | `node.rs` | the erased tree every workflow is, as built |
//! | `launch.rs` | where a workflow goes (`Home`: a pool, or a broker's client through `Remote`); submitting to a pool: a workflow's own slot, callbacks, queue places; a lone signature as a job |
//! | `flow.rs` | the coordinator: a running workflow and the events that move it |
//! | `parts.rs` | a running workflow's parts, and how a built tree becomes them |
//! | `segment.rs` | group members sent in batches, and their sinks |
//! | `args.rs` | batched members' arguments: typed until sent, or encoded |
//! | `assemble.rs` | a group's result from its members' encoded results |

mod args;
pub(crate) mod assemble;
pub(crate) mod flow;
mod group;
pub(crate) mod launch;
pub(crate) mod node;
mod parts;
mod segment;
mod signature;
mod workflow;

pub use group::{CollectAll, FailFast, Group, Members, Policy};
pub use signature::Signature;
pub use workflow::{IntoWorkflow, Step, Workflow};

pub(crate) use group::tuple;
pub(crate) use launch::Home;

/// Keeps the canvas's traits to the types of this crate.
pub(crate) mod sealed {
    /// Implemented by the types that may take part in a workflow.
    pub trait Sealed {}
}
