//! What a schedule shows of itself: [`ScheduleInfo`], a plain snapshot
//! (owned, `Clone`, no reference into the pool), with [`ScheduleId`],
//! [`ScheduleState`] and [`RunOutcome`], and the words of its policies
//! ([`Overlap`], [`Missed`]; what they decide is `beat/policy.rs`'s). They
//! live here, below the scheduler, so that [`Inspection`] can hold them.
//!
//! [`Inspection`]: crate::Inspection
//!
//! The counts add up: every slot that came due while the schedule was
//! active is one of `runs`, `skips`, `misses` or `refused` — `replaced`
//! and the outcomes count runs again, by what became of them.

use crate::batch::JobId;
use serde::Serialize;
use std::fmt;
use std::time::SystemTime;

/// What happens at a slot while the schedule's previous run has not
/// finished (it is still waiting, running, or retrying).
///
/// ```
/// use forkpool::{Overlap, Schedule};
/// use std::time::Duration;
/// let s = Schedule::every(Duration::from_secs(10)).overlap(Overlap::Replace);
/// # let _ = s;
/// assert_eq!(Overlap::default(), Overlap::Forbid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The slot is skipped (and counted in
    /// [`ScheduleInfo::skips`](crate::ScheduleInfo::skips)): one run at a
    /// time. The default.
    #[default]
    Forbid,
    /// Runs may overlap: every slot starts a run.
    Allow,
    /// The unfinished run is cancelled (its worker killed and replaced if
    /// it had started) and the new one starts.
    Replace,
}

/// What happens to slots missed while the process could not run them:
/// it was suspended, the machine slept, or the wall clock jumped
/// forward. A slot is missed when a later slot comes due before it ran,
/// or when it is seen more than the schedule's
/// [grace](crate::Schedule::grace) after its time.
///
/// ```
/// use forkpool::{Missed, Schedule};
/// use std::time::Duration;
/// let s = Schedule::every(Duration::from_secs(60)).missed(Missed::RunUpTo(3));
/// # let _ = s;
/// assert_eq!(Missed::default(), Missed::RunOnce);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// However many slots were missed, run once now. The default.
    #[default]
    RunOnce,
    /// Run nothing for missed slots: wait for the next slot. (A slot
    /// seen within its grace still runs.)
    Skip,
    /// Run once per missed slot, up to this many runs (at least 1). With
    /// [`Overlap::Forbid`] they run one after another.
    RunUpTo(u32),
}

/// Identifies one schedule within its pool.
///
/// ```
/// use forkpool::{Pool, Schedule};
/// use std::time::Duration;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn noop(_: ()) {}
/// let pool = Pool::new(1)?;
/// let id = pool.schedule(Schedule::every(Duration::from_secs(60)), pool.job(noop), ())?;
/// assert_eq!(id.to_string(), format!("schedule-{}", id.as_u64()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ScheduleId(pub(crate) u64);

impl ScheduleId {
    /// The id as a number (unique within the pool, increasing).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schedule-{}", self.0)
    }
}

/// Whether a schedule is running its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScheduleState {
    /// Its slots run.
    Active,
    /// Paused ([`Pool::pause_schedule`](crate::Pool::pause_schedule)):
    /// its slots pass without running, and are not counted.
    Paused,
    /// Its cron expression has no slot left (an expression with a year).
    Finished,
    /// The pool was closed, joined or terminated: nothing runs any more.
    Stopped,
}

/// How a schedule's last finished run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// It returned a value (after any retries).
    Succeeded,
    /// It failed (after any retries): why, as text — the
    /// [`JobError`](crate::JobError)'s message, or that a fallible job
    /// returned `Err`.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// A schedule as [`Pool::schedules`](crate::Pool::schedules) shows it.
///
/// Every slot that came due while the schedule was active is counted
/// once: it started a run (`runs`), was skipped because the previous run
/// was unfinished (`skips`, [`Overlap::Forbid`]), was missed and worth no
/// run (`misses`, see [`Missed`]), or was refused by a full bounded queue
/// (`refused`).
///
/// ```
/// use forkpool::{Pool, RunOutcome, Schedule, ScheduleState};
/// use std::time::Duration;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn flaky(n: u32) -> u32 { if n % 2 == 0 { n } else { panic!("odd") } }
/// let pool = Pool::new(1)?;
/// let id = pool.schedule(Schedule::every(Duration::from_millis(20)), pool.job(flaky), 3)?;
/// while pool.schedule_info(id).unwrap().failed < 2 {
///     std::thread::sleep(Duration::from_millis(10));
/// }
/// let info = pool.schedule_info(id).unwrap();
/// assert_eq!(info.state, ScheduleState::Active);
/// assert_eq!(info.succeeded, 0);
/// assert!(matches!(&info.last_outcome, Some(RunOutcome::Failed { error }) if error.contains("odd")));
/// assert!(info.runs >= info.failed);
/// assert!(info.last_run.is_some() && info.next_run.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// Its id.
    pub id: ScheduleId,
    /// Its name ([`Schedule::name`](crate::Schedule::name), or the job's
    /// function's name).
    pub name: String,
    /// When it runs, in words: `every 60s`, `cron "30 2 * * *" in
    /// Europe/Berlin`.
    pub timing: String,
    /// Its overlap policy.
    pub overlap: Overlap,
    /// Its missed-slot policy.
    pub missed: Missed,
    /// Active, paused, finished or stopped.
    pub state: ScheduleState,
    /// When its next slot is due (on the wall clock; for an interval, as
    /// the wall clock reads now); `None` unless active.
    #[serde(serialize_with = "crate::metrics::json::opt_epoch_secs")]
    pub next_run: Option<SystemTime>,
    /// When its last run was started (submitted to the pool).
    #[serde(serialize_with = "crate::metrics::json::opt_epoch_secs")]
    pub last_run: Option<SystemTime>,
    /// The job id of its last run.
    pub last_job: Option<JobId>,
    /// How its last finished run ended.
    pub last_outcome: Option<RunOutcome>,
    /// Its runs not finished yet (waiting, running or retrying).
    pub running: usize,
    /// Runs started.
    pub runs: u64,
    /// Runs that succeeded, after any retries.
    pub succeeded: u64,
    /// Runs that failed, after any retries (cancelled ones included).
    pub failed: u64,
    /// Slots skipped because the previous run was unfinished.
    pub skips: u64,
    /// Slots missed (the process was stalled, the machine slept, the
    /// clock jumped) and not run, as the missed-slot policy decided.
    pub misses: u64,
    /// Slots not run because the pool's bounded queue
    /// ([`PoolBuilder::queue_capacity`](crate::PoolBuilder::queue_capacity)) was full.
    pub refused: u64,
    /// Runs cancelled to start a new one ([`Overlap::Replace`]).
    pub replaced: u64,
}
