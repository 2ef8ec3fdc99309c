//! What happens to a job once a worker host is done with it: decided here,
//! written to Redis in batches — by the host's loop, pipelined with its
//! next read, or by the settle thread while the loop blocks in Redis.
//!
//! Jobs come in from the local pool (through [`HostSink`], on whichever
//! thread steps the pool) and from the host's loop (expired before they
//! started, held back by their rate limit, refused). Each one is turned
//! into an action:
//!
//! - **done**: its result (or failure) is stored for its expiry and sent to
//!   the client waiting for it; the entry is acknowledged and deleted;
//! - **again**: the entry is acknowledged and deleted and the job queued
//!   anew — the next attempt after its retry policy's delay, the same
//!   attempt at once when the host hands it back (a job stopped by the
//!   host's own shutdown), or after its rate limit's wait.
//!
//! Everything waiting is settled with one `FINISH` script call (up to 256
//! jobs): one round trip for a batch of acknowledgements, result writes
//! and notifications, each after the ownership check — a job another host
//! took over is dropped (counted in `HostReport::dropped`).
//!
//! Who sends it: finished jobs wait in a queue. The host's loop takes them
//! before each read and sends the `FINISH` in the same pipeline as its
//! `XREADGROUP` — no extra round trip, and no thread woken per job. Only
//! while the loop blocks in Redis (its queues empty, up to 200 ms) does a
//! job that finishes wake the settle thread, which settles it at once on
//! its own connection. The two agree through a flag and the queue (the
//! sink pushes, then reads the flag; the loop raises the flag, then reads
//! the queue, both with a full fence between), so no job waits for the
//! end of a blocking read. A lost connection is waited out (the held jobs'
//! leases go on being renewed); only when the host is stopped hard are jobs
//! left unsettled, to be reclaimed by another host after the visibility
//! timeout.

use super::conn::Conn;
use super::keys::{GROUP, Keys};
use super::lease::{HostState, bump};
use super::message::Envelope;
use super::results;
use super::scripts::Scripts;
use crate::batch::{Outcome, Sink};
use crate::error::JobError;
use crate::options::retry::classify;
use crate::transport::wire::{self, Tag};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why a held job is to be settled.
#[derive(Debug)]
pub(crate) enum Settle {
    /// The local pool ran it.
    Ran { token: u64, outcome: Outcome },
    /// It cannot run: expired, or its options are invalid.
    Refused { token: u64, error: JobError },
    /// Its rate limit holds it back this long.
    Later { token: u64, delay_ms: u64 },
}

impl Settle {
    fn token(&self) -> u64 {
        match self {
            Settle::Ran { token, .. }
            | Settle::Refused { token, .. }
            | Settle::Later { token, .. } => *token,
        }
    }
}

/// The sink of one job a host runs in its local pool.
pub(crate) struct HostSink {
    pub token: u64,
    pub settling: Arc<Settling>,
    /// Its outcome is in: the first one counts, once (a revoke resolves
    /// the job early, through `fail_now`, ahead of the worker's answer).
    pub done: AtomicBool,
}

impl HostSink {
    fn settle(&self, outcome: Outcome) -> bool {
        if self.done.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.settling.push(Settle::Ran {
            token: self.token,
            outcome,
        });
        self.settling.state.finished();
        true
    }
}

impl Sink for HostSink {
    fn deliver(&self, _base: u64, outcome: Outcome) {
        self.settle(outcome);
    }

    fn fail_now(&self, error: JobError) -> bool {
        self.settle(Outcome::Failed { count: 1, error })
    }
}

/// What becomes of one job.
enum Action {
    Done { value: Vec<u8>, ttl_ms: u64 },
    Again { fields: [Vec<u8>; 7], delay_ms: u64 },
}

/// One job to settle, copied out of the held table.
pub(crate) struct Job {
    token: u64,
    stream: Arc<str>,
    entry: String,
    deliveries: u64,
    id: u64,
    attempt: u32,
    reply: Option<String>,
    action: Action,
}

/// A batch of jobs to settle, with its `FINISH` call.
pub(crate) struct Prepared {
    jobs: Vec<Job>,
    pub cmd: redis::Cmd,
}

/// What the host's loop and the settle thread share.
pub(crate) struct Settling {
    pub state: Arc<HostState>,
    pub keys: Keys,
    pub me: String,
    /// The host is shutting down: a job its end cancelled is handed back.
    pub stopping: Arc<AtomicBool>,
    /// The largest result stored.
    pub max_result: u64,
    /// Finished jobs not yet settled.
    queue: Mutex<Vec<Settle>>,
    /// The loop blocks in Redis: finished jobs wake the settle thread.
    loop_blocked: AtomicBool,
    /// Wakes the settle thread.
    wake: Condvar,
    /// The host is done: the settle thread exits once the queue is empty.
    ended: AtomicBool,
}

/// At most this many jobs in one `FINISH`.
const BATCH: usize = 256;

impl Settling {
    pub(crate) fn new(
        state: Arc<HostState>,
        keys: Keys,
        me: String,
        stopping: Arc<AtomicBool>,
        max_result: u64,
    ) -> Settling {
        Settling {
            state,
            keys,
            me,
            stopping,
            max_result,
            queue: Mutex::new(Vec::new()),
            loop_blocked: AtomicBool::new(false),
            wake: Condvar::new(),
            ended: AtomicBool::new(false),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Vec<Settle>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job to settle; wakes the settle thread if the loop blocks.
    pub(crate) fn push(&self, msg: Settle) {
        self.queue().push(msg);
        fence(Ordering::SeqCst);
        if self.loop_blocked.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Takes up to a batch of queued jobs.
    pub(crate) fn take(&self) -> Vec<Settle> {
        let mut q = self.queue();
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    }

    /// The loop is about to block in Redis: from now on finished jobs wake
    /// the settle thread. False (and nothing changed) if jobs already wait:
    /// the loop should not block then.
    pub(crate) fn loop_blocks(&self) -> bool {
        self.loop_blocked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.queue().is_empty() {
            return true;
        }
        self.loop_blocked.store(false, Ordering::SeqCst);
        false
    }

    /// The loop is back from Redis.
    pub(crate) fn loop_returns(&self) {
        self.loop_blocked.store(false, Ordering::SeqCst);
    }

    /// The host is done: the settle thread settles what is left and ends.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    fn decide(&self, env: &Envelope, msg: Settle) -> Action {
        let counts = &self.state.counts;
        let done = |value: Vec<u8>, ok: bool| {
            bump(if ok {
                &counts.succeeded
            } else {
                &counts.failed
            });
            let ttl_ms = if env.opts.ignore_result {
                0
            } else {
                env.opts.result_ttl_ms
            };
            Action::Done { value, ttl_ms }
        };
        // A revoked job is never retried, held back or handed back
        // (`revoke.rs`).
        let revoked = self.state.revoked.get(env.id).is_some();
        let outcome = match msg {
            Settle::Refused { error, .. } => return done(results::from_error(&error), false),
            Settle::Later { .. } if revoked => {
                return done(results::from_error(&JobError::Revoked), false);
            }
            Settle::Later { delay_ms, .. } => {
                bump(&counts.rate_limited);
                return Action::Again {
                    fields: env.fields(),
                    delay_ms: delay_ms.max(1),
                };
            }
            Settle::Ran { outcome, .. } => outcome,
        };
        bump(&counts.ran);
        let stopped_by_host = matches!(
            &outcome,
            Outcome::Failed {
                error: JobError::Cancelled
                    | JobError::Crashed {
                        signal: Some(libc::SIGTERM | libc::SIGINT | libc::SIGKILL),
                        ..
                    },
                ..
            }
        );
        if stopped_by_host && self.stopping.load(Ordering::Acquire) && !revoked {
            bump(&counts.handed_back);
            return Action::Again {
                fields: env.fields(),
                delay_ms: 0,
            };
        }
        if let (Some(kind), Some(policy)) = (classify(&outcome), &env.opts.retry)
            && policy.retries(kind)
            && env.attempt <= policy.max_retries()
            && !revoked
        {
            let delay = policy.delay_with_jitter(env.attempt);
            let delay_ms = delay.as_millis().min(u64::MAX as u128) as u64;
            let before_expiry = env
                .opts
                .expires_at_ms
                .is_none_or(|at| super::unix_ms().saturating_add(delay_ms) < at);
            if before_expiry {
                bump(&counts.retried);
                let mut next = env.clone();
                next.attempt += 1;
                return Action::Again {
                    fields: next.fields(),
                    delay_ms,
                };
            }
        }
        match outcome {
            Outcome::Records { buf, .. } => {
                let ok = wire::records(&buf).next().is_some_and(|r| r.tag == Tag::Ok);
                if buf.len() as u64 > self.max_result {
                    let error = JobError::TooLarge {
                        size: buf.len() as u64,
                        limit: self.max_result,
                    };
                    return done(results::from_error(&error), false);
                }
                done(results::from_record(&buf), ok)
            }
            Outcome::Failed { error, .. } => done(results::from_error(&error), false),
        }
    }

    /// The `FINISH` call for a batch (`None` if none of it is still held).
    pub(crate) fn prepare(&self, batch: Vec<Settle>) -> Option<Prepared> {
        let mut jobs = Vec::with_capacity(batch.len());
        {
            let mut held = self.state.held();
            for msg in batch {
                let token = msg.token();
                let Some(h) = held.get_mut(&token) else {
                    continue;
                };
                h.settling = true;
                let action = self.decide(&h.env, msg);
                jobs.push(Job {
                    token,
                    stream: h.stream.clone(),
                    entry: h.entry.clone(),
                    deliveries: h.deliveries,
                    id: h.env.id,
                    attempt: h.env.attempt,
                    reply: h.env.opts.reply.clone(),
                    action,
                });
            }
        }
        if jobs.is_empty() {
            return None;
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&Scripts::get().finish.sha)
            .arg(1 + 3 * jobs.len())
            .arg(self.keys.delayed());
        for j in &jobs {
            let res = self.keys.result(j.id);
            let reply = j.reply.clone().unwrap_or_else(|| res.clone());
            cmd.arg(&*j.stream).arg(res).arg(reply);
        }
        cmd.arg(GROUP).arg(&self.me).arg(self.keys.base());
        for j in &jobs {
            let kind = match j.action {
                Action::Done { .. } => "done",
                Action::Again { .. } => "again",
            };
            cmd.arg(kind)
                .arg(&j.entry)
                .arg(j.deliveries)
                .arg(j.id)
                .arg(j.attempt);
            match &j.action {
                Action::Done { value, ttl_ms } => {
                    cmd.arg(value.as_slice())
                        .arg(*ttl_ms)
                        .arg(if j.reply.is_some() { "1" } else { "0" });
                }
                Action::Again { fields, delay_ms } => {
                    cmd.arg(*delay_ms);
                    for f in fields {
                        cmd.arg(f.as_slice());
                    }
                }
            }
        }
        Some(Prepared { jobs, cmd })
    }

    /// Records how a `FINISH` went: its jobs are no longer held.
    pub(crate) fn settled(&self, p: Prepared, outcome: Result<Vec<i64>, super::BrokerError>) {
        let mut held = self.state.held();
        match outcome {
            Ok(flags) => {
                let flags = flags.iter().chain(std::iter::repeat(&0));
                for (j, flag) in p.jobs.iter().zip(flags) {
                    if *flag != 1 {
                        bump(&self.state.counts.dropped);
                    }
                    held.remove(&j.token);
                }
            }
            Err(e) => {
                // Stopped, or a command error: the jobs stay pending in
                // Redis, where another host reclaims them.
                if !matches!(e, super::BrokerError::Stopped) {
                    log::error!(
                        "forkpool host {}: settling {} jobs failed: {e}",
                        self.me,
                        p.jobs.len()
                    );
                }
                for j in &p.jobs {
                    held.remove(&j.token);
                }
            }
        }
    }

    /// Settles everything queued now, on `conn`.
    pub(crate) fn flush(&self, conn: &mut Conn, go_on: &dyn Fn() -> bool) {
        loop {
            let batch = self.take();
            if batch.is_empty() {
                return;
            }
            if let Some(p) = self.prepare(batch) {
                let outcome = conn.run(go_on, |con| p.cmd.query::<Vec<i64>>(con));
                self.settled(p, outcome);
            }
        }
    }
}

/// The settle thread: settles what finishes while the host's loop blocks
/// in Redis, until the host ends.
pub(crate) struct Settler {
    pub settling: Arc<Settling>,
    pub conn: Conn,
    /// Stop waiting for Redis: leave what is not settled.
    pub quit: Arc<AtomicBool>,
}

impl Settler {
    pub(crate) fn run(mut self) {
        let quit = self.quit.clone();
        let go_on = move || !quit.load(Ordering::Acquire);
        let s = self.settling.clone();
        loop {
            {
                let q = s.queue();
                let idle = |q: &mut Vec<Settle>| q.is_empty() && !s.ended.load(Ordering::SeqCst);
                drop(
                    s.wake
                        .wait_timeout_while(q, Duration::from_millis(100), idle)
                        .unwrap_or_else(|e| e.into_inner()),
                );
            }
            s.flush(&mut self.conn, &go_on);
            if s.ended.load(Ordering::SeqCst) && s.is_empty() {
                return;
            }
        }
    }
}
