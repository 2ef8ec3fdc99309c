//! One schedule in one process ([`Entry`]): what a look at it does —
//! takes the slots that came due here, reads the schedule's state in
//! Redis, lets the local scheduler's policies decide (`beat/policy.rs`),
//! claims the slot with its runs (`claim.rs`), fires owed catch-up runs
//! one at a time, and follows the runs it fired through their results.

use super::claim::{Claim, Run, fire, peek};
use super::slots::{Slots, ms_of, time_of};
use crate::batch::JobId;
use crate::batch::slot::Slot;
use crate::beat::clock::Bell;
use crate::beat::policy::{Due, Policy};
use crate::beat::runner::{Outcomes, Tally};
use crate::broker::client::Inner;
use crate::broker::conn::Conn;
use crate::broker::message::{Envelope, Opts};
use crate::broker::writer::Start;
use crate::control::schedules::{Missed, Overlap, ScheduleId, ScheduleInfo, ScheduleState};
use crate::error::JobError;
use crate::options::signature::Expiry;
use crate::transport::codec::Codec;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How often a process that owes catch-up runs looks again whether the
/// schedule's newest run (fired elsewhere) has finished.
const OWED_RECHECK: Duration = Duration::from_secs(1);

/// How many times a slot's claim is tried when another process moved
/// `last` between the read and the claim (to an older slot than this one).
const CLAIM_TRIES: u32 = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a scheduled job's argument is made: encoded once, or per slot
/// from the slot's time.
pub(super) enum Arg {
    Fixed(Vec<u8>),
    PerSlot(Box<dyn Fn(SystemTime) -> Result<Vec<u8>, String> + Send>),
}

/// What a schedule keeps of its job: everything but the client (holding
/// it would keep the client alive).
pub(super) struct Kept {
    pub(super) name: String,
    pub(super) fingerprint: u64,
    pub(super) codec: Codec,
    pub(super) opts: Opts,
    pub(super) start: Start,
    pub(super) expiry: Option<Expiry>,
    pub(super) arg: Arg,
}

impl Kept {
    /// The entry of one run, for slot `slot`.
    pub(super) fn envelope(&self, id: u64, slot: u64) -> Result<Envelope, JobError> {
        let arg = match &self.arg {
            Arg::Fixed(bytes) => bytes.clone(),
            Arg::PerSlot(make) => make(time_of(slot)).map_err(JobError::Codec)?,
        };
        let mut opts = self.opts.clone();
        if let Some(Expiry::After(d)) = self.expiry {
            opts.expires_at_ms =
                Some(crate::broker::unix_ms().saturating_add(d.as_millis() as u64));
        }
        Ok(Envelope {
            id,
            job: self.name.clone(),
            codec: self.codec,
            fingerprint: self.fingerprint,
            attempt: 1,
            opts,
            arg,
        })
    }
}

/// One schedule of this client.
pub(super) struct Entry {
    pub(super) name: String,
    /// `{prefix}:beat:<name>`.
    pub(super) key: String,
    pub(super) timing: String,
    pub(super) slots: Slots,
    pub(super) policy: Policy,
    pub(super) state: ScheduleState,
    /// The next slot this process has not looked at.
    pub(super) next: Option<u64>,
    /// The newest slot this process claimed.
    pub(super) claimed: Option<u64>,
    /// Catch-up runs owed (`Overlap::Forbid` with `Missed::RunUpTo`),
    /// by the slot each stands for, oldest first.
    pub(super) owed: VecDeque<u64>,
    /// Look again at this time for owed runs.
    pub(super) recheck: Option<SystemTime>,
    pub(super) job: Option<Kept>,
    /// Runs this process fired whose result has not come back.
    pub(super) runs: Vec<Arc<Slot>>,
    pub(super) tally: Tally,
    pub(super) outcomes: Arc<Outcomes>,
    pub(super) last_run: Option<SystemTime>,
    pub(super) last_job: Option<JobId>,
}

/// What one look needs besides the entry.
pub(super) struct Ctx<'a> {
    pub(super) inner: &'a Inner,
    pub(super) conn: &'a mut Conn,
    pub(super) bell: &'a Arc<Bell>,
    pub(super) now: u64,
}

impl Entry {
    pub(super) fn unfinished(&mut self) -> usize {
        self.runs.retain(|s| !s.is_ready());
        self.runs.len()
    }

    /// One look: claims the slots that came due, fires what the policies
    /// say, fires an owed run if it may. Returns when to look again.
    pub(super) fn step(&mut self, cx: &mut Ctx<'_>) -> Option<SystemTime> {
        if self.state != ScheduleState::Active {
            return None;
        }
        let running = self.unfinished();
        if let Some(first) = self.next.filter(|&n| n <= cx.now) {
            let newest = self.slots.newest_upto(first, cx.now);
            let (local, _) = self
                .slots
                .count_and_tail(first.saturating_sub(1), newest, 0);
            self.next = self.slots.next_after(newest);
            self.slot_due(cx, first, newest, local.max(1));
        }
        if self.policy.overlap == Overlap::Forbid
            && !self.owed.is_empty()
            && running == 0
            && self.unfinished() == 0
            && self.recheck.is_none_or(|t| ms_of(t) <= cx.now)
        {
            self.fire_owed(cx);
        }
        let next = self.next.map(time_of);
        match (next, self.recheck) {
            (None, None) => {
                self.state = ScheduleState::Finished;
                None
            }
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Slots `first..=newest` (`local` of them) came due here.
    pub(super) fn slot_due(&mut self, cx: &mut Ctx<'_>, first: u64, newest: u64, local: u64) {
        for _ in 0..CLAIM_TRIES {
            let (last, busy) = match peek(cx, &self.key) {
                Ok(x) => x,
                Err(_) => {
                    self.tally.refused += local;
                    return;
                }
            };
            if last.is_some_and(|l| l >= newest) {
                return; // claimed by another process
            }
            // Every slot after the last claim was missed by everyone; the
            // first claim ever counts what came due here.
            let after = last.unwrap_or(first.saturating_sub(1));
            let most = match self.policy.missed {
                Missed::RunUpTo(k) => k.max(1) as usize,
                _ => 1,
            };
            let (count, tail) = self.slots.count_and_tail(after, newest, most);
            let late = Duration::from_millis(cx.now.saturating_sub(newest));
            let mut owed = self.owed.len() as u32;
            let d = self.policy.decide(
                Some(Due {
                    count: count.max(1),
                    newest_late: late,
                }),
                usize::from(busy) + self.runs.len(),
                &mut owed,
            );
            // The slots the runs stand for: the newest due ones.
            let mut queue = self.owed.clone();
            let starting: Vec<u64> = if self.policy.overlap == Overlap::Forbid {
                queue.extend(tail.iter().copied());
                while queue.len() > owed as usize + d.start as usize {
                    queue.pop_front();
                }
                (0..d.start).filter_map(|_| queue.pop_front()).collect()
            } else {
                tail.iter()
                    .rev()
                    .take(d.start as usize)
                    .rev()
                    .copied()
                    .collect()
            };
            let runs = match self.prepare(cx, &starting) {
                Ok(r) => r,
                Err(()) => {
                    self.tally.refused += local;
                    return;
                }
            };
            match fire(cx, &self.key, last, newest, false, &runs) {
                Ok(Claim::Claimed) => {
                    self.claimed = Some(newest);
                    self.owed = queue;
                    self.tally.skips += d.skipped;
                    self.tally.misses += d.missed;
                    self.started(cx, runs);
                    return;
                }
                Ok(Claim::Moved(now_last)) => {
                    if now_last.is_some_and(|l| l >= newest) {
                        return; // another process claimed it meanwhile
                    }
                }
                Ok(Claim::Busy) => unreachable!("asked without forbid"),
                Err(_) => {
                    self.tally.refused += local;
                    return;
                }
            }
        }
        // `last` kept moving under us, to older slots: another process is
        // catching up; this slot is counted where it is claimed.
    }

    /// Fires the oldest owed catch-up run, if the newest run (fired by
    /// any process) is finished and no newer slot was claimed.
    pub(super) fn fire_owed(&mut self, cx: &mut Ctx<'_>) {
        let Some(&slot) = self.owed.front() else {
            return;
        };
        let Some(claimed) = self.claimed else {
            return;
        };
        let Ok(runs) = self.prepare(cx, &[slot]) else {
            self.recheck = Some(SystemTime::now() + OWED_RECHECK);
            return;
        };
        match fire(cx, &self.key, Some(claimed), claimed, true, &runs) {
            Ok(Claim::Claimed) => {
                self.owed.pop_front();
                self.recheck = None;
                self.started(cx, runs);
            }
            Ok(Claim::Busy) | Err(_) => {
                self.recheck = Some(SystemTime::now() + OWED_RECHECK);
            }
            Ok(Claim::Moved(_)) => {
                // A newer slot was claimed elsewhere: the owed runs are
                // worth nothing now.
                self.tally.misses += self.owed.len() as u64;
                self.owed.clear();
                self.recheck = None;
            }
        }
    }

    /// Ids and entries for runs standing for `slots`; `Err` if no id
    /// could be had (Redis unreachable). A run whose argument cannot be
    /// made is settled as failed here, counted, and not queued.
    pub(super) fn prepare(&mut self, cx: &mut Ctx<'_>, slots: &[u64]) -> Result<Vec<Run>, ()> {
        let Some(job) = &self.job else {
            return Ok(Vec::new());
        };
        let mut runs = Vec::with_capacity(slots.len());
        for &slot in slots {
            let id = cx.inner.next_id().map_err(drop)?;
            match job.envelope(id, slot) {
                Ok(env) => runs.push(Run {
                    id,
                    slot,
                    start: job.start,
                    env,
                }),
                Err(e) => {
                    log::error!("schedule {}: a run could not be made: {e}", self.name);
                    self.tally.runs += 1;
                    self.outcomes.record(Err(e.to_string()));
                }
            }
        }
        Ok(runs)
    }

    /// Runs that were queued: follow their results.
    pub(super) fn started(&mut self, cx: &mut Ctx<'_>, runs: Vec<Run>) {
        for run in runs {
            let slot = Arc::new(Slot::new(JobId(run.id)));
            crate::batch::Sink::claim(&*slot);
            let outcomes = self.outcomes.clone();
            let bell = Arc::downgrade(cx.bell);
            slot.set_finisher(Box::new(move |result| {
                outcomes.record(crate::options::signature::ended(&result));
                if let Some(bell) = bell.upgrade() {
                    bell.ring();
                }
                result
            }));
            cx.inner.wait_for(&slot);
            self.tally.runs += 1;
            self.last_run = Some(time_of(run.slot));
            self.last_job = Some(JobId(run.id));
            self.runs.push(slot);
        }
    }

    pub(super) fn info(&mut self, id: ScheduleId) -> ScheduleInfo {
        let running = self.unfinished();
        let active = self.state == ScheduleState::Active;
        ScheduleInfo {
            id,
            name: self.name.clone(),
            timing: self.timing.clone(),
            overlap: self.policy.overlap,
            missed: self.policy.missed,
            state: self.state,
            next_run: self.next.filter(|_| active).map(time_of),
            last_run: self.last_run,
            last_job: self.last_job,
            last_outcome: lock(&self.outcomes.last).clone(),
            running,
            runs: self.tally.runs,
            succeeded: self
                .outcomes
                .succeeded
                .load(std::sync::atomic::Ordering::Relaxed),
            failed: self
                .outcomes
                .failed
                .load(std::sync::atomic::Ordering::Relaxed),
            skips: self.tally.skips,
            misses: self.tally.misses,
            refused: self.tally.refused,
            replaced: 0,
        }
    }
}
