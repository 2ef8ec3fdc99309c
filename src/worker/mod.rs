//! What runs in a forked child: the worker and the fork server.
//!
//! A worker reads batch frames from its inbox ring, runs each item under
//! `catch_unwind`, and writes one record per item to its outbox ring. For
//! every item it first publishes, in its status page, which item it is on
//! (and when it started, if the batch has a time limit), and afterwards
//! commits the item's record to the ring before marking the item done.
//! That is what lets the supervisor
//!
//! - kill it past a hard limit and charge exactly the item that overran,
//! - tell a job its soft limit passed ([`soft_time_limit_exceeded`](crate::soft_time_limit_exceeded)),
//! - recover the results of items that finished just before a crash, and
//!   charge only the item that was running.
//!
//! Committing a record is a plain store; the worker only pays for a fence
//! and, maybe, a doorbell (`flush`) at the end of a batch, or when the
//! supervisor has announced that it sleeps.
//!
//! A worker exits when its doorbell pipe reaches end-of-file (the supervisor
//! is gone), when it is sent an `Exit` frame, or — after reporting its
//! last result — when it is above its memory limit. It never runs the
//! caller's `atexit` handlers or destructors.

//!
//! # The rule of this folder
//!
//! Code here runs in a forked child, so it imports nothing from the
//! caller's side of the crate (the facade, the job options, the handles,
//! the supervisor): settings arrive as a [`WorkerConfig`](crate::config::WorkerConfig)
//! copied with the caller's memory, and jobs as a [`call::Call`] the caller
//! built. Only `transport/`, `sys/`, `config.rs` and `error.rs` are below it.
//! The one piece the caller's side uses is the supervisor's end of the
//! fork server ([`zygote::ZygoteLink`]), which lives beside the server it
//! talks to.
//!
//! | file | owns |
//! | --- | --- |
//! | `run.rs` | the worker's main loop: frames in, records out, doorbells, the memory check, exit codes |
//! | `batch_run.rs` | running one batch: the status word per item, panics charged to their item, releasing the input frame early |
//! | `call.rs` | the calling convention: a job's function as two addresses, and the shims that decode, call and encode |
//! | `out.rs` | encoding a result in place in the result ring |
//! | `current.rs` | what a job can ask of its worker: [`soft_time_limit_exceeded`](crate::soft_time_limit_exceeded), [`report_progress`](crate::report_progress) |
//! | `panic.rs` | capturing a job's panic message and location |
//! | `fds.rs` | the descriptor contract between the fork server and a worker |
//! | `zygote/` | the fork server, its messages, what a child may do right after `fork` |

pub(crate) mod batch_run;
pub(crate) mod call;
pub(crate) mod current;
pub(crate) mod fds;
pub(crate) mod out;
pub(crate) mod panic;
pub(crate) mod run;
pub(crate) mod zygote;
