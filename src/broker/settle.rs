//! A worker host's settle thread: what happens to a job once the host is
//! done with it, decided here and written to Redis in batches.
//!
//! Jobs come in from the local pool (through [`HostSink`], on the pool's
//! supervisor thread) and from the host's loop (expired before they
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
//! took over is dropped (counted in `HostReport::dropped`). A lost
//! connection is waited out (the held jobs' leases go on being renewed by
//! the host's loop); only when the host is stopped hard are jobs left
//! unsettled, to be reclaimed by another host after the visibility timeout.

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
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub tx: Sender<Settle>,
    pub state: Arc<HostState>,
}

impl Sink for HostSink {
    fn deliver(&self, _base: u64, outcome: Outcome) {
        self.state.finished();
        let _ = self.tx.send(Settle::Ran {
            token: self.token,
            outcome,
        });
    }
}

/// What becomes of one job.
enum Action {
    Done { value: Vec<u8>, ttl_ms: u64 },
    Again { fields: [Vec<u8>; 7], delay_ms: u64 },
}

/// One job to settle, copied out of the held table.
struct Job {
    token: u64,
    stream: Arc<str>,
    entry: String,
    deliveries: u64,
    id: u64,
    attempt: u32,
    reply: Option<String>,
    action: Action,
}

/// The settle thread.
pub(crate) struct Settler {
    pub state: Arc<HostState>,
    pub keys: Keys,
    pub me: String,
    pub conn: Conn,
    pub rx: Receiver<Settle>,
    /// The host is shutting down: a job its end cancelled is handed back.
    pub stopping: Arc<AtomicBool>,
    /// Stop waiting for Redis: leave what is not settled.
    pub quit: Arc<AtomicBool>,
    /// The largest result stored.
    pub max_result: u64,
}

impl Settler {
    /// Settles jobs until every sender is gone and the queue is empty.
    pub(crate) fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < 256 {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.settle(batch);
        }
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
        let outcome = match msg {
            Settle::Refused { error, .. } => return done(results::from_error(&error), false),
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
        if stopped_by_host && self.stopping.load(Ordering::Acquire) {
            bump(&counts.handed_back);
            return Action::Again {
                fields: env.fields(),
                delay_ms: 0,
            };
        }
        if let (Some(kind), Some(policy)) = (classify(&outcome), &env.opts.retry)
            && policy.retries(kind)
            && env.attempt <= policy.max_retries()
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

    fn settle(&mut self, batch: Vec<Settle>) {
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
            return;
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
        let empty: &[u8] = b"";
        for j in &jobs {
            let kind = match j.action {
                Action::Done { .. } => "done",
                Action::Again { .. } => "again",
            };
            cmd.arg(kind).arg(&j.entry).arg(j.deliveries);
            match &j.action {
                Action::Done { value, ttl_ms } => {
                    cmd.arg(value.as_slice())
                        .arg(*ttl_ms)
                        .arg(if j.reply.is_some() { "1" } else { "0" })
                        .arg(0);
                    for _ in 0..7 {
                        cmd.arg(empty);
                    }
                }
                Action::Again { fields, delay_ms } => {
                    cmd.arg(empty).arg(0).arg("0").arg(*delay_ms);
                    for f in fields {
                        cmd.arg(f.as_slice());
                    }
                }
            }
            cmd.arg(j.id).arg(j.attempt);
        }
        let quit = self.quit.clone();
        let go_on = move || !quit.load(Ordering::Acquire);
        let settled = self.conn.run(&go_on, |con| cmd.query::<Vec<i64>>(con));
        let mut held = self.state.held();
        match settled {
            Ok(flags) => {
                for (j, flag) in jobs.iter().zip(flags.iter().chain(std::iter::repeat(&0))) {
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
                    eprintln!(
                        "forkpool host {}: settling {} jobs failed: {e}",
                        self.me,
                        jobs.len()
                    );
                }
                for j in &jobs {
                    held.remove(&j.token);
                }
            }
        }
    }
}
