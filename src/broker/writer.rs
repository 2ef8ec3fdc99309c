//! The client's writer thread: submissions go to Redis in pipelines.
//!
//! `submit` encodes the job and hands it to this thread, which sends
//! whatever has accumulated — up to 512 jobs or 4 MiB — as one pipeline
//! while the next batch accumulates: one round trip per batch, not per
//! job, and no added latency when jobs are few (a lone job goes at once).
//!
//! Per job: `XADD` to its stream (a job with a countdown or an ETA goes to
//! the delayed set instead, through the `DELAY` script); the first time a
//! stream is used on a connection, its consumer group is created and its
//! priority level recorded (`prios:<queue>`), so hosts find it. A detached
//! job gets a "pending" marker as its result (`SET res:<id> P NX`), so
//! [`Client::status`](super::Client::status) can tell it from an unknown
//! id, from any process.
//!
//! A lost connection is waited out and the batch sent again (a job may
//! then be queued twice: at-least-once). A command Redis refuses (out of
//! memory, say) fails that job's handle with `JobError::Broker`. When the
//! client is dropped, the thread writes what is queued — for up to the
//! broker's timeout if Redis is unreachable, then fails the rest.

use super::conn::Conn;
use super::keys::{GROUP, Keys};
use super::message::Envelope;
use super::scripts::Scripts;
use crate::batch::slot::Slot;
use crate::error::JobError;
use crossbeam_channel::{Receiver, Sender};
use redis::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Handles waiting for their job's result, by job id.
pub(crate) type Pending = Mutex<HashMap<u64, Arc<Slot>>>;

/// When a job may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Now,
    /// This many ms after Redis receives it.
    Countdown(u64),
    /// At this time (ms since the Unix epoch).
    Eta(u64),
}

/// A job on its way to Redis.
pub(crate) struct OutJob {
    pub id: u64,
    pub queue: String,
    pub priority: i32,
    pub fields: [Vec<u8>; 7],
    pub start: Start,
    /// A detached job: mark its result pending, for this long (ms).
    pub mark_pending: Option<u64>,
    /// A handle's slot, failed if Redis refuses the job.
    pub slot: Option<Arc<Slot>>,
}

impl OutJob {
    /// The job `env`, encoded as `fields`, starting at `start`: for no
    /// handle, and with no pending mark.
    pub(crate) fn new(env: &Envelope, fields: [Vec<u8>; 7], start: Start) -> OutJob {
        OutJob {
            id: env.id,
            queue: env.opts.queue.clone(),
            priority: env.opts.priority,
            fields,
            start,
            mark_pending: None,
            slot: None,
        }
    }
}

/// What the writer is asked.
pub(crate) enum Outgoing {
    Job(Box<OutJob>),
    /// Answer once everything sent before is written.
    Flush(Sender<Result<(), String>>),
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub conn: Conn,
    pub keys: Keys,
    pub rx: Receiver<Outgoing>,
    pub pending: Arc<Pending>,
    /// Set when the client is dropped: from then on, give up on Redis at
    /// `deadline`.
    pub closing: Arc<AtomicBool>,
    pub deadline: Arc<Mutex<Option<Instant>>>,
    /// Streams set up on the current connection.
    pub known: HashSet<String>,
    pub known_on: u64,
}

/// The most jobs, and bytes, one pipeline carries.
const MAX_JOBS: usize = 512;
const MAX_BYTES: usize = 4 << 20;

impl Writer {
    pub(crate) fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut jobs: Vec<OutJob> = Vec::new();
            let mut flushes = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Outgoing::Job(j) => {
                        bytes += j.fields.iter().map(Vec::len).sum::<usize>();
                        jobs.push(*j);
                    }
                    Outgoing::Flush(tx) => flushes.push(tx),
                }
                if jobs.len() < MAX_JOBS && bytes < MAX_BYTES {
                    next = self.rx.try_recv().ok();
                }
            }
            let result = if jobs.is_empty() {
                Ok(())
            } else {
                self.write(jobs)
            };
            for tx in flushes {
                let _ = tx.send(result.clone());
            }
        }
    }

    fn go_on(&self) -> impl Fn() -> bool + use<> {
        let closing = self.closing.clone();
        let deadline = self.deadline.clone();
        move || {
            !closing.load(Ordering::Acquire)
                || deadline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none_or(|d| Instant::now() < d)
        }
    }

    /// Sends one batch; fails the jobs Redis refused (or all of them, if
    /// the client is going and Redis cannot be reached).
    fn write(&mut self, jobs: Vec<OutJob>) -> Result<(), String> {
        if self.conn.generation() != self.known_on {
            self.known.clear();
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // The job each command belongs to, for the ones whose errors count.
        let mut owner: Vec<Option<usize>> = Vec::new();
        let mut new_streams = HashSet::new();
        let scripts = Scripts::get();
        for (i, j) in jobs.iter().enumerate() {
            let stream = self.keys.stream(&j.queue, j.priority);
            if !self.known.contains(&stream) && new_streams.insert(stream.clone()) {
                pipe.cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM");
                pipe.cmd("ZADD")
                    .arg(self.keys.priorities(&j.queue))
                    .arg(j.priority)
                    .arg(j.priority);
                owner.extend([None, None]);
            }
            if let Some(ttl) = j.mark_pending {
                pipe.cmd("SET")
                    .arg(self.keys.result(j.id))
                    .arg("P")
                    .arg("PX")
                    .arg(ttl.max(1))
                    .arg("NX");
                owner.push(None);
            }
            let delayed = match j.start {
                Start::Now => None,
                Start::Countdown(ms) => Some((ms.to_string(), String::new())),
                Start::Eta(at) => Some((String::new(), at.to_string())),
            };
            match delayed {
                None => {
                    let c = pipe.cmd("XADD").arg(&stream).arg("*");
                    for (k, v) in super::message::FIELDS.iter().zip(&j.fields) {
                        c.arg(*k).arg(v.as_slice());
                    }
                }
                Some((countdown, eta)) => {
                    // EVAL, not EVALSHA: inside a pipeline a NOSCRIPT
                    // (after a SCRIPT FLUSH) could not be retried alone.
                    let c = pipe
                        .cmd("EVAL")
                        .arg(scripts.delay.source)
                        .arg(2)
                        .arg(self.keys.delayed())
                        .arg(self.keys.job(j.id))
                        .arg(j.id)
                        .arg(countdown)
                        .arg(eta)
                        .arg(&stream);
                    for (k, v) in super::message::FIELDS.iter().zip(&j.fields) {
                        c.arg(*k).arg(v.as_slice());
                    }
                }
            }
            owner.push(Some(i));
        }
        let go_on = self.go_on();
        let replies = self.conn.run(&go_on, |con| pipe.query::<Vec<Value>>(con));
        let replies = match replies {
            Ok(r) => r,
            Err(e) => {
                let message = format!("the job was not submitted: {e}");
                for j in &jobs {
                    self.fail(j, &message);
                }
                return Err(message);
            }
        };
        self.known_on = self.conn.generation();
        self.known.extend(new_streams);
        let mut refused = 0;
        for (reply, who) in replies.iter().zip(&owner) {
            if let (Value::ServerError(e), Some(i)) = (reply, who) {
                refused += 1;
                self.fail(&jobs[*i], &format!("Redis refused the job: {e}"));
            }
        }
        if refused > 0 {
            Err(format!("Redis refused {refused} jobs"))
        } else {
            Ok(())
        }
    }

    fn fail(&self, j: &OutJob, message: &str) {
        if let Some(slot) = &j.slot {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&j.id);
            slot.resolve(Err(JobError::Broker {
                message: message.to_string(),
            }));
        }
    }
}
