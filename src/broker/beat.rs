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

use super::client::{Client, Inner};
use super::conn::Conn;
use super::job::{RemoteJob, Target};
use super::message::{Envelope, Opts};
use super::writer::Start;
use crate::batch::JobId;
use crate::batch::slot::Slot;
use crate::beat::clock::{Bell, Clock, Deadline, RealClock};
use crate::beat::policy::{Due, Policy};
use crate::beat::runner::{Outcomes, Tally};
use crate::beat::schedule::{Schedule, ScheduleError, Timing};
use crate::control::schedules::{Missed, Overlap, ScheduleId, ScheduleInfo, ScheduleState};
use crate::error::JobError;
use crate::options::signature::Expiry;
use crate::transport::codec::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// At most this many cron slots are counted one by one between the last
/// claim and now (a schedule idle for years on a per-second expression);
/// past that, the count stops there.
const MOST_COUNTED: u64 = 100_000;

/// How often a process that owes catch-up runs looks again whether the
/// schedule's newest run (fired elsewhere) has finished.
const OWED_RECHECK: Duration = Duration::from_secs(1);

/// How many times a slot's claim is tried when another process moved
/// `last` between the read and the claim (to an older slot than this one).
const CLAIM_TRIES: u32 = 3;

/// Reads a schedule's state. KEYS: beat:<name>. ARGV: key base. Returns
/// {last ('' if none), 1 if its newest run is unfinished else 0}.
const PEEK: &str = r#"
local last = redis.call('HGET', KEYS[1], 'last') or ''
local job = redis.call('HGET', KEYS[1], 'job')
local running = 0
if job then
  local v = redis.call('GET', ARGV[1] .. 'res:' .. job)
  if v and string.sub(v, 1, 1) == 'P' then running = 1 end
end
return {last, running}
"#;

/// Claims slot ARGV[3] and queues its runs, if `last` is still ARGV[2]
/// (and, with ARGV[4] = '1', the newest run is finished). Each run is
/// queued as the client's writer would (its stream and consumer group
/// made if new, its priority level recorded, or into the delayed set),
/// with its result key marked `P`.
///
/// KEYS: beat:<name>, delayed. ARGV: key base, expected last ('' none),
/// new last, forbid (1/0), number of runs, then per run: id, stream,
/// queue, priority, countdown ms ('' none), eta ms ('' none), result ttl
/// ms, and the seven field values. Returns {1, last} when claimed, {0,
/// last} when `last` was not as expected, {2, last} when a run is
/// unfinished.
const FIRE: &str = r#"
local B = ARGV[1]
local last = redis.call('HGET', KEYS[1], 'last') or ''
if last ~= ARGV[2] then return {0, last} end
if ARGV[4] == '1' then
  local job = redis.call('HGET', KEYS[1], 'job')
  if job then
    local v = redis.call('GET', B .. 'res:' .. job)
    if v and string.sub(v, 1, 1) == 'P' then return {2, last} end
  end
end
redis.call('HSET', KEYS[1], 'last', ARGV[3])
local FIELDS = {'id', 'job', 'codec', 'fp', 'try', 'opt', 'arg'}
local a = 6
for r = 1, tonumber(ARGV[5]) do
  local id, stream, queue, prio = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local countdown, eta, ttl = ARGV[a + 4], ARGV[a + 5], tonumber(ARGV[a + 6])
  local f = {}
  for i = 1, 7 do f[#f + 1] = FIELDS[i]; f[#f + 1] = ARGV[a + 6 + i] end
  redis.pcall('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
  redis.pcall('ZADD', B .. 'prios:' .. queue, prio, prio)
  redis.call('SET', B .. 'res:' .. id, 'P', 'PX', math.max(ttl, 1))
  if countdown == '' and eta == '' then
    local ok = redis.pcall('XADD', stream, '*', unpack(f))
    if type(ok) == 'table' and ok.err then
      redis.call('SET', B .. 'res:' .. id, 'E' .. cjson.encode({Broker = {message =
        'Redis refused the scheduled run: ' .. ok.err}}), 'PX', math.max(ttl, 1))
    end
  else
    local due
    if countdown ~= '' then
      local t = redis.call('TIME')
      due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(countdown)
    else
      due = tonumber(eta)
    end
    local k = B .. 'job:' .. id
    redis.call('DEL', k)
    redis.call('HSET', k, '_s', stream, unpack(f))
    redis.call('ZADD', KEYS[2], due, id)
  end
  redis.call('HSET', KEYS[1], 'job', id)
  a = a + 14
end
return {1, ARGV[3]}
"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `t` in milliseconds since the Unix epoch (0 before it).
fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A schedule's slots as every process sees them: instants in ms since
/// the Unix epoch.
#[derive(Debug)]
struct Slots {
    timing: Timing,
}

impl Slots {
    /// The interval in ms of an interval schedule.
    fn every_ms(&self) -> Option<u64> {
        match &self.timing {
            Timing::Every(d) => Some((d.as_millis().min(u128::from(u64::MAX)) as u64).max(1)),
            #[cfg(feature = "cron")]
            Timing::Cron(_) => None,
        }
    }

    /// The first slot strictly after `t`; `None` if there is none.
    fn next_after(&self, t: u64) -> Option<u64> {
        match &self.timing {
            Timing::Every(_) => {
                let every = self.every_ms().expect("an interval");
                (t / every).checked_add(1)?.checked_mul(every)
            }
            #[cfg(feature = "cron")]
            Timing::Cron(c) => c.next_after(time_of(t)).map(ms_of),
        }
    }

    /// The newest slot at or before `now`, at or after `first` (a slot).
    fn newest_upto(&self, first: u64, now: u64) -> u64 {
        match self.every_ms() {
            Some(every) => (now / every * every).max(first),
            None => {
                let mut slot = first;
                for _ in 0..MOST_COUNTED {
                    match self.next_after(slot) {
                        Some(n) if n <= now => slot = n,
                        _ => return slot,
                    }
                }
                // Too many to walk (a per-second expression idle for
                // days): look back from now in doubling windows for a slot,
                // and walk from there.
                let mut back = 1_000u64;
                loop {
                    let from = now.saturating_sub(back);
                    if let Some(mut s) = self.next_after(from).filter(|&s| s <= now) {
                        while let Some(n) = self.next_after(s).filter(|&n| n <= now) {
                            s = n;
                        }
                        return s.max(slot);
                    }
                    if from == 0 {
                        return slot;
                    }
                    back = back.saturating_mul(2);
                }
            }
        }
    }

    /// How many slots lie in `(after, upto]` (`upto` a slot), and the
    /// newest `k` of them, oldest first.
    fn count_and_tail(&self, after: u64, upto: u64, k: usize) -> (u64, Vec<u64>) {
        if upto <= after {
            return (0, Vec::new());
        }
        match self.every_ms() {
            Some(every) => {
                let count = upto / every - after / every;
                let n = count.min(k as u64);
                let tail = (0..n).rev().map(|i| upto - i * every).collect();
                (count, tail)
            }
            None => {
                let mut tail = VecDeque::with_capacity(k + 1);
                let mut count = 0;
                let mut at = after;
                while let Some(slot) = self.next_after(at).filter(|&s| s <= upto) {
                    count += 1;
                    tail.push_back(slot);
                    if tail.len() > k {
                        tail.pop_front();
                    }
                    at = slot;
                    if count == MOST_COUNTED {
                        // Too many: the newest one stands for the rest.
                        tail.clear();
                        tail.push_back(upto);
                        break;
                    }
                }
                (count.max(1), tail.into_iter().collect())
            }
        }
    }
}

/// How a scheduled job's argument is made: encoded once, or per slot
/// from the slot's time.
enum Arg {
    Fixed(Vec<u8>),
    PerSlot(Box<dyn Fn(SystemTime) -> Result<Vec<u8>, String> + Send>),
}

/// What a schedule keeps of its job: everything but the client (holding
/// it would keep the client alive).
struct Kept {
    name: String,
    fingerprint: u64,
    codec: Codec,
    opts: Opts,
    start: Start,
    expiry: Option<Expiry>,
    arg: Arg,
}

impl Kept {
    /// The entry of one run, for slot `slot`.
    fn envelope(&self, id: u64, slot: u64) -> Result<Envelope, JobError> {
        let arg = match &self.arg {
            Arg::Fixed(bytes) => bytes.clone(),
            Arg::PerSlot(make) => make(time_of(slot)).map_err(JobError::Codec)?,
        };
        let mut opts = self.opts.clone();
        if let Some(Expiry::After(d)) = self.expiry {
            opts.expires_at_ms = Some(super::unix_ms().saturating_add(d.as_millis() as u64));
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
struct Entry {
    name: String,
    /// `{prefix}:beat:<name>`.
    key: String,
    timing: String,
    slots: Slots,
    policy: Policy,
    state: ScheduleState,
    /// The next slot this process has not looked at.
    next: Option<u64>,
    /// The newest slot this process claimed.
    claimed: Option<u64>,
    /// Catch-up runs owed (`Overlap::Forbid` with `Missed::RunUpTo`),
    /// by the slot each stands for, oldest first.
    owed: VecDeque<u64>,
    /// Look again at this time for owed runs.
    recheck: Option<SystemTime>,
    job: Option<Kept>,
    /// Runs this process fired whose result has not come back.
    runs: Vec<Arc<Slot>>,
    tally: Tally,
    outcomes: Arc<Outcomes>,
    last_run: Option<SystemTime>,
    last_job: Option<JobId>,
}

/// What one look needs besides the entry.
struct Ctx<'a> {
    inner: &'a Inner,
    conn: &'a mut Conn,
    bell: &'a Arc<Bell>,
    now: u64,
}

/// A claim's answer.
enum Claim {
    Claimed,
    /// `last` was not what was read: now it is this.
    Moved(Option<u64>),
    /// The newest run is unfinished (asked with `forbid`).
    Busy,
}

/// A run about to be queued.
struct Run {
    id: u64,
    slot: u64,
    start: Start,
    env: Envelope,
}

fn parse_last(s: &str) -> Option<u64> {
    s.parse().ok()
}

impl Entry {
    fn unfinished(&mut self) -> usize {
        self.runs.retain(|s| !s.is_ready());
        self.runs.len()
    }

    /// One look: claims the slots that came due, fires what the policies
    /// say, fires an owed run if it may. Returns when to look again.
    fn step(&mut self, cx: &mut Ctx<'_>) -> Option<SystemTime> {
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
    fn slot_due(&mut self, cx: &mut Ctx<'_>, first: u64, newest: u64, local: u64) {
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
    fn fire_owed(&mut self, cx: &mut Ctx<'_>) {
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
    fn prepare(&mut self, cx: &mut Ctx<'_>, slots: &[u64]) -> Result<Vec<Run>, ()> {
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
    fn started(&mut self, cx: &mut Ctx<'_>, runs: Vec<Run>) {
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

    fn info(&mut self, id: ScheduleId) -> ScheduleInfo {
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

/// `PEEK`: the newest slot claimed, and whether the newest run is
/// unfinished.
fn peek(cx: &mut Ctx<'_>, key: &str) -> Result<(Option<u64>, bool), super::BrokerError> {
    let base = cx.inner.keys.base().to_string();
    let script = redis::Script::new(PEEK);
    let (last, busy): (String, i64) = cx
        .conn
        .run_once(|con| script.key(key).arg(&base).invoke(con))?;
    Ok((parse_last(&last), busy == 1))
}

/// `FIRE`: claims `slot` (if `last` is still `expect`) and queues `runs`.
fn fire(
    cx: &mut Ctx<'_>,
    key: &str,
    expect: Option<u64>,
    slot: u64,
    forbid: bool,
    runs: &[Run],
) -> Result<Claim, super::BrokerError> {
    let keys = &cx.inner.keys;
    let script = redis::Script::new(FIRE);
    let mut inv = script.prepare_invoke();
    inv.key(key)
        .key(keys.delayed())
        .arg(keys.base())
        .arg(expect.map(|l| l.to_string()).unwrap_or_default())
        .arg(slot)
        .arg(if forbid { "1" } else { "0" })
        .arg(runs.len());
    for run in runs {
        let o = &run.env.opts;
        let (countdown, eta) = match run.start {
            Start::Now => (String::new(), String::new()),
            Start::Countdown(ms) => (ms.to_string(), String::new()),
            Start::Eta(at) => (String::new(), at.to_string()),
        };
        inv.arg(run.id)
            .arg(keys.stream(&o.queue, o.priority))
            .arg(&o.queue)
            .arg(o.priority)
            .arg(countdown)
            .arg(eta)
            .arg(o.result_ttl_ms);
        for field in run.env.fields() {
            inv.arg(field);
        }
    }
    let (code, last): (i64, String) = cx.conn.run_once(|con| inv.invoke(con))?;
    Ok(match code {
        1 => Claim::Claimed,
        2 => Claim::Busy,
        _ => Claim::Moved(parse_last(&last)),
    })
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
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string payload".into());
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

    fn every(ms: u64) -> Slots {
        Slots {
            timing: Timing::Every(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn interval_slots_are_multiples_of_the_interval_since_the_epoch() {
        let s = every(250);
        assert_eq!(s.next_after(0), Some(250));
        assert_eq!(s.next_after(249), Some(250));
        assert_eq!(s.next_after(250), Some(500));
        assert_eq!(s.newest_upto(250, 999), 750);
        assert_eq!(s.newest_upto(250, 250), 250);
        // (250, 1000]: 500, 750, 1000.
        assert_eq!(s.count_and_tail(250, 1000, 2), (3, vec![750, 1000]));
        assert_eq!(s.count_and_tail(250, 1000, 0), (3, vec![]));
        assert_eq!(s.count_and_tail(1000, 1000, 1), (0, vec![]));
        assert_eq!(s.next_after(u64::MAX - 1), None);
    }

    #[cfg(feature = "cron")]
    #[test]
    fn cron_slots_are_counted_between_two_claims() {
        let s = Slots {
            timing: Schedule::cron("*/10 * * * * *", "UTC").unwrap().timing,
        };
        // (0 s, 60 s]: 10, 20, …, 60.
        assert_eq!(s.count_and_tail(0, 60_000, 2), (6, vec![50_000, 60_000]));
        assert_eq!(s.newest_upto(10_000, 65_000), 60_000);
        assert_eq!(s.next_after(60_000), Some(70_000));
    }

    #[cfg(feature = "cron")]
    #[test]
    fn the_newest_of_too_many_cron_slots_is_found_from_now() {
        let s = Slots {
            timing: Schedule::cron("* * * * * *", "UTC").unwrap().timing,
        };
        // 200,000 one-second slots since the first: more than are walked.
        assert_eq!(s.newest_upto(1_000, 200_000_500), 200_000_000);
        assert_eq!(s.newest_upto(1_000, 5_500), 5_000);
    }

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
