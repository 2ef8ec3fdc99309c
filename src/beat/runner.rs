//! The scheduler's thread (`forkpool-beat`) and the book of schedules it
//! keeps: each wake, it reads the clocks, asks every active schedule's
//! timeline which slots came due and its policy what to do, submits the
//! runs, and sleeps until the earliest next slot.
//!
//! What it promises:
//!
//! - **It never blocks dispatch.** It is a thread of its own; it submits
//!   through the pool's command queue like any caller, and never waits
//!   for room in a bounded queue: a run the queue has no room for is
//!   counted as refused.
//! - **It sleeps until the next slot**, on kernel timers (`clock.rs`), or
//!   until a schedule is added, paused, resumed or cancelled, or one of
//!   its runs finishes (a bell) — never on a periodic tick.
//! - **It holds no `Pool`.** A schedule holds its `Job` (the pool's core
//!   and the options' state), as a retry holds the command sender; the
//!   book itself is held by the pool's handles (`mod.rs`), so the last
//!   `Pool` handle still ends the pool, and stops this thread first.
//! - **A run's end is noticed without holding it**: the job's finisher
//!   counts the outcome in the schedule's [`Outcomes`] (atomics and a
//!   short lock of its own, never the book's: it may run on the
//!   supervisor's thread, or on this one while the book is locked) and
//!   rings the bell.

use crate::batch::JobId;
use crate::batch::gate::Refused;
use crate::beat::clock::{Bell, Clock, Deadline, Now, RealClock};
use crate::beat::policy::Policy;
use crate::beat::schedule::Schedule;
use crate::beat::timeline::Timeline;
use crate::client::handle::JobHandle;
use crate::control::schedules::{RunOutcome, ScheduleId, ScheduleInfo, ScheduleState};
use crate::options::signature::{Done, Job};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// A job bound to its argument, as a schedule keeps it: its type erased.
pub(crate) trait Fire: Send {
    /// Submits one run, without blocking; `done` is told when it is over.
    fn fire(&self, done: Done) -> Result<JobHandle<()>, Refused>;
}

/// A [`Job`] with the argument every run gets.
pub(crate) struct Bound<A, R, E> {
    pub(crate) job: Job<A, R, E>,
    pub(crate) arg: A,
}

impl<A, R, E> Fire for Bound<A, R, E>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
    E: Send + 'static,
{
    fn fire(&self, done: Done) -> Result<JobHandle<()>, Refused> {
        self.job.try_spawn_watched(&self.arg, done)
    }
}

/// How a schedule's finished runs ended; written by the runs' finishers.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) last: Mutex<Option<RunOutcome>>,
}

impl Outcomes {
    pub(crate) fn record(&self, result: Result<(), String>) {
        let outcome = match result {
            Ok(()) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                RunOutcome::Succeeded
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                RunOutcome::Failed { error }
            }
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

/// What became of a schedule's slots.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) runs: u64,
    pub(crate) skips: u64,
    pub(crate) misses: u64,
    pub(crate) refused: u64,
    pub(crate) replaced: u64,
}

/// One schedule.
struct Entry {
    name: String,
    timing: String,
    policy: Policy,
    timeline: Timeline,
    state: ScheduleState,
    /// Catch-up runs owed (`Overlap::Forbid` with `Missed::RunUpTo`).
    owed: u32,
    /// The job; `None` once stopped (so the pool's core is let go).
    fire: Option<Box<dyn Fire>>,
    /// Runs not known to be finished.
    runs: Vec<JobHandle<()>>,
    tally: Tally,
    outcomes: Arc<Outcomes>,
    last_run: Option<SystemTime>,
    last_job: Option<JobId>,
}

impl Entry {
    /// Forgets the runs that have finished; how many are left.
    fn unfinished(&mut self) -> usize {
        self.runs.retain(|h| !h.is_ready());
        self.runs.len()
    }

    /// One look at this schedule at `now`: take the due slots, decide,
    /// act. Returns its next deadline, if it is active.
    fn step(&mut self, now: Now, bell: &Arc<Bell>) -> Option<Deadline> {
        if self.state != ScheduleState::Active {
            return None;
        }
        let taken = self.timeline.take_due(now);
        let running = self.unfinished();
        let d = self
            .policy
            .decide(taken.map(|t| t.due), running, &mut self.owed);
        self.tally.skips += d.skipped;
        self.tally.misses += d.missed;
        if d.cancel_running {
            for run in self.runs.drain(..) {
                // False: it finished meanwhile, nothing was replaced.
                if run.cancel() {
                    self.tally.replaced += 1;
                }
            }
        }
        for _ in 0..d.start {
            let Some(fire) = &self.fire else { break };
            let outcomes = self.outcomes.clone();
            let bell = Arc::downgrade(bell);
            let done: Done = Box::new(move |result| {
                outcomes.record(result);
                if let Some(bell) = bell.upgrade() {
                    bell.ring();
                }
            });
            match fire.fire(done) {
                Ok(run) => {
                    self.tally.runs += 1;
                    self.last_run = Some(now.wall);
                    self.last_job = Some(run.id());
                    self.runs.push(run);
                }
                Err(Refused::Full | Refused::Closed) => self.tally.refused += 1,
            }
        }
        match self.timeline.next() {
            Some(next) => Some(next.deadline()),
            None => {
                self.state = ScheduleState::Finished;
                None
            }
        }
    }

    fn info(&mut self, id: ScheduleId, now: Now) -> ScheduleInfo {
        let running = self.unfinished();
        let active = self.state == ScheduleState::Active;
        ScheduleInfo {
            id,
            name: self.name.clone(),
            timing: self.timing.clone(),
            overlap: self.policy.overlap,
            missed: self.policy.missed,
            state: self.state,
            next_run: active
                .then(|| self.timeline.next().map(|s| s.wall_estimate(now)))
                .flatten(),
            last_run: self.last_run,
            last_job: self.last_job,
            last_outcome: self
                .outcomes
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            running,
            runs: self.tally.runs,
            succeeded: self.outcomes.succeeded.load(Ordering::Relaxed),
            failed: self.outcomes.failed.load(Ordering::Relaxed),
            skips: self.tally.skips,
            misses: self.tally.misses,
            refused: self.tally.refused,
            replaced: self.tally.replaced,
        }
    }
}

/// Every schedule of one pool.
#[derive(Default)]
pub(crate) struct Book {
    entries: BTreeMap<ScheduleId, Entry>,
    next_id: u64,
    /// The pool closed: nothing runs any more, and the thread ends.
    stopped: bool,
}

impl Book {
    /// Adds a schedule whose first slot is the first after `now`; `function`
    /// names it if the schedule has no name.
    pub(crate) fn add(
        &mut self,
        schedule: Schedule,
        fire: Box<dyn Fire>,
        function: &str,
        now: Now,
    ) -> ScheduleId {
        self.next_id += 1;
        let id = ScheduleId(self.next_id);
        let entry = Entry {
            name: schedule.name.unwrap_or_else(|| function.to_string()),
            timing: schedule.timing.to_string(),
            policy: Policy {
                overlap: schedule.overlap,
                missed: schedule.missed,
                grace: schedule.grace,
            },
            timeline: Timeline::new(schedule.timing, now),
            state: ScheduleState::Active,
            owed: 0,
            fire: Some(fire),
            runs: Vec::new(),
            tally: Tally::default(),
            outcomes: Arc::default(),
            last_run: None,
            last_job: None,
        };
        self.entries.insert(id, entry);
        id
    }

    /// Pauses an active schedule: its slots pass without running, and its
    /// owed catch-up runs become misses. False if there is no such
    /// active schedule.
    pub(crate) fn pause(&mut self, id: ScheduleId) -> bool {
        match self.entries.get_mut(&id) {
            Some(e) if e.state == ScheduleState::Active => {
                e.state = ScheduleState::Paused;
                e.tally.misses += u64::from(std::mem::take(&mut e.owed));
                true
            }
            _ => false,
        }
    }

    /// Resumes a paused schedule at its first slot after `now`. False if
    /// there is no such paused schedule.
    pub(crate) fn resume(&mut self, id: ScheduleId, now: Now) -> bool {
        match self.entries.get_mut(&id) {
            Some(e) if e.state == ScheduleState::Paused => {
                e.timeline.skip_to(now);
                e.state = ScheduleState::Active;
                true
            }
            _ => false,
        }
    }

    /// Removes a schedule (its runs not finished go on); its job, to be
    /// dropped outside the book's lock. `None` if there is no such
    /// schedule.
    pub(crate) fn cancel(&mut self, id: ScheduleId) -> Option<Option<Box<dyn Fire>>> {
        self.entries.remove(&id).map(|e| e.fire)
    }

    /// What every schedule shows, in id order.
    pub(crate) fn info(&mut self, now: Now) -> Vec<ScheduleInfo> {
        self.entries
            .iter_mut()
            .map(|(&id, e)| e.info(id, now))
            .collect()
    }

    /// What one schedule shows.
    pub(crate) fn info_of(&mut self, id: ScheduleId, now: Now) -> Option<ScheduleInfo> {
        self.entries.get_mut(&id).map(|e| e.info(id, now))
    }

    /// One look at every schedule; the deadline to sleep until.
    fn step(&mut self, now: Now, bell: &Arc<Bell>) -> Deadline {
        self.entries
            .values_mut()
            .filter_map(|e| e.step(now, bell))
            .fold(Deadline::default(), Deadline::earliest)
    }

    /// Stops every schedule for good; their jobs, to be dropped outside
    /// the book's lock (they hold the pool's core).
    pub(crate) fn stop(&mut self) -> Vec<Box<dyn Fire>> {
        self.stopped = true;
        let mut jobs = Vec::new();
        for e in self.entries.values_mut() {
            e.state = ScheduleState::Stopped;
            e.tally.misses += u64::from(std::mem::take(&mut e.owed));
            jobs.extend(e.fire.take());
        }
        jobs
    }
}

/// What the scheduler's thread and the pool's handles share.
pub(crate) struct Core {
    book: Mutex<Book>,
    pub(crate) clock: RealClock,
}

impl Core {
    pub(crate) fn new(clock: RealClock) -> Core {
        Core {
            book: Mutex::new(Book::default()),
            clock,
        }
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The thread's loop: look, act, sleep — until the book is stopped
/// (`mod.rs` stops it, rings the bell and joins the thread). A panic in a
/// look (a user's `Serialize` that panics, say) is reported and the loop
/// goes on, so one bad run cannot stop every schedule.
pub(crate) fn run(core: Arc<Core>) {
    loop {
        let looked = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut book = core.book();
            if book.stopped {
                return None;
            }
            let now = core.clock.now();
            Some(book.step(now, core.clock.bell()))
        }));
        let deadline = match looked {
            Ok(Some(deadline)) => deadline,
            Ok(None) => return,
            Err(payload) => {
                let msg = crate::worker::panic::payload_text(payload.as_ref());
                log::error!("the scheduler caught a panic and goes on: {msg}");
                Deadline {
                    wall: None,
                    mono: Some(core.clock.now_monotonic() + Duration::from_millis(100)),
                }
            }
        };
        core.clock.sleep_until(deadline);
    }
}
