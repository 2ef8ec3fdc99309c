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
//!
//! Code that submits from the supervisor's thread (a retry, a workflow's
//! next step) must not hold the pool there, so it holds a [`Feed`]: the
//! command queue, the counters, the settings and the id source, and
//! nothing that keeps the pool alive or ends it when dropped.

use crate::batch::gate::{Gate, Refused, Ticket};
use crate::batch::slot::Slot;
use crate::batch::throttle::Throttles;
use crate::batch::{Batch, JobId, JobOpts};
use crate::client::handle::JobHandle;
use crate::config::PoolConfig;
use crate::control::events::Bus;
use crate::control::inspection::Inspection;
use crate::control::revoke::Revoked;
use crate::error::{Error, JobError};
use crate::metrics::stats::{Counters, QueueCounters};
use crate::supervisor::{self, Command, Driver, Submitter, Whereabouts};
use crate::sys::prefault::Prefault;
use crate::sys::proc;
use crate::transport::codec::Codec;
use crate::transport::wire;
use crate::worker::call::Call;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

/// State shared by every handle of one pool.
///
/// Dropping the last `Arc<Shared>` terminates the pool (see `Drop`).
pub(crate) struct Shared {
    pub(crate) submitter: Submitter,
    /// Lets a waiting caller step the supervisor itself (see `supervisor::drive`).
    pub(crate) driver: Arc<Driver>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: Arc<PoolConfig>,
    closed: AtomicBool,
    /// The bounded queue, with `queue_capacity`.
    gate: Option<Arc<Gate>>,
    /// The next job id; shared with every [`Feed`].
    next_id: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Faulted-in buffers for the big byte strings of results (`prefault.rs`).
    pub(crate) prefault: Prefault,
    /// How arguments and results become bytes (`PoolBuilder::codec`).
    pub(crate) codec: Codec,
    /// Each queue's most workers as last resized, to keep resizes within
    /// the fork server's table.
    maxes: Mutex<Vec<usize>>,
    /// Where the pool's events go (`control/events.rs`).
    pub(crate) events: Arc<Bus>,
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
        let events = Arc::new(Bus::default());
        let (submitter, driver, thread) = supervisor::start(
            config.clone(),
            counters.clone(),
            throttles,
            prefault.spares().clone(),
            events.clone(),
        )?;
        let gate = config.queue_capacity.map(Gate::new);
        let maxes = config.queues.iter().map(|q| q.max_workers).collect();
        Ok(Arc::new(Shared {
            submitter,
            driver: Arc::new(driver),
            counters,
            config,
            closed: AtomicBool::new(false),
            gate,
            next_id: Arc::new(AtomicU64::new(1)),
            thread: Mutex::new(Some(thread)),
            prefault,
            codec,
            maxes: Mutex::new(maxes),
            events,
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

    /// Places for `n` jobs in the bounded queue, waiting for room: `Ok(None)`
    /// when the queue is unbounded, `Err` once the pool is closed.
    pub(crate) fn admit(&self, n: u64) -> Result<Option<Ticket>, Refused> {
        let Some(gate) = &self.gate else {
            return Ok(None);
        };
        // Before blocking on a full queue, make sure the supervisor is
        // awake to drain it: a quiet submitter may be the only one who
        // would otherwise have stepped it.
        gate.try_acquire(n)
            .or_else(|_| {
                self.submitter.nudge();
                gate.acquire(n)
            })
            .map(Some)
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
        if self.events.watching() {
            let events = self.events.clone();
            slot.set_finisher(Box::new(move |outcome| {
                events.ended(id, name, &outcome);
                outcome
            }));
        }
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
        if self.gate.is_some() && batch.ticket.is_none() {
            match self.admit(u64::from(batch.count())) {
                Ok(t) => batch.ticket = t.map(Box::new),
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

    /// A way to submit that does not hold the pool (see [`Feed`]).
    pub(crate) fn feed(&self) -> Feed {
        Feed {
            submitter: self.submitter.clone(),
            driver: Arc::downgrade(&self.driver),
            counters: self.counters.clone(),
            config: self.config.clone(),
            next_id: self.next_id.clone(),
            events: self.events.clone(),
        }
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

    /// A snapshot of the pool, with each worker's resident memory read
    /// here (not on the supervisor's thread). An empty one if the
    /// supervisor is gone.
    pub(crate) fn snapshot(&self) -> Inspection {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self
            .submitter
            .send(Command::Snapshot { reply: tx })
            .is_err()
        {
            return Inspection::default();
        }
        let mut snap = rx.recv().unwrap_or_default();
        for w in snap.workers.iter_mut().filter(|w| w.pid != 0) {
            w.rss_bytes = proc::rss_bytes(w.pid);
        }
        snap
    }

    /// Revokes job `id` (see `supervisor/revoke.rs`).
    pub(crate) fn revoke(&self, id: JobId, terminate: bool) -> Revoked {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cmd = Command::Revoke {
            id,
            terminate,
            reply: tx,
        };
        if self.submitter.send(cmd).is_err() {
            return Revoked::NotFound;
        }
        rx.recv().unwrap_or(Revoked::NotFound)
    }

    /// Tells the supervisor that job `id`, cancelled before dispatch, can
    /// be dropped from its timers.
    pub(crate) fn discard(&self, id: JobId) {
        let _ = self.submitter.send(Command::Discard(id));
    }

    /// Asks the supervisor to take back, unrun, what workers hold of
    /// batches their callers gave up on (does not wait).
    pub(crate) fn recall_declined(&self) {
        let _ = self.submitter.send(Command::RecallDeclined(None));
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

/// What a submission needs, without the pool: the command queue (and the
/// driver, to hand over to the supervisor thread), the counters, the
/// settings and the id source.
///
/// It is what code running on the supervisor's thread holds — a retry's
/// sink, a workflow's coordinator — since holding the pool there would keep
/// it alive, and dropping the last handle there would end it from the
/// thread it must join. A `Feed` never blocks: it does not wait for room in
/// a bounded queue (its jobs were admitted once, or belong to a workflow
/// that was), and after the supervisor is gone its batches come back to
/// the caller, counted as cancelled.
#[derive(Clone)]
pub(crate) struct Feed {
    pub(crate) submitter: Submitter,
    /// Weak: a workflow's handle that outlives its pool must not keep the
    /// supervisor's state (its descriptors) alive.
    driver: Weak<Driver>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: Arc<PoolConfig>,
    next_id: Arc<AtomicU64>,
    /// Where the pool's events go.
    pub(crate) events: Arc<Bus>,
}

impl Feed {
    /// A fresh job id, from the pool's sequence.
    pub(crate) fn next_job_id(&self) -> JobId {
        JobId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a batch, counted as submitted, without waking the supervisor
    /// thread: the caller [`hand_over`](Self::hand_over)s once it has sent
    /// what it had to (a thread stepping the supervisor — its own thread, or
    /// a caller helping — takes the batch on its next step anyway, and a
    /// chain of quick jobs then never wakes a sleeping thread). If the
    /// supervisor is gone the batch comes back, its items counted as
    /// cancelled: dropping it resolves them (the caller chooses where: a
    /// drop runs the items' finishers, which must not run under the
    /// caller's locks).
    pub(crate) fn send_quiet(&self, batch: Batch) -> Result<(), Batch> {
        let n = u64::from(batch.count());
        self.counters.submitted.fetch_add(n, Ordering::Relaxed);
        match self.submitter.send_quiet(Command::Submit(batch)) {
            Ok(()) => Ok(()),
            Err(cmd) => {
                self.counters.cancelled.fetch_add(n, Ordering::Relaxed);
                let Command::Submit(batch) = cmd else {
                    unreachable!("the command sent was a Submit");
                };
                Err(batch)
            }
        }
    }

    /// Takes one supervisor step on this thread (see `Driver::step_once`):
    /// for a caller that sends many batches, as `map` does, so workers
    /// start on the first while it prepares the next. It must
    /// [`hand_over`](Self::hand_over) before it blocks.
    pub(crate) fn step_once(&self) {
        if let Some(driver) = self.driver.upgrade() {
            driver.step_once();
        }
    }

    /// After quiet sends: wakes the supervisor thread if nobody is stepping
    /// the supervisor to take them (see `Driver::hand_over`). From the
    /// thread that steps it — inside a step, where a job's outcome is
    /// delivered — this costs a failed `try_lock`.
    pub(crate) fn hand_over(&self) {
        if let Some(driver) = self.driver.upgrade() {
            driver.hand_over();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
        self.shutdown(Command::Terminate);
    }
}
