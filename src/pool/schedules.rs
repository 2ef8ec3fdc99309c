//! Periodic jobs on the pool: [`Pool::schedule`], and the calls that
//! show, pause, resume and cancel schedules. Thin: `beat/` does the work.

use crate::beat::schedule::{Schedule, ScheduleError};
use crate::control::schedules::{ScheduleId, ScheduleInfo};
use crate::options::signature::Job;
use crate::pool::Pool;
use serde::Serialize;
use serde::de::DeserializeOwned;

impl Pool {
    /// Runs `job` with `arg` at every slot of `schedule` — Celery's beat,
    /// inside the pool. Returns the schedule's id, for
    /// [`schedule_info`](Pool::schedule_info),
    /// [`pause_schedule`](Pool::pause_schedule),
    /// [`resume_schedule`](Pool::resume_schedule) and
    /// [`cancel_schedule`](Pool::cancel_schedule).
    ///
    /// Each run is the job submitted with all its options: its queue and
    /// priority, retries, time limits, expiry (a [`Duration`] counts from
    /// the run's slot: a run that cannot start in time expires), rate
    /// limit, countdown (a delay after each slot) and callbacks. Its value
    /// is dropped, as with [`Job::spawn`]: callbacks see it, and
    /// [`ScheduleInfo`] counts how runs ended.
    ///
    /// Refused at once, with a [`ScheduleError`], if it could never run:
    /// an interval of zero, a cron expression that never matches, a job
    /// of another pool, job options that do not go together, a queue the
    /// pool does not have, an argument that does not encode or is too
    /// large, a closed pool.
    ///
    /// The schedules run on a thread the pool starts with the first one
    /// (`forkpool-beat`); closing, joining, terminating or dropping the
    /// pool stops them (runs already started go on as any job). A job's
    /// callbacks should not hold a `Pool` handle: the schedule would keep
    /// the pool alive until it is cancelled or the pool is closed.
    ///
    /// ```
    /// use forkpool::{Pool, Schedule, ScheduleState};
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn ping(host: String) -> String { format!("{host} is up") }
    ///
    /// let pool = Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let job = pool
    ///     .job(ping)
    ///     .time_limit(Duration::from_secs(5))
    ///     .expires(Duration::from_secs(1))   // a run that cannot start within 1 s is dropped
    ///     .on_success(move |up: &String| { let _ = tx.send(up.clone()); });
    /// let every = Schedule::every(Duration::from_millis(50)).name("ping");
    /// let id = pool.schedule(every, job, "db1".to_string())?;
    ///
    /// for _ in 0..3 {
    ///     assert_eq!(rx.recv_timeout(Duration::from_secs(10))?, "db1 is up");
    /// }
    /// let info = pool.schedule_info(id).unwrap();
    /// assert_eq!((info.name.as_str(), info.state), ("ping", ScheduleState::Active));
    /// assert!(info.runs >= 3);
    /// assert!(pool.cancel_schedule(id));
    /// pool.join()?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`Duration`]: std::time::Duration
    pub fn schedule<A, R, E>(
        &self,
        schedule: Schedule,
        job: Job<A, R, E>,
        arg: A,
    ) -> Result<ScheduleId, ScheduleError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        E: Send + 'static,
    {
        self.beat.add(&self.shared, schedule, job, arg)
    }

    /// Every schedule of the pool, in the order they were made: name,
    /// timing, state, next and last run, counts of runs, skips, misses.
    /// Cancelled schedules are gone; after the pool is closed they show
    /// as [`Stopped`](crate::ScheduleState::Stopped).
    ///
    /// ```
    /// use forkpool::{Overlap, Pool, Schedule, ScheduleState};
    /// use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn report(day: u32) -> u32 { day }
    /// let pool = Pool::new(1)?;
    /// let hourly = Schedule::every(Duration::from_secs(3600)).overlap(Overlap::Allow);
    /// pool.schedule(hourly.name("report"), pool.job(report), 1)?;
    /// let all = pool.schedules();
    /// assert_eq!(all.len(), 1);
    /// assert_eq!(all[0].name, "report");
    /// assert_eq!(all[0].timing, "every 3600s");
    /// assert_eq!(all[0].state, ScheduleState::Active);
    /// assert!(all[0].next_run.is_some());
    /// assert_eq!(all[0].runs, 0);
    /// pool.close();
    /// assert_eq!(pool.schedules()[0].state, ScheduleState::Stopped);
    /// # Ok(()) }
    /// ```
    pub fn schedules(&self) -> Vec<ScheduleInfo> {
        self.beat.schedules()
    }

    /// Schedule `id` as [`schedules`](Pool::schedules) shows it; `None`
    /// if there is no such schedule (it was cancelled, or made by another
    /// pool). Example: [`ScheduleInfo`].
    pub fn schedule_info(&self, id: ScheduleId) -> Option<ScheduleInfo> {
        self.beat.info(id)
    }

    /// Pauses schedule `id`: its slots pass without running (and are not
    /// counted as misses); runs already started go on. False if it is not
    /// active.
    ///
    /// ```
    /// use forkpool::{Pool, Schedule, ScheduleState};
    /// use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn noop(_: ()) {}
    /// let pool = Pool::new(1)?;
    /// let id = pool.schedule(Schedule::every(Duration::from_secs(60)), pool.job(noop), ())?;
    /// assert!(pool.pause_schedule(id));
    /// assert!(!pool.pause_schedule(id)); // already paused
    /// assert_eq!(pool.schedule_info(id).unwrap().state, ScheduleState::Paused);
    /// assert!(pool.resume_schedule(id));
    /// assert_eq!(pool.schedule_info(id).unwrap().state, ScheduleState::Active);
    /// assert!(pool.cancel_schedule(id));
    /// assert!(!pool.cancel_schedule(id)); // gone
    /// assert!(pool.schedule_info(id).is_none());
    /// # Ok(()) }
    /// ```
    pub fn pause_schedule(&self, id: ScheduleId) -> bool {
        self.beat.pause(id)
    }

    /// Resumes paused schedule `id` at its first slot after now (an
    /// interval keeps its phase; the slots passed while paused do not
    /// run). False if it is not paused. Example:
    /// [`pause_schedule`](Pool::pause_schedule).
    pub fn resume_schedule(&self, id: ScheduleId) -> bool {
        self.beat.resume(id)
    }

    /// Cancels schedule `id`: no slot of it runs any more, and it leaves
    /// [`schedules`](Pool::schedules). Its runs already started go on to
    /// their end, bounded by their time limit and expiry
    /// ([`terminate`](Pool::terminate) cancels them). False if there is no
    /// such schedule. Example: [`pause_schedule`](Pool::pause_schedule).
    pub fn cancel_schedule(&self, id: ScheduleId) -> bool {
        self.beat.cancel(id)
    }
}
