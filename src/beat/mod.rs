//! Periodic jobs — what Celery calls beat: a producer that submits a
//! [`Job`], with every option it has, at each slot of a
//! [`Schedule`] (every interval, or on a cron expression in a time zone).
//!
//! What it promises:
//!
//! - **A slot fires once, and never early** — not on an early timer
//!   wake-up, not when the wall clock is set back (`timeline.rs`).
//! - **Policies are types, and every slot is counted**: [`Overlap`](crate::Overlap) says
//!   what a slot does while the previous run is unfinished, [`Missed`](crate::Missed)
//!   what slots missed in a stall are worth; each slot is a run, a skip,
//!   a miss or a refusal in [`ScheduleInfo`] (`policy.rs`).
//! - **Daylight saving time has a documented result** (`cron.rs`, on
//!   `Schedule::cron`); intervals are on the monotonic clock and no
//!   wall-clock change moves them.
//! - **A thread the pool owns**, `forkpool-beat`, started with the first
//!   schedule and joined when the pool is closed, joined, terminated or
//!   dropped: nothing outlives the pool. It sleeps on kernel timers until
//!   the next slot, never blocks dispatch, and holds no `Pool`
//!   (`runner.rs`).
//!
//! Files: `schedule.rs` (the public [`Schedule`], [`ScheduleError`],
//! interval or cron), `cron.rs` (expression + zone → next slot, feature
//! `cron`), `timeline.rs` (which slots are due: pure), `policy.rs`
//! (what [`Overlap`](crate::Overlap) and [`Missed`](crate::Missed)
//! decide: pure), `clock.rs` (the clock trait, the real clock on
//! timerfds, a fake one for tests), `runner.rs` (the thread and its book
//! of schedules). What a schedule shows of itself ([`ScheduleInfo`]) and
//! the policies' words live in `control/schedules.rs`, so that an
//! inspection can hold them.
//! This file: [`Beat`], the pool's handle on all of it.
//!
//! The pool calls in here from `pool/schedules.rs`; nothing below this
//! layer knows schedules exist.

pub(crate) mod clock;
#[cfg(feature = "cron")]
pub(crate) mod cron;
pub(crate) mod policy;
pub(crate) mod runner;
pub(crate) mod schedule;
pub(crate) mod timeline;

use crate::beat::clock::{Clock, RealClock};
use crate::beat::runner::{Bound, Core};
use crate::beat::schedule::{Schedule, ScheduleError};
use crate::client::shared::Shared;
use crate::control::schedules::{ScheduleId, ScheduleInfo};
use crate::options::signature::Job;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

/// Where the scheduler is in its life.
enum Life {
    /// No schedule yet: no thread, no descriptors.
    Idle,
    Running {
        core: Arc<Core>,
        thread: JoinHandle<()>,
    },
    /// The pool closed. The schedules stay visible (as stopped), nothing
    /// runs, and no schedule can be added.
    Stopped { core: Option<Arc<Core>> },
}

/// A pool's scheduler, held by every `Pool` handle (beside the core and
/// the options' state): the last handle to go stops it.
pub(crate) struct Beat {
    life: Mutex<Life>,
}

impl Default for Beat {
    fn default() -> Self {
        Beat {
            life: Mutex::new(Life::Idle),
        }
    }
}

impl Beat {
    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared state, once started.
    fn core(&self) -> Option<Arc<Core>> {
        match &*self.life() {
            Life::Idle => None,
            Life::Running { core, .. } => Some(core.clone()),
            Life::Stopped { core } => core.clone(),
        }
    }

    /// Runs `job` with `arg` at every slot of `schedule`, in the pool
    /// whose core is `shared`. Everything that could never work is
    /// refused here, not at the first slot.
    pub(crate) fn add<A, R, E>(
        &self,
        shared: &Arc<Shared>,
        schedule: Schedule,
        job: Job<A, R, E>,
        arg: A,
    ) -> Result<ScheduleId, ScheduleError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        E: Send + 'static,
    {
        schedule.validate(SystemTime::now())?;
        if !job.belongs_to(shared) {
            return Err(ScheduleError::OtherPool);
        }
        if shared.is_closed() {
            return Err(ScheduleError::PoolClosed);
        }
        job.check(&arg).map_err(ScheduleError::Job)?;
        let core = {
            let mut life = self.life();
            match &*life {
                Life::Running { core, .. } => core.clone(),
                Life::Stopped { .. } => return Err(ScheduleError::PoolClosed),
                Life::Idle => {
                    let clock =
                        RealClock::new().map_err(|e| ScheduleError::Start(e.to_string()))?;
                    let core = Arc::new(Core::new(clock));
                    let theirs = core.clone();
                    let thread = thread::Builder::new()
                        .name("forkpool-beat".into())
                        .spawn(move || runner::run(theirs))
                        .map_err(|e| ScheduleError::Start(e.to_string()))?;
                    *life = Life::Running {
                        core: core.clone(),
                        thread,
                    };
                    core
                }
            }
        };
        let now = core.clock.now();
        let function = job.function();
        let id = core
            .book()
            .add(schedule, Box::new(Bound { job, arg }), function, now);
        core.clock.bell().ring();
        Ok(id)
    }

    /// Every schedule, in id order.
    pub(crate) fn schedules(&self) -> Vec<ScheduleInfo> {
        match self.core() {
            Some(core) => {
                let now = core.clock.now();
                core.book().info(now)
            }
            None => Vec::new(),
        }
    }

    /// One schedule.
    pub(crate) fn info(&self, id: ScheduleId) -> Option<ScheduleInfo> {
        let core = self.core()?;
        let now = core.clock.now();
        core.book().info_of(id, now)
    }

    /// Pauses schedule `id`; false if it is not active.
    pub(crate) fn pause(&self, id: ScheduleId) -> bool {
        self.core().is_some_and(|core| {
            let paused = core.book().pause(id);
            core.clock.bell().ring();
            paused
        })
    }

    /// Resumes schedule `id`; false if it is not paused.
    pub(crate) fn resume(&self, id: ScheduleId) -> bool {
        self.core().is_some_and(|core| {
            let now = core.clock.now();
            let resumed = core.book().resume(id, now);
            core.clock.bell().ring();
            resumed
        })
    }

    /// Removes schedule `id`; false if there is none.
    pub(crate) fn cancel(&self, id: ScheduleId) -> bool {
        self.core().is_some_and(|core| {
            let job = core.book().cancel(id);
            core.clock.bell().ring();
            // Dropped here, outside the book's lock: it holds the pool's core.
            job.is_some()
        })
    }

    /// Stops every schedule and joins the thread (unless called on it).
    /// The schedules stay visible, as stopped. Idempotent.
    pub(crate) fn stop(&self) {
        let old = {
            let mut life = self.life();
            let core = match &*life {
                Life::Idle => None,
                Life::Running { core, .. } => Some(core.clone()),
                Life::Stopped { .. } => return,
            };
            std::mem::replace(&mut *life, Life::Stopped { core })
        };
        if let Life::Running { core, thread } = old {
            let jobs = core.book().stop();
            core.clock.bell().ring();
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
            // Dropped after the thread is gone, outside the book's lock.
            drop(jobs);
        }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.stop();
    }
}
