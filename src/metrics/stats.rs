//! Counters the pool keeps about its jobs and workers, and the [`Stats`]
//! snapshot a user reads.
//!
//! Every job is counted once in `submitted` and, when it resolves, exactly
//! once in `completed`, `failed` or `cancelled`; `panicked`, `crashed`,
//! `timed_out`, `codec_errors`, `errored` and `expired` break `failed` down.
//! So at any moment `submitted == completed + failed + cancelled + (jobs
//! still in progress)`.
//!
//! A retried job counts once per attempt: each attempt that fails is
//! counted as failed, and each retry as submitted again (and in `retried`).

use super::fate::Fate;
use crate::error::JobError;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a pool's counters, from [`Pool::stats`](crate::Pool::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Worker processes alive now (started and not known to have died).
    pub live_workers: u64,
    /// Spare workers forked and waiting to replace a lost one (see
    /// [`PoolBuilder::standby_worker`](crate::PoolBuilder::standby_worker));
    /// not counted in `live_workers`.
    pub standby_workers: u64,
    /// Jobs (map items count one each) accepted by the pool.
    pub submitted: u64,
    /// Jobs that returned a result.
    pub completed: u64,
    /// Jobs that resolved to an error other than cancellation.
    pub failed: u64,
    /// Failed jobs whose function panicked.
    pub panicked: u64,
    /// Failed jobs whose worker died under them.
    pub crashed: u64,
    /// Failed jobs that ran past their hard time limit.
    pub timed_out: u64,
    /// Failed jobs whose argument or result could not be encoded, or was too large.
    pub codec_errors: u64,
    /// Failed jobs that returned their own `Err` (jobs built with
    /// [`Pool::try_job`](crate::Pool::try_job)).
    pub errored: u64,
    /// Failed jobs that expired before they started.
    pub expired: u64,
    /// Jobs cancelled before they produced a result.
    pub cancelled: u64,
    /// Attempts resubmitted by a retry policy (each is also counted in
    /// `submitted`).
    pub retried: u64,
    /// Jobs waiting for a time now: a countdown or ETA, a retry's backoff,
    /// or their function's rate limit. A gauge, not a running total.
    pub scheduled: u64,
    /// Workers started to replace one that exited (crash, time limit,
    /// task or memory limit, cancellation).
    pub worker_restarts: u64,
    /// Fork servers started to replace one that died (see `RELIABILITY.md`).
    pub fork_server_restarts: u64,
    /// Each named queue, in the order the pool was built with (the
    /// `"default"` queue first).
    pub queues: Vec<QueueStats>,
}

impl Stats {
    /// The queue called `name`.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let default = pool.stats().queue("default").cloned().unwrap();
    /// assert_eq!((default.min_workers, default.max_workers), (2, 2));
    /// # Ok(()) }
    /// ```
    pub fn queue(&self, name: &str) -> Option<&QueueStats> {
        self.queues.iter().find(|q| q.name == name)
    }
}

/// One queue's workers and load, in [`Stats::queues`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Workers alive now (not counting a standby).
    pub workers: u64,
    /// Of those, workers with a job.
    pub busy: u64,
    /// Jobs waiting for one of its workers (`map` items count one each).
    pub waiting: u64,
    /// Workers kept when idle.
    pub min_workers: u64,
    /// Most workers.
    pub max_workers: u64,
    /// Workers forked because jobs waited and every worker was busy.
    pub grown: u64,
    /// Idle workers that left after the keep-alive (or a resize).
    pub shrunk: u64,
}

/// The live counters of one queue.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub name: String,
    pub workers: AtomicU64,
    pub busy: AtomicU64,
    pub waiting: AtomicU64,
    pub min_workers: AtomicU64,
    pub max_workers: AtomicU64,
    pub grown: AtomicU64,
    pub shrunk: AtomicU64,
}

impl QueueCounters {
    /// The counters of a queue called `name` with `min..=max` workers.
    pub(crate) fn new(name: &str, min: usize, max: usize) -> QueueCounters {
        QueueCounters {
            name: name.to_string(),
            min_workers: AtomicU64::new(min as u64),
            max_workers: AtomicU64::new(max as u64),
            ..QueueCounters::default()
        }
    }

    fn snapshot(&self) -> QueueStats {
        QueueStats {
            name: self.name.clone(),
            workers: self.workers.load(Relaxed),
            busy: self.busy.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            min_workers: self.min_workers.load(Relaxed),
            max_workers: self.max_workers.load(Relaxed),
            grown: self.grown.load(Relaxed),
            shrunk: self.shrunk.load(Relaxed),
        }
    }
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub live_workers: AtomicU64,
    pub standby_workers: AtomicU64,
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub panicked: AtomicU64,
    pub crashed: AtomicU64,
    pub timed_out: AtomicU64,
    pub codec_errors: AtomicU64,
    pub errored: AtomicU64,
    pub expired: AtomicU64,
    pub cancelled: AtomicU64,
    pub retried: AtomicU64,
    pub scheduled: AtomicU64,
    pub worker_restarts: AtomicU64,
    pub fork_server_restarts: AtomicU64,
    /// Per queue, by index.
    pub queues: Vec<QueueCounters>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            live_workers: self.live_workers.load(Relaxed),
            standby_workers: self.standby_workers.load(Relaxed),
            submitted: self.submitted.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            crashed: self.crashed.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            codec_errors: self.codec_errors.load(Relaxed),
            errored: self.errored.load(Relaxed),
            expired: self.expired.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            retried: self.retried.load(Relaxed),
            scheduled: self.scheduled.load(Relaxed),
            worker_restarts: self.worker_restarts.load(Relaxed),
            fork_server_restarts: self.fork_server_restarts.load(Relaxed),
            queues: self.queues.iter().map(QueueCounters::snapshot).collect(),
        }
    }

    /// Counts `n` jobs that ended with `fate`.
    pub(crate) fn count(&self, fate: Fate, n: u64) {
        let kind = match fate {
            Fate::Completed => return add(&self.completed, n),
            Fate::Cancelled => return add(&self.cancelled, n),
            Fate::Panicked => Some(&self.panicked),
            Fate::Crashed => Some(&self.crashed),
            Fate::TimedOut => Some(&self.timed_out),
            Fate::Codec => Some(&self.codec_errors),
            Fate::Errored => Some(&self.errored),
            Fate::Expired => Some(&self.expired),
            Fate::Failed => None,
        };
        if let Some(c) = kind {
            add(c, n);
        }
        add(&self.failed, n);
    }

    /// Counts `n` jobs that resolved with `error`.
    pub(crate) fn count_error(&self, error: &JobError, n: u64) {
        self.count(Fate::of_error(error), n);
    }
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Relaxed);
    }
}
