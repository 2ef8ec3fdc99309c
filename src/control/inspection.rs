//! What [`Pool::inspect`](crate::Pool::inspect) returns: one consistent
//! picture of a running pool, taken by the supervisor in one step.
//!
//! The supervisor owns the queues, the timers and every worker's books, so
//! it answers from its own state, between two steps: nothing moves while
//! it looks, and every job it has taken in is in exactly one place —
//! scheduled, waiting, reserved by a worker, running, or finished. That is
//! the promise of [`Totals`]: `submitted == scheduled + waiting +
//! reserved + running + finished`, at every snapshot. Commands are taken
//! in order, so every job a thread submitted before it asked is in the
//! picture.
//!
//! Jobs are counted per attempt, as in [`Stats`](crate::Stats): a retry
//! is submitted again. A `map` batch is one entry with its item count.
//!
//! Every type here is `Serialize` (for a web page or a log line): a
//! duration is a number of seconds, a time a number of seconds since the
//! Unix epoch (see `metrics/json.rs`), a job id its number, a worker's
//! state a lowercase word.

use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::control::schedules::ScheduleInfo;
use crate::metrics::tally::JobStats;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// A snapshot of a pool: its jobs, workers, queues and statistics.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(1)?;
/// assert_eq!(pool.apply(|x: u32| x + 1, 1), Ok(2));
/// let json = serde_json::to_value(pool.inspect()).unwrap();
/// assert_eq!(json["totals"]["finished"], 1);
/// assert_eq!(json["workers"][0]["state"], "idle");
/// assert_eq!(json["workers"][0]["jobs_done"], 1);
/// assert!(json["taken_at"].as_f64().unwrap() > 1.6e9); // seconds since 1970
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Inspection {
    /// When the supervisor took it.
    #[serde(serialize_with = "crate::metrics::json::opt_epoch_secs")]
    pub taken_at: Option<SystemTime>,
    /// Jobs by where they are, adding up.
    pub totals: Totals,
    /// Jobs a worker is running now, one per busy worker.
    pub active: Vec<ActiveJob>,
    /// Each queue: what waits in it, what is scheduled for it, its
    /// statistics. The `"default"` queue first.
    pub queues: Vec<QueueView>,
    /// Every worker process, by queue.
    pub workers: Vec<WorkerView>,
    /// Each function's statistics, in the order the pool first saw them.
    pub functions: Vec<FunctionStats>,
    /// Every periodic schedule: next and last run, counts of runs, skips
    /// and misses ([`Pool::schedule`](crate::Pool::schedule)).
    pub schedules: Vec<ScheduleInfo>,
}

impl Inspection {
    /// The queue called `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueView> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// The statistics of the function called `name` (its
    /// [`std::any::type_name`], or the name given on its jobs).
    pub fn function(&self, name: &str) -> Option<&JobStats> {
        self.functions
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.stats)
    }
}

/// Jobs (items: a `map` batch counts each item) by where they are. They
/// add up: `submitted == scheduled + waiting + reserved + running +
/// finished`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// Taken in by the supervisor since the pool started (a retry counts
    /// again).
    pub submitted: u64,
    /// Waiting for a start time: a countdown or ETA, a retry's backoff, a
    /// rate limit.
    pub scheduled: u64,
    /// Waiting in a queue for a worker.
    pub waiting: u64,
    /// Handed to a busy worker, to run after its current job (Celery's
    /// "reserved").
    pub reserved: u64,
    /// Being run by a worker.
    pub running: u64,
    /// Ended: completed, failed, cancelled, revoked or expired.
    pub finished: u64,
}

impl Totals {
    /// Whether the parts add up to `submitted` — always, in a snapshot.
    pub fn add_up(&self) -> bool {
        self.scheduled + self.waiting + self.reserved + self.running + self.finished
            == self.submitted
    }
}

/// A job a worker is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ActiveJob {
    /// The job's id; `None` for an item of a `map`.
    pub id: Option<JobId>,
    /// Its function's name.
    pub function: &'static str,
    /// Its queue.
    pub queue: String,
    /// The process running it.
    pub worker_pid: u32,
    /// How long it has run (from when its worker was free to start it).
    #[serde(serialize_with = "crate::metrics::json::secs")]
    pub running_for: Duration,
    /// When it started, on the wall clock.
    #[serde(serialize_with = "crate::metrics::json::epoch_secs")]
    pub started_at: SystemTime,
    /// The latest progress it reported.
    pub progress: Option<Progress>,
    /// 1 for a first attempt, plus one per retry.
    pub attempt: u32,
    /// Items of its batch still to run, this one included (1 for a
    /// single job).
    pub items_left: u32,
}

/// One queue, as inspection sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// Jobs waiting for one of its workers, in the order they will run
    /// (priority, then submission).
    pub waiting: Vec<WaitingJob>,
    /// Jobs handed to busy workers, to run after their current job.
    pub reserved: Vec<WaitingJob>,
    /// Jobs waiting for a start time, soonest first.
    pub scheduled: Vec<ScheduledJob>,
    /// Outcomes, waits and run times of its jobs so far.
    pub stats: JobStats,
}

/// A job that waits for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WaitingJob {
    /// The job's id; `None` for items of a `map`.
    pub id: Option<JobId>,
    /// Its function's name.
    pub function: &'static str,
    /// Its priority (higher runs first).
    pub priority: i32,
    /// Items (1 for a single job).
    pub items: u32,
    /// How long it has waited for a worker.
    #[serde(serialize_with = "crate::metrics::json::secs")]
    pub waited: Duration,
}

/// A job that waits for its start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduledJob {
    /// The job's id; `None` for items of a `map`.
    pub id: Option<JobId>,
    /// Its function's name.
    pub function: &'static str,
    /// Its priority.
    pub priority: i32,
    /// Items (1 for a single job).
    pub items: u32,
    /// How long until it may start (zero if due: it joins its queue on
    /// the supervisor's next step).
    #[serde(serialize_with = "crate::metrics::json::secs")]
    pub due_in: Duration,
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Forked, not yet ready for work.
    Starting,
    /// Ready, with nothing to do.
    Idle,
    /// Running a job.
    Busy,
    /// A forked spare, given work only when a worker is lost.
    Standby,
    /// Finishing what it holds, then leaving (a task limit, a resize, or
    /// the pool closing).
    Leaving,
    /// Dead; its exit is being accounted for.
    Exited,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerView {
    /// Its process id (0 until the fork server reports it).
    pub pid: u32,
    /// The queue whose jobs it runs.
    pub queue: String,
    /// What it is doing.
    pub state: WorkerState,
    /// Jobs (items) it has answered.
    pub jobs_done: u64,
    /// Its resident memory now, from `/proc` (`None` if it could not be
    /// read: the process just left).
    pub rss_bytes: Option<u64>,
    /// How long since it was forked.
    #[serde(serialize_with = "crate::metrics::json::secs")]
    pub uptime: Duration,
}

/// One function's statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FunctionStats {
    /// Its name: [`std::any::type_name`] of the function, or the name
    /// given on its jobs.
    pub name: &'static str,
    /// Outcomes, waits and run times of its jobs so far.
    pub stats: JobStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_only_when_they_do() {
        let mut t = Totals {
            submitted: 10,
            scheduled: 1,
            waiting: 2,
            reserved: 3,
            running: 1,
            finished: 3,
        };
        assert!(t.add_up());
        t.finished += 1;
        assert!(!t.add_up());
    }
}
