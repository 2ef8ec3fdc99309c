//! Periodic jobs across hosts: [`Client::schedule`] runs a registered job
//! at every slot of a [`Schedule`], and any number of clients — in any
//! number of processes, on any hosts — may run the same schedule: each
//! slot fires **once** among them, and its run goes through the broker
//! like any job (whichever host takes it runs it).
//!
//! What it promises, and how:
//!
//! - **Slots every process agrees on.** A slot is a wall-clock instant,
//!   counted in milliseconds since the Unix epoch: a cron slot as the
//!   local scheduler finds it (`beat/cron.rs`), and an interval slot a
//!   whole number of intervals after the epoch (every 60 s fires at each
//!   full minute, UTC) — not after the schedule was made, as in a local
//!   pool, or two processes started apart would have different slots.
//!   Its id is the schedule's name and that number.
//! - **Once per slot.** A schedule's state is one hash in Redis,
//!   `beat:<name>`: `last`, the newest slot claimed, and `job`, the id of
//!   the newest run. A process that sees a slot come due reads it
//!   (`PEEK`), decides with the local scheduler's policies
//!   (`beat/policy.rs`) and then claims the slot *and queues its runs in
//!   the same script* (`FIRE`), only if `last` is still what it read — a
//!   compare-and-set. So two processes cannot both claim a slot, a slot is
//!   claimed exactly when its runs are queued (no process can die between
//!   the two), and a process whose clock is behind finds the slot claimed
//!   and does nothing. Slots only move forward: a claim older than `last`
//!   is refused.
//! - **The catch-up policy across downtime, not a replay storm.** Slots
//!   between `last` and the slot being claimed were missed by everyone
//!   (every process was down or stalled): the claimer counts them and
//!   [`Missed`](crate::Missed) decides what they are worth — one run
//!   (`RunOnce`, the default), none (`Skip`), or up to *n* (`RunUpTo`).
//!   The slots are counted once, by the one process that claims them.
//! - **Overlap across hosts.** A run's result key (`res:<id>`) holds `P`
//!   from the moment `FIRE` queues it until a host settles it (or
//!   dead-letters it); with [`Overlap::Forbid`](crate::Overlap::Forbid) a
//!   slot whose schedule's newest run — fired by any process — is still
//!   `P` is skipped. So every run keeps its outcome by id for the broker's
//!   `result_expires`, also with `ignore_result`. [`Overlap::Replace`]
//!   would cancel runs on other hosts, which a broker cannot: refused.
//!
//! What each process keeps for itself: pause, resume and cancel apply to
//! this client's firing only (other processes running the same schedule
//! go on firing it), and [`ScheduleInfo`] counts the slots this process
//! claimed — its `runs`, `skips`, `misses`; `refused` counts slots this
//! process could not claim because Redis was unreachable. A slot another
//! process claimed is counted there, not here.
//!
//! The thread (`forkpool-beat`) is the client's, started with its first
//! schedule and joined when the client is dropped; it holds the client
//! weakly, so the last `Client` clone still ends it, and sleeps on the
//! local scheduler's kernel timers (`beat/clock.rs`) until the next slot.

//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | [`Client::schedule`] and the calls that steer schedules; the client's `Beat`, its book and its thread |
//! | `slots.rs` | a schedule's slots as every process sees them: next, newest, how many between two |
//! | `claim.rs` | the Lua scripts `PEEK` and `FIRE`: reading a schedule's state, claiming a slot with its runs |
//! | `entry.rs` | one schedule in one process: what a look at it does (claim, decide, fire, catch up) |

mod claim;
mod entry;
mod slots;

use self::entry::{Arg, Ctx, Entry, Kept};
use self::slots::{Slots, ms_of};
use super::client::{Client, Inner};
use super::conn::Conn;
use super::job::{RemoteJob, Target};
use crate::beat::clock::{Bell, Clock, Deadline, RealClock};
use crate::beat::policy::Policy;
use crate::beat::runner::Tally;
use crate::beat::schedule::{Schedule, ScheduleError, Timing};
use crate::control::schedules::{Overlap, ScheduleId, ScheduleInfo, ScheduleState};
use crate::error::JobError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every schedule of one client.
#[derive(Default)]
struct Book {
    entries: BTreeMap<ScheduleId, Entry>,
    next_id: u64,
    /// The client is going: nothing fires any more, and the thread ends.
    stopped: bool,
}

impl Book {
    /// One look at every schedule; when to look again.
    fn step(&mut self, inner: &Inner, conn: &mut Conn, bell: &Arc<Bell>) -> Deadline {
        let mut wake: Option<SystemTime> = None;
        for e in self.entries.values_mut() {
            let mut cx = Ctx {
                inner,
                conn,
                bell,
                now: ms_of(SystemTime::now()),
            };
            if let Some(t) = e.step(&mut cx) {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        Deadline {
            wall: wake,
            mono: None,
        }
    }
}

/// What the thread and the client share.
struct Core {
    book: Mutex<Book>,
    clock: RealClock,
}

impl Core {
    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }
}

/// A client's schedules, held in its shared state: started with the
/// first schedule, stopped (and its thread joined) when the client is
/// dropped.
#[derive(Default)]
pub(super) struct Beat {
    life: Mutex<Option<Started>>,
}

/// The core, and the thread until it is joined.
type Started = (Arc<Core>, Option<JoinHandle<()>>);

impl Beat {
    fn core(&self) -> Option<Arc<Core>> {
        lock(&self.life).as_ref().map(|(core, _)| core.clone())
    }

    /// The running core, started now if need be.
    fn start(&self, inner: &Arc<Inner>) -> Result<Arc<Core>, ScheduleError> {
        let mut life = lock(&self.life);
        if let Some((core, _)) = &*life {
            if core.book().stopped {
                return Err(ScheduleError::PoolClosed);
            }
            return Ok(core.clone());
        }
        let clock = RealClock::new().map_err(|e| ScheduleError::Start(e.to_string()))?;
        let core = Arc::new(Core {
            book: Mutex::default(),
            clock,
        });
        let theirs = core.clone();
        let client = Arc::downgrade(inner);
        let thread = thread::Builder::new()
            .name("forkpool-beat".into())
            .spawn(move || run(theirs, client))
            .map_err(|e| ScheduleError::Start(e.to_string()))?;
        *life = Some((core.clone(), Some(thread)));
        Ok(core)
    }

    /// Stops every schedule and joins the thread (unless called on it).
    /// Idempotent.
    pub(super) fn stop(&self) {
        let (core, thread) = {
            let mut life = lock(&self.life);
            match &mut *life {
                Some((core, thread)) => (core.clone(), thread.take()),
                None => return,
            }
        };
        let jobs: Vec<Kept> = {
            let mut book = core.book();
            book.stopped = true;
            book.entries
                .values_mut()
                .filter_map(|e| {
                    e.state = ScheduleState::Stopped;
                    e.job.take()
                })
                .collect()
        };
        drop(jobs);
        core.clock.bell().ring();
        if let Some(t) = thread
            && t.thread().id() != thread::current().id()
        {
            let _ = t.join();
        }
    }
}

/// The thread's loop: look, fire, sleep — until the book is stopped or
/// the client is gone. A panic in a look (a user's `Serialize`, or the
/// function that makes a run's argument) is reported and the loop goes
/// on.
fn run(core: Arc<Core>, client: Weak<Inner>) {
    let mut conn: Option<Conn> = None;
    loop {
        let looked = panic::catch_unwind(AssertUnwindSafe(|| {
            // Declared before the book, so dropped after it: dropping the
            // last client here stops the book, which takes its lock.
            let inner = client.upgrade()?;
            let conn = conn.get_or_insert_with(|| {
                Conn::new(
                    inner.broker.client.clone(),
                    inner.broker.timeout,
                    "client (schedules)",
                )
            });
            let mut book = core.book();
            if book.stopped {
                return None;
            }
            Some(book.step(&inner, conn, core.clock.bell()))
        }));
        let deadline = match looked {
            Ok(Some(deadline)) => deadline,
            Ok(None) => return,
            Err(payload) => {
                let msg = crate::worker::panic::payload_text(payload.as_ref());
                log::error!("the broker's scheduler caught a panic and goes on: {msg}");
                Deadline {
                    wall: Some(SystemTime::now() + Duration::from_millis(100)),
                    mono: None,
                }
            }
        };
        core.clock.sleep_until(deadline);
    }
}

/// A schedule name: what the `beat:<name>` key may hold.
fn check_name(name: &str) -> Result<(), ScheduleError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ScheduleError::Broker(format!(
            "schedule name {name:?}: 1 to 200 characters, no spaces or control characters"
        )))
    }
}

impl Client {
    /// Runs `job` with `arg` at every slot of `schedule`, through the
    /// broker — Celery's beat for several hosts. Any number of clients,
    /// in any processes, may run the same schedule (the same
    /// [name](Schedule::name)): each slot fires **once** among them,
    /// claimed in Redis, and its run is a job like any other, taken by
    /// whichever host is free.
    ///
    /// - **Slots:** cron slots as on a local pool; interval slots are
    ///   whole multiples of the interval since the Unix epoch (every 60 s
    ///   fires at each full minute), so that every process has the same
    ///   ones. Intervals are counted in whole milliseconds.
    /// - **Name:** the schedule's name, or else the job's registered name;
    ///   it is the schedule's identity across processes (`beat:<name>` in
    ///   Redis holds the newest slot claimed). One client may not run two
    ///   schedules of one name.
    /// - **Policies:** [`Missed`](crate::Missed) applies to slots every
    ///   process missed — after all of them were down for an hour, the
    ///   first to come back runs the hour's slots once (`RunOnce`), not
    ///   once per slot. [`Overlap::Forbid`] (the default) skips a slot
    ///   while the schedule's newest run, fired by any process, has not
    ///   been settled by a host; [`Overlap::Allow`] does not look.
    ///   [`Overlap::Replace`] is refused ([`ScheduleError::Broker`]): it
    ///   would cancel runs on other hosts.
    /// - **Every option of the job applies to each run** (queue,
    ///   priority, retries, time limits, rate limit, a countdown after the
    ///   slot, an expiry counted from the run's slot). Each run's outcome
    ///   is stored by id for the broker's `result_expires`
    ///   ([`ScheduleInfo::last_job`]), also for an
    ///   [`ignore_result`](RemoteJob::ignore_result) job: that is how every
    ///   process knows whether the last run is over.
    ///
    /// Refused at once if it could never run: an unregistered function,
    /// job options that do not go together, a bad or taken name, an
    /// interval below a millisecond or a cron expression that never
    /// matches, an argument that does not encode or is too large.
    ///
    /// ```no_run
    /// use forkpool::Schedule;
    /// use std::time::Duration;
    /// fn cleanup(days: u32) -> usize { let _ = days; 0 }
    /// forkpool::register!(cleanup);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// // Started in every web frontend: one run per slot among all of them.
    /// let nightly = Schedule::cron("0 3 * * *", "Europe/Berlin")?.name("cleanup.nightly");
    /// let id = client.schedule(nightly, client.job(cleanup).time_limit(Duration::from_secs(600)), 30)?;
    /// println!("{:?}", client.schedule_info(id));
    /// # Ok(()) }
    /// ```
    pub fn schedule<A, R>(
        &self,
        schedule: Schedule,
        job: RemoteJob<A, R>,
        arg: A,
    ) -> Result<ScheduleId, ScheduleError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let codec = self.inner.broker.codec;
        let mut bytes = Vec::new();
        codec
            .encode_into(&mut bytes, &arg)
            .map_err(|e| ScheduleError::Job(JobError::Codec(format!("argument: {e}"))))?;
        self.add_schedule(schedule, &job, Arg::Fixed(bytes))
    }

    /// [`schedule`](Client::schedule) with an argument made for each run
    /// from the time of the slot it stands for — a report for the hour
    /// that just ended, say. `make` runs on the client's scheduler thread
    /// (keep it quick); a run whose argument does not encode fails alone,
    /// counted in [`ScheduleInfo::failed`].
    ///
    /// ```no_run
    /// use forkpool::Schedule;
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// fn hourly_report(hour_end: u64) -> String { format!("report up to {hour_end}") }
    /// forkpool::register!(hourly_report);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let every_hour = Schedule::every(Duration::from_secs(3600)).name("reports.hourly");
    /// client.schedule_with(every_hour, client.job(hourly_report), |slot: SystemTime| {
    ///     slot.duration_since(UNIX_EPOCH).unwrap().as_secs()
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn schedule_with<A, R, M>(
        &self,
        schedule: Schedule,
        job: RemoteJob<A, R>,
        make: M,
    ) -> Result<ScheduleId, ScheduleError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        M: Fn(SystemTime) -> A + Send + 'static,
    {
        let codec = self.inner.broker.codec;
        let make = move |slot: SystemTime| {
            let mut bytes = Vec::new();
            codec
                .encode_into(&mut bytes, &make(slot))
                .map(|()| bytes)
                .map_err(|e| format!("argument: {e}"))
        };
        self.add_schedule(schedule, &job, Arg::PerSlot(Box::new(make)))
    }

    fn add_schedule<A, R>(
        &self,
        schedule: Schedule,
        job: &RemoteJob<A, R>,
        arg: Arg,
    ) -> Result<ScheduleId, ScheduleError>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let now = SystemTime::now();
        schedule.validate(now)?;
        if schedule.overlap == Overlap::Replace {
            return Err(ScheduleError::Broker(
                "Overlap::Replace cancels the running run, which a broker cannot do on \
                 another host: use Overlap::Forbid or Overlap::Allow"
                    .into(),
            ));
        }
        if let Timing::Every(d) = &schedule.timing
            && d.as_millis() == 0
        {
            return Err(ScheduleError::Broker(
                "an interval across hosts is counted in whole milliseconds: at least 1 ms".into(),
            ));
        }
        let (name, fingerprint, expiry) = job.parts();
        let function = name.map_err(ScheduleError::Broker)?;
        let (mut opts, start) = job.opts(Target::Handle).map_err(ScheduleError::Job)?;
        // Every run keeps its outcome: the `P` mark of an unfinished run
        // must be replaced when it is settled (see the module doc).
        opts.ignore_result = false;
        let name = schedule.name.clone().unwrap_or_else(|| function.clone());
        check_name(&name)?;
        let kept = Kept {
            name: function,
            fingerprint,
            codec: self.inner.broker.codec,
            opts,
            start,
            expiry,
            arg,
        };
        if let Arg::Fixed(_) = &kept.arg {
            let size: u64 = kept
                .envelope(u64::MAX, 0)
                .map_err(ScheduleError::Job)?
                .fields()
                .iter()
                .map(|f| f.len() as u64 + 5)
                .sum();
            let limit = self.inner.broker.max_message_size;
            if size > limit {
                return Err(ScheduleError::Job(JobError::TooLarge { size, limit }));
            }
        }
        let core = self.inner.beat.start(&self.inner)?;
        let slots = Slots {
            timing: schedule.timing.clone(),
        };
        let id = {
            let mut book = core.book();
            if book.stopped {
                return Err(ScheduleError::PoolClosed);
            }
            if book.entries.values().any(|e| e.name == name) {
                return Err(ScheduleError::Broker(format!(
                    "this client already runs a schedule named {name:?}"
                )));
            }
            book.next_id += 1;
            let id = ScheduleId(book.next_id);
            let entry = Entry {
                key: format!("{}beat:{name}", self.inner.keys.base()),
                name,
                timing: schedule.timing.to_string(),
                next: slots.next_after(ms_of(now)),
                slots,
                policy: Policy {
                    overlap: schedule.overlap,
                    missed: schedule.missed,
                    grace: schedule.grace,
                },
                state: ScheduleState::Active,
                claimed: None,
                owed: VecDeque::new(),
                recheck: None,
                job: Some(kept),
                runs: Vec::new(),
                tally: Tally::default(),
                outcomes: Arc::default(),
                last_run: None,
                last_job: None,
            };
            book.entries.insert(id, entry);
            id
        };
        core.clock.bell().ring();
        Ok(id)
    }

    /// This client's schedules, in the order they were made, with what
    /// this process counted of them (slots it claimed: its runs, skips,
    /// misses; `refused`: slots it could not claim because Redis was
    /// unreachable). Slots other processes claimed are counted there.
    /// After the client is dropped nothing is left to ask.
    pub fn schedules(&self) -> Vec<ScheduleInfo> {
        match self.inner.beat.core() {
            Some(core) => core
                .book()
                .entries
                .iter_mut()
                .map(|(&id, e)| e.info(id))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Schedule `id` as [`schedules`](Client::schedules) shows it; `None`
    /// if this client has no such schedule.
    pub fn schedule_info(&self, id: ScheduleId) -> Option<ScheduleInfo> {
        let core = self.inner.beat.core()?;
        let mut book = core.book();
        book.entries.get_mut(&id).map(|e| e.info(id))
    }

    /// Pauses schedule `id` in this client: it claims no slot until
    /// resumed (other processes running the same schedule go on, and
    /// claim them). Its owed catch-up runs count as misses. False if it
    /// is not active.
    ///
    /// ```no_run
    /// use forkpool::{Schedule, ScheduleState};
    /// use std::time::Duration;
    /// fn ping(_: ()) {}
    /// forkpool::register!(ping);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let id = client.schedule(Schedule::every(Duration::from_secs(10)), client.job(ping), ())?;
    /// assert!(client.pause_schedule(id));
    /// assert_eq!(client.schedule_info(id).unwrap().state, ScheduleState::Paused);
    /// assert!(client.resume_schedule(id));
    /// assert!(client.cancel_schedule(id));
    /// assert!(client.schedules().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn pause_schedule(&self, id: ScheduleId) -> bool {
        self.with_entry(id, |e| {
            if e.state != ScheduleState::Active {
                return false;
            }
            e.state = ScheduleState::Paused;
            e.tally.misses += e.owed.len() as u64;
            e.owed.clear();
            true
        })
    }

    /// Resumes paused schedule `id` at its first slot after now. False if
    /// it is not paused.
    pub fn resume_schedule(&self, id: ScheduleId) -> bool {
        self.with_entry(id, |e| {
            if e.state != ScheduleState::Paused {
                return false;
            }
            e.state = ScheduleState::Active;
            e.next = e.slots.next_after(ms_of(SystemTime::now()));
            true
        })
    }

    /// Removes schedule `id` from this client (its runs already queued go
    /// on). False if there is none.
    pub fn cancel_schedule(&self, id: ScheduleId) -> bool {
        let Some(core) = self.inner.beat.core() else {
            return false;
        };
        let gone = core.book().entries.remove(&id);
        core.clock.bell().ring();
        gone.is_some()
    }

    fn with_entry(&self, id: ScheduleId, f: impl FnOnce(&mut Entry) -> bool) -> bool {
        let Some(core) = self.inner.beat.core() else {
            return false;
        };
        let done = core.book().entries.get_mut(&id).is_some_and(f);
        core.clock.bell().ring();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_names_are_checked() {
        assert!(check_name("reports.hourly").is_ok());
        for bad in ["", "a b", "tab\t", &"n".repeat(201)] {
            assert!(
                matches!(check_name(bad), Err(ScheduleError::Broker(_))),
                "{bad:?}"
            );
        }
    }
}
