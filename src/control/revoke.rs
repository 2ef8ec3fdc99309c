//! What [`Pool::revoke`](crate::Pool::revoke) did to a job.

/// Where a revoked job was when the revoke reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Waiting for its start time (a countdown or ETA, a retry's backoff,
    /// a rate limit).
    Scheduled,
    /// Waiting in its queue for a worker.
    Waiting,
    /// Handed to a busy worker, behind its current job.
    Reserved,
}

/// The outcome of revoking a job by id. Every revoke holds on the job's
/// record until the job is over: whatever the answer, a revoked job is
/// never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Revoked {
    /// It had not started, and now never will: its handle gives
    /// `Err(JobError::Revoked)`.
    BeforeStart(Stage),
    /// It was running and its worker was killed over it (`terminate`):
    /// its handle gives `Err(JobError::Revoked)`, and a new worker takes
    /// the old one's place.
    Terminated,
    /// It is running and was left to finish (no `terminate`, or it
    /// finished as the worker was about to be killed): its own outcome
    /// stands, but it will not be retried.
    LeftRunning,
    /// No job with this id is scheduled, waiting or running: it is over
    /// (or never was). Nothing changed.
    NotFound,
}
