//! [`Shared`]: what every handle of one pool holds.
//!
//! A `Pool` (and every clone of it, every `Job`, every `Imap`) holds an
//! `Arc<Shared>`; job handles hold it weakly, so a forgotten handle never
//! keeps a pool alive. It owns the way into the supervisor (its command
//! queue, and the driver that lets a waiting caller step it), the
//! counters, the bounded queue, the next job id, and the supervisor
//! thread's handle.
//!
//! What it promises:
//! - Submitting to a closed pool resolves the job as `PoolClosed`; a job
//!   refused before it reaches the supervisor (its argument does not
//!   encode, or is too large) is counted submitted and failed, and resolved
//!   at once. Nothing is ever left pending.
//! - The last `Arc<Shared>` to go terminates the pool: the supervisor is
//!   told, and joined unless the drop happens on the supervisor's own
//!   thread (a job's callback that held the last handle), where joining
//!   would deadlock.

use crate::batch::gate::{Gate, Refused, Ticket};
use crate::batch::slot::Slot;
use crate::batch::throttle::Throttles;
use crate::batch::{Batch, JobId, JobOpts};
use crate::client::handle::JobHandle;
use crate::config::PoolConfig;
use crate::error::{Error, JobError};
use crate::metrics::stats::{Counters, QueueCounters};
use crate::supervisor::{self, Command, Driver, Submitter, Whereabouts};
use crate::sys::prefault::Prefault;
use crate::transport::codec::Codec;
use crate::transport::wire;
use crate::worker::call::Call;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// State shared by every handle of one pool.
///
/// Dropping the last `Arc<Shared>` terminates the pool (see `Drop`).
pub(crate) struct Shared {
    pub(crate) submitter: Submitter,
    /// Lets a waiting caller step the supervisor itself (see `supervisor::drive`).
    pub(crate) driver: Driver,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: Arc<PoolConfig>,
    closed: AtomicBool,
    /// The bounded queue, with `queue_capacity`.
    gate: Option<Arc<Gate>>,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Faulted-in buffers for the big byte strings of results (`prefault.rs`).
    pub(crate) prefault: Prefault,
    /// How arguments and results become bytes (`PoolBuilder::codec`).
    pub(crate) codec: Codec,
    /// Each queue's most workers as last resized, to keep resizes within
    /// the fork server's table.
    maxes: Mutex<Vec<usize>>,
}

impl Shared {
    /// Forks the fork server, starts the supervisor thread, and returns
    /// the state every handle of the new pool shares. `throttles` is the
    /// registry the supervisor consults by function (rate limits fill it).
    pub(crate) fn start(
        config: PoolConfig,
        throttles: Arc<Throttles>,
        codec: Codec,
    ) -> Result<Arc<Shared>, Error> {
        let config = Arc::new(config);
        let queues = config.queues.iter();
        let counters = Arc::new(Counters {
            queues: queues
                .map(|q| QueueCounters::new(&q.name, q.min_workers, q.max_workers))
                .collect(),
            ..Counters::default()
        });
        let prefault = Prefault::new();
        let (submitter, driver, thread) = supervisor::start(
            config.clone(),
            counters.clone(),
            throttles,
            prefault.spares().clone(),
        )?;
        let gate = config.queue_capacity.map(Gate::new);
        let maxes = config.queues.iter().map(|q| q.max_workers).collect();
        Ok(Arc::new(Shared {
            submitter,
            driver,
            counters,
            config,
            closed: AtomicBool::new(false),
            gate,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
            prefault,
            codec,
            maxes: Mutex::new(maxes),
        }))
    }

    /// Queue `queue` keeps between `min` and `max` workers from now on
    /// (checked by the caller: `min <= max`, `max >= 1`). Refused if all
    /// queues together could then have more workers than the fork server
    /// was sized for when the pool was built.
    pub(crate) fn resize(&self, queue: usize, min: usize, max: usize) -> Result<(), Error> {
        let mut maxes = self.maxes.lock().unwrap_or_else(|e| e.into_inner());
        let others: usize = maxes.iter().sum::<usize>() - maxes[queue];
        let most = self.config.max_total_workers();
        if others + max > most {
            return Err(Error::InvalidConfig(format!(
                "queue {:?}: {max} workers would make {} in all, above the {most} this pool \
                 was built for",
                self.config.queues[queue].name,
                others + max
            )));
        }
        let cmd = Command::Resize { queue, min, max };
        if self.submitter.send(cmd).is_err() {
            return Err(Error::PoolClosed);
        }
        maxes[queue] = max;
        Ok(())
    }

    /// Places for one job in the bounded queue, without blocking: `Ok(None)`
    /// when the queue is unbounded.
    pub(crate) fn try_admit(&self) -> Result<Option<Ticket>, Refused> {
        match &self.gate {
            None => Ok(None),
            Some(gate) => gate.try_acquire(1).map(Some),
        }
    }

    /// Encodes one job's argument as a one-item batch body, or says why it
    /// cannot be sent (it does not encode, or it is over the message cap).
    pub(crate) fn encode_arg<A: Serialize>(&self, arg: &A) -> Result<Vec<u8>, JobError> {
        let mut items = Vec::new();
        let cap = self.config.max_message_size;
        let codec = self.codec;
        match wire::push_item(&mut items, |v| codec.encode_into(v, arg)) {
            Err(e) => Err(JobError::Codec(format!("argument: {e}"))),
            Ok(len) if len as u64 > cap => Err(JobError::TooLarge {
                size: len as u64,
                limit: cap,
            }),
            Ok(_) => Ok(items),
        }
    }

    /// Resolves a job refused before it reached the supervisor: it counts
    /// as submitted and failed with `error`.
    pub(crate) fn refuse(&self, slot: &Slot, error: JobError) {
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.counters.count_error(&error, 1);
        slot.resolve(Err(error));
    }

    /// Submits one job of `call` with the default options of queue
    /// `queue` — the path of `Pool::submit`, `try_submit` and `apply` — and
    /// returns its handle. `ticket`: places in the bounded queue already held;
    /// `quiet`: the caller helps right away.
    pub(crate) fn submit_call<A, R>(
        self: &Arc<Self>,
        call: Call,
        name: &'static str,
        arg: &A,
        quiet: bool,
        ticket: Option<Ticket>,
        queue: usize,
    ) -> JobHandle<R>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let id = self.next_job_id();
        let slot = Arc::new(Slot::new(id));
        let handle = JobHandle::new(slot.clone(), Arc::downgrade(self), self.codec);
        if self.is_closed() {
            slot.resolve(Err(JobError::PoolClosed));
            return handle;
        }
        let items = match self.encode_arg(arg) {
            Ok(items) => items,
            Err(error) => {
                self.refuse(&slot, error);
                return handle;
            }
        };
        let opts = JobOpts::for_queue(&self.config, queue);
        let mut batch = Batch::new(call, items, 1, 0, slot, opts, Some(id));
        batch.name = name;
        batch.ticket = ticket.map(Box::new);
        self.submit(batch, quiet);
        handle
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops taking jobs: refuses new ones and wakes blocked submitters.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(g) = &self.gate {
            g.close();
        }
    }

    /// Queues a batch; if the supervisor is gone, its items resolve as cancelled.
    pub(crate) fn submit_batch(&self, batch: Batch) {
        self.submit(batch, false);
    }

    /// Queues a batch, first waiting for room in a bounded queue (unless
    /// the batch already holds its places); `quiet` leaves the supervisor
    /// thread asleep, for a caller that helps right away. If the pool
    /// closes while it waits, its items fail with `PoolClosed`.
    pub(crate) fn submit(&self, mut batch: Batch, quiet: bool) {
        if let Some(gate) = &self.gate
            && batch.ticket.is_none()
        {
            let n = u64::from(batch.count());
            // Before blocking on a full queue, make sure the supervisor is
            // awake to drain it: a quiet submitter may be the only one who
            // would otherwise have stepped it.
            let admitted = gate.try_acquire(n).or_else(|_| {
                self.submitter.nudge();
                gate.acquire(n)
            });
            match admitted {
                Ok(t) => batch.ticket = Some(Box::new(t)),
                Err(_) => return batch.fail(batch.count(), JobError::PoolClosed),
            }
        }
        let n = u64::from(batch.count());
        self.counters.submitted.fetch_add(n, Ordering::Relaxed);
        let cmd = Command::Submit(batch);
        let sent = if quiet {
            self.submitter.send_quiet(cmd)
        } else {
            self.submitter.send(cmd)
        };
        if sent.is_err() {
            self.counters.cancelled.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A fresh job id.
    pub(crate) fn next_job_id(&self) -> JobId {
        JobId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Asks the supervisor where single job `id` is now.
    pub(crate) fn inspect(&self, id: JobId) -> Whereabouts {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self
            .submitter
            .send(Command::Inspect { id, reply: tx })
            .is_err()
        {
            return Whereabouts::Elsewhere;
        }
        rx.recv().unwrap_or(Whereabouts::Elsewhere)
    }

    /// Tells the supervisor that job `id`, cancelled before dispatch, can
    /// be dropped from its timers.
    pub(crate) fn discard(&self, id: JobId) {
        let _ = self.submitter.send(Command::Discard(id));
    }

    /// Asks the supervisor to cancel a job already handed to it.
    pub(crate) fn cancel_dispatched(&self, id: JobId) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self
            .submitter
            .send(Command::Cancel { id, reply: tx })
            .is_err()
        {
            return false;
        }
        rx.recv().unwrap_or(false)
    }

    /// Sends `cmd` (Join or Terminate) and waits for the supervisor to end.
    /// False if it ended by panicking.
    pub(crate) fn shutdown(&self, cmd: Command) -> bool {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else { return true };
        let _ = self.submitter.send(cmd);
        if handle.thread().id() == std::thread::current().id() {
            // The last handle went with something the supervisor dropped
            // (a job's callback that held a Pool): it ends on the command.
            return true;
        }
        handle.join().is_ok()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
        self.shutdown(Command::Terminate);
    }
}
