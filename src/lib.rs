//! forkpool: a process pool for Rust, in the spirit of Python's
//! `multiprocessing.Pool` and hardened like Celery's worker pool.
//!
//! `pool.map(f, items)` runs `f` in forked child processes. A crash, a hang
//! or a leak in a job costs that job, never the caller: a panic comes back
//! as [`JobError::Panicked`], a worker that segfaults or aborts as
//! [`JobError::Crashed`], a job past its time limit as
//! [`JobError::TimedOut`] — and the pool replaces the worker and goes on.
//!
//! ```
//! use forkpool::{JobError, Pool};
//! use std::time::Duration;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn explode(_: ()) {
//!     panic!("boom");
//! }
//!
//! fn main() -> Result<(), forkpool::Error> {
//!     let pool = Pool::builder().workers(2).time_limit(Duration::from_secs(5)).build()?;
//!
//!     let squares = pool.map(square, 0..1000u64)?;
//!     assert_eq!(squares[999], 999 * 999);
//!
//!     let one = pool.submit(square, 7); // a JobHandle<u64>
//!     assert_eq!(one.get(), Ok(49));
//!
//!     match pool.apply(explode, ()) {
//!         Err(JobError::Panicked { message }) => assert!(message.contains("boom")),
//!         other => panic!("expected a panic, got {other:?}"),
//!     }
//!     assert_eq!(pool.apply(square, 3), Ok(9)); // the pool keeps serving
//!     pool.join()
//! }
//! ```
//!
//! # Job options
//!
//! [`Pool::job`] (or [`Pool::try_job`] for a fallible `fn(A) -> Result<T, E>`)
//! gives a [`Job`]: the function with Celery-style options — a countdown
//! or ETA, an expiry, per-job time limits, a [`RetryPolicy`], success and
//! error callbacks, a [`RateLimit`], `ignore_result` — submitted for a
//! handle, [detached](Job::detach) for an id ([`Pool::status`],
//! [`Pool::take_result`]), or [spawned](Job::spawn) and forgotten. A job
//! can report how far it is with [`report_progress`].
//!
//! ```
//! use forkpool::{Failure, JobStatus, Pool, RetryPolicy};
//! use std::time::Duration;
//!
//! fn fetch(page: u32) -> Result<String, String> {
//!     if page == 0 { Err("no page 0".into()) } else { Ok(format!("page {page}")) }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = Pool::builder().workers(2).rate_limit(fetch, "20/s".parse()?).build()?;
//!     let job = pool
//!         .try_job(fetch)
//!         .retry(RetryPolicy::new(2).backoff(Duration::from_millis(10)))
//!         .expires(Duration::from_secs(60))
//!         .on_error(|f: &Failure<String>| eprintln!("fetch failed: {f}"));
//!
//!     assert_eq!(job.submit(1).get()?, Ok("page 1".to_string()));
//!     let handle = job.submit(0);
//!     assert_eq!(handle.get()?, Err("no page 0".to_string())); // typed, after 3 attempts
//!
//!     let id = job.detach(2); // a web handler returns this id ...
//!     while !matches!(pool.status(id), JobStatus::Succeeded | JobStatus::Failed) {
//!         std::thread::sleep(Duration::from_millis(10)); // ... a later request polls
//!     }
//!     let page: Result<String, String> = pool.take_result(id).unwrap()?;
//!     assert_eq!(page, Ok("page 2".to_string()));
//!     pool.join()?;
//!     Ok(())
//! }
//! ```
//!
//! # Workflows
//!
//! Celery's canvas, typed: a [`Signature`] is a job bound to its argument
//! ([`Job::sig`]); [`then`](Signature::then) chains steps, each receiving
//! the result of the one before; [`Pool::group`] runs members side by side
//! and a [`chord`](Group::chord) runs a body once every member is done.
//! A workflow's handle is a [`JobHandle`]; results move from step to step
//! as the bytes the workers encoded, in the caller's process, so no worker
//! ever waits for another job.
//!
//! ```
//! use forkpool::{JobError, Pool};
//!
//! fn fetch(page: u32) -> String { format!("text of page {page}") }
//! fn words(text: String) -> usize { text.split_whitespace().count() }
//! fn total(counts: Vec<usize>) -> usize { counts.iter().sum() }
//! fn check(n: usize) -> usize { assert!(n < 100, "too many words"); n }
//!
//! fn main() -> Result<(), forkpool::Error> {
//!     let pool = Pool::new(2)?;
//!     let pages = pool.group((1..=3).map(|p| pool.job(fetch).sig(p).then(pool.job(words))));
//!     let workflow = pages.chord(pool.job(total)).then(pool.job(check));
//!     assert_eq!(workflow.steps(), 8);
//!     assert_eq!(workflow.submit().get(), Ok(12));
//!
//!     let failing = pool.job(words).sig("x ".repeat(200)).then(pool.job(check));
//!     match failing.submit().get() {
//!         Err(JobError::StepFailed { step: 1, error }) => {
//!             assert!(matches!(*error, JobError::Panicked { .. }))
//!         }
//!         other => panic!("{other:?}"),
//!     }
//!     pool.join()
//! }
//! ```

//! # Several hosts
//!
//! With the cargo feature `redis`, the `broker` module sends jobs through
//! Redis to worker hosts on other machines, each running its own local
//! pool: jobs registered by name with `register!`, the
//! same `JobHandle`s, at-least-once delivery. The README's "Several hosts"
//! shows it end to end.
//!
//! # How it works
//!
//! Building a pool forks a single-threaded *fork server* (zygote) from the
//! caller; every worker is forked from it, so workers see the caller's
//! memory as it was at `build()`. A job is a plain `fn(A) -> R` — a
//! non-capturing closure coerces to it — with its argument and result
//! encoded by serde (bincode). Because every worker is a fork of the same
//! program, the function pointer itself is valid in the worker: nothing
//! needs registering.
//!
//! Jobs and results travel through per-worker shared-memory rings; a
//! supervisor thread in the caller dispatches, collects, enforces time
//! limits and replaces workers. See `DESIGN.md` in the repository.
//!
//! # What a job must not do
//!
//! Workers are forks of a process that may have had other threads. Locks
//! held by those threads at `build()` stay locked forever in the workers.
//! forkpool makes printing safe (it holds the `stdout`/`stderr` locks across
//! the fork) and the system allocator handles fork itself, but a job must
//! not take a lock of your own (a `Mutex` in a `static`, say) that another
//! thread might have held while the pool was built, and must not rely on
//! threads started before `build()` — they do not exist in the worker. A
//! time limit turns such a deadlock into a `TimedOut` rather than a hang.
//! A job must not write to its worker's descriptors 3 and 4 or to its shared
//! memory either: the supervisor then kills the worker and the job is
//! [`JobError::Crashed`]. `RELIABILITY.md` in the repository lists what
//! forkpool guarantees under faults and what it does not protect against.
//!
//! # Platform
//!
//! Linux only (it relies on `fork`, `memfd_create`, `epoll` and pidfds).

#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]
// A `Batch` (and the `Command` carrying one) is handed back by value when it
// cannot be sent (`Submitter::send`, `Conn::try_send`): moving ~180 bytes
// beats boxing every batch on the dispatch path.
#![allow(clippy::result_large_err)]

mod batch;
mod beat;
mod canvas;

#[cfg(feature = "redis")]
pub mod broker;
mod client;
mod config;
mod control;
mod error;
mod metrics;
mod options;
mod pool;
mod supervisor;
mod sys;
mod transport;
mod worker;

pub use batch::progress::Progress;
pub use batch::{JobId, ParseJobIdError};
pub use control::schedules::{
    Missed, Overlap, RunOutcome, ScheduleId, ScheduleInfo, ScheduleState,
};

pub use beat::schedule::{Schedule, ScheduleError};
pub use canvas::{
    CollectAll, FailFast, Group, IntoWorkflow, Members, Policy, Signature, Step, Workflow,
};
pub use client::handle::JobHandle;
pub use client::imap::{Imap, ImapUnordered};
pub use control::events::{Event, EventKind, Events};
#[cfg(feature = "prometheus")]
pub use control::http::MetricsServer;
pub use control::inspection::{
    ActiveJob, FunctionStats, Inspection, QueueView, ScheduledJob, Totals, WaitingJob, WorkerState,
    WorkerView,
};
#[cfg(feature = "prometheus")]
pub use control::prometheus::{MetricsCollector, MetricsFormat};
pub use control::revoke::{Revoked, Stage};
pub use error::{Error, GroupFailure, JobError, TrySubmitError};
pub use metrics::durations::DurationSummary;
pub use metrics::stats::{QueueStats, Stats};
pub use metrics::tally::{JobStats, Outcomes};
pub use options::callbacks::Failure;
pub use options::rate::{RateLimit, RateLimitError};
pub use options::results::JobStatus;
pub use options::retry::{RetryOn, RetryPolicy};
pub use options::signature::{Expiry, Job, NoError};
pub use pool::{Pool, PoolBuilder, Queue, QueueRef};
pub use transport::codec::{Codec, UnknownCodec};

/// What [`register!`] expands to; not a public API.
#[cfg(feature = "redis")]
#[doc(hidden)]
pub mod __private {
    pub use crate::broker::names::Registration;
    pub use inventory;
}
pub use worker::current::{report_progress, soft_time_limit_exceeded};
