//! [`Schedule`]: when a periodic job runs — every interval, or on a cron
//! expression in a time zone — and its policies; [`ScheduleError`], what
//! can be wrong with one.
//!
//! What it promises: a schedule that is accepted has a next slot. Interval
//! slots are instants of the monotonic clock, a whole number of intervals
//! after the schedule was made (counted by `timeline.rs`); cron slots are
//! wall-clock instants, each found strictly after the one before by
//! `cron.rs`.

use crate::control::schedules::{Missed, Overlap};
use crate::error::JobError;
use std::fmt;
use std::time::{Duration, SystemTime};

#[cfg(feature = "cron")]
use crate::beat::cron::CronTiming;

/// What can be wrong with a schedule; returned when it is made, never at
/// its first slot.
///
/// ```
/// use forkpool::{Pool, Schedule, ScheduleError};
/// use std::time::Duration;
/// # fn main() -> Result<(), forkpool::Error> {
/// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
/// let pool = Pool::new(1)?;
/// let every = Schedule::every(Duration::from_secs(60));
/// let wrong_queue = pool.job(nap).queue("reprots");
/// match pool.schedule(every, wrong_queue, 10) {
///     Err(ScheduleError::Job(e)) => assert!(e.to_string().contains("reprots")),
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse; `reason` says what is wrong,
    /// naming the field when one field is to blame.
    #[error("bad cron expression {expr:?}: {reason}")]
    BadCron {
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not an IANA name this build knows.
    #[error("unknown time zone {zone:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    UnknownZone {
        /// The name as given.
        zone: String,
    },
    /// The cron expression parses but matches no time from now on
    /// (February 30th, say).
    #[error("cron expression {expr:?} never fires")]
    NeverFires {
        /// The expression as given.
        expr: String,
    },
    /// An interval of zero.
    #[error("a schedule's interval must be above zero")]
    ZeroInterval,
    /// [`Missed::RunUpTo`] with zero runs (use [`Missed::Skip`]).
    #[error("Missed::RunUpTo(0) runs nothing: use Missed::Skip")]
    ZeroRuns,
    /// The job was made by another pool ([`Pool::job`](crate::Pool::job)
    /// of a different pool).
    #[error("the job belongs to another pool")]
    OtherPool,
    /// The job could never run as given: its options do not go together,
    /// it names a queue the pool does not have, or its argument does not
    /// encode or is too large.
    #[error("the job cannot run: {0}")]
    Job(JobError),
    /// The pool is closed (or joined, or terminated).
    #[error("the pool is closed")]
    PoolClosed,
    /// The scheduler's thread or its timers could not be started.
    #[error("the scheduler could not start: {0}")]
    Start(String),
}

/// How a schedule's slots are placed in time.
#[derive(Clone, Debug)]
pub(crate) enum Timing {
    /// Every interval, on the monotonic clock.
    Every(Duration),
    /// On a cron expression in a time zone, on the wall clock.
    #[cfg(feature = "cron")]
    Cron(Box<CronTiming>),
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timing::Every(d) => write!(f, "every {d:?}"),
            #[cfg(feature = "cron")]
            Timing::Cron(c) => c.fmt(f),
        }
    }
}

/// When a periodic job runs, and what happens when runs overlap or slots
/// are missed. Give it to [`Pool::schedule`](crate::Pool::schedule) with a
/// [`Job`](crate::Job) and its argument.
///
/// - [`Schedule::every`]: slots a whole number of intervals after the
///   schedule was made, on the monotonic clock (wall-clock jumps do not
///   move them; time the machine slept counts).
/// - `Schedule::cron` (feature `cron`, on by default): slots where a
///   cron expression matches in a time zone, on the wall clock.
///
/// Each slot fires at most once and never before its time. Defaults:
/// [`Overlap::Forbid`], [`Missed::RunOnce`], a one-second grace.
///
/// ```
/// use forkpool::{Missed, Overlap, Schedule};
/// use std::time::Duration;
///
/// let every_minute = Schedule::every(Duration::from_secs(60))
///     .overlap(Overlap::Allow)
///     .missed(Missed::Skip)
///     .name("heartbeat");
/// assert_eq!(every_minute.to_string(), "heartbeat: every 60s");
/// ```
#[derive(Clone, Debug)]
pub struct Schedule {
    pub(crate) timing: Timing,
    pub(crate) overlap: Overlap,
    pub(crate) missed: Missed,
    pub(crate) grace: Duration,
    pub(crate) name: Option<String>,
}

/// How late a slot may be seen and still count as on time, by default.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(1);

impl Schedule {
    fn new(timing: Timing) -> Schedule {
        Schedule {
            timing,
            overlap: Overlap::default(),
            missed: Missed::default(),
            grace: DEFAULT_GRACE,
            name: None,
        }
    }

    /// A slot every `interval`, the first one `interval` after the
    /// schedule is made. An interval of zero is refused by
    /// [`Pool::schedule`](crate::Pool::schedule) with
    /// [`ScheduleError::ZeroInterval`].
    ///
    /// ```
    /// use forkpool::Schedule;
    /// use std::time::Duration;
    /// assert_eq!(Schedule::every(Duration::from_millis(500)).to_string(), "every 500ms");
    /// ```
    pub fn every(interval: Duration) -> Schedule {
        Schedule::new(Timing::Every(interval))
    }

    /// A slot whenever the cron expression `expr` matches in time zone
    /// `zone` (an IANA name: `"Europe/Berlin"`, `"America/New_York"`,
    /// `"UTC"`).
    ///
    /// Five fields (minute, hour, day of month, month, day of week), or
    /// six with seconds first, or seven with a year last; names (`MON`,
    /// `JAN`), ranges, steps, lists, `L`, `W`, `#`, and the nicknames
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` (parsed by
    /// the `croner` crate). A bad expression or zone is an error that
    /// names what is wrong.
    ///
    /// **Daylight saving time** (the rules of Vixie cron and the Open
    /// Cron Pattern Specification):
    ///
    /// - *Spring forward* (a wall-clock hour that does not exist): a job
    ///   at a fixed time in the gap (`30 2 * * *` when 02:00 jumps to
    ///   03:00) runs once, at the first time after the gap (03:00); a job
    ///   with a wildcard or step in its second, minute or hour field
    ///   (`0 * * * *`) has no slot in the gap — an hourly job runs 23
    ///   times that day, still once an hour of real time.
    /// - *Fall back* (a wall-clock hour that happens twice): a fixed-time
    ///   job in the repeated hour runs once, at its first occurrence; a
    ///   wildcard or step job runs in both passes — an hourly job runs 25
    ///   times that day.
    ///
    /// Use `"UTC"` for a schedule that no time zone rule can move.
    ///
    /// ```
    /// use forkpool::{Schedule, ScheduleError};
    ///
    /// let nightly = Schedule::cron("30 2 * * *", "Europe/Berlin")?; // 02:30 Berlin time
    /// let every_5s = Schedule::cron("*/5 * * * * *", "UTC")?;       // with a seconds field
    ///
    /// let bad = Schedule::cron("0 25 * * *", "UTC").unwrap_err();
    /// assert!(bad.to_string().contains("hour field \"25\""), "{bad}");
    /// assert_eq!(
    ///     Schedule::cron("@daily", "Europe/Berln").unwrap_err(),
    ///     ScheduleError::UnknownZone { zone: "Europe/Berln".into() }
    /// );
    /// # Ok::<(), ScheduleError>(())
    /// ```
    #[cfg(feature = "cron")]
    pub fn cron(expr: &str, zone: &str) -> Result<Schedule, ScheduleError> {
        Ok(Schedule::new(Timing::Cron(Box::new(CronTiming::parse(
            expr, zone,
        )?))))
    }

    /// What happens at a slot while the schedule's previous run still
    /// runs. Default: [`Overlap::Forbid`].
    pub fn overlap(mut self, overlap: Overlap) -> Schedule {
        self.overlap = overlap;
        self
    }

    /// What happens to slots missed while the process could not run them
    /// (it was suspended, the machine slept, the wall clock jumped
    /// forward). Default: [`Missed::RunOnce`].
    pub fn missed(mut self, missed: Missed) -> Schedule {
        self.missed = missed;
        self
    }

    /// How late a slot may be seen and still be on time: with
    /// [`Missed::Skip`], a slot seen later than this is skipped. Default:
    /// one second.
    ///
    /// ```
    /// use forkpool::{Missed, Schedule};
    /// use std::time::Duration;
    /// // A market-data poll: a slot more than 5 s late is worthless.
    /// let poll = Schedule::every(Duration::from_secs(30))
    ///     .missed(Missed::Skip)
    ///     .grace(Duration::from_secs(5));
    /// # let _ = poll;
    /// ```
    pub fn grace(mut self, grace: Duration) -> Schedule {
        self.grace = grace;
        self
    }

    /// A name to show in [`ScheduleInfo`](crate::ScheduleInfo) (default:
    /// the name of the job's function, [`Job::function`](crate::Job::function)).
    pub fn name(mut self, name: impl Into<String>) -> Schedule {
        self.name = Some(name.into());
        self
    }

    /// Refuses what could never work; checked by `Pool::schedule`. `now`
    /// is where a cron expression's next match is looked for.
    #[cfg_attr(not(feature = "cron"), allow(unused_variables))]
    pub(crate) fn validate(&self, now: SystemTime) -> Result<(), ScheduleError> {
        if self.missed == Missed::RunUpTo(0) {
            return Err(ScheduleError::ZeroRuns);
        }
        match &self.timing {
            Timing::Every(d) if d.is_zero() => Err(ScheduleError::ZeroInterval),
            Timing::Every(_) => Ok(()),
            #[cfg(feature = "cron")]
            Timing::Cron(c) => match c.next_after(now) {
                Some(_) => Ok(()),
                None => Err(ScheduleError::NeverFires {
                    expr: c.expr().to_string(),
                }),
            },
        }
    }
}

impl fmt::Display for Schedule {
    /// `name: timing`, or the timing alone when unnamed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}: {}", self.timing),
            None => self.timing.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_intervals_and_zero_catch_up_runs_are_refused() {
        let now = SystemTime::now();
        assert_eq!(
            Schedule::every(Duration::ZERO).validate(now),
            Err(ScheduleError::ZeroInterval)
        );
        assert_eq!(
            Schedule::every(Duration::from_secs(1))
                .missed(Missed::RunUpTo(0))
                .validate(now),
            Err(ScheduleError::ZeroRuns)
        );
        assert_eq!(
            Schedule::every(Duration::from_secs(1)).validate(now),
            Ok(())
        );
    }

    #[cfg(feature = "cron")]
    #[test]
    fn a_cron_that_never_fires_is_refused() {
        let s = Schedule::cron("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(
            s.validate(SystemTime::now()),
            Err(ScheduleError::NeverFires {
                expr: "0 0 30 2 *".into()
            })
        );
    }
}
