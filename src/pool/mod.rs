//! [`Pool`] and [`PoolBuilder`]: the calls a user makes.
//!
//! A `Pool` is a cheap handle (clone it, share it across threads); the last
//! handle to go terminates the pool. Building one forks the fork server and
//! starts the supervisor thread; the workers come up in the background and
//! jobs submitted meanwhile wait for them.

use crate::batch::gate::{Gate, Refused, Ticket};
use crate::batch::slot::Slot;
use crate::batch::throttle::Throttles;
use crate::batch::{Batch, JobId, JobOpts};
use crate::client::handle::JobHandle;
use crate::client::map::{self, Imap, ImapUnordered};
use crate::config::{PoolConfig, WorkerConfig};
use crate::error::{Error, JobError, TrySubmitError};
use crate::metrics::stats::{Counters, Stats};
use crate::options::{LayerSettings, Layers};
use crate::supervisor::{self, Command, Driver, Submitter, Whereabouts};
use crate::sys::prefault::Prefault;
use crate::transport::codec;
use crate::transport::shm;
use crate::transport::wire;
use crate::worker::call::Call;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Configures and builds a [`Pool`].
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::builder()
///     .workers(2)
///     .time_limit(Duration::from_secs(30))
///     .max_tasks_per_worker(1000)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct PoolBuilder {
    workers: Option<usize>,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    max_tasks_per_worker: Option<usize>,
    max_memory_per_worker: Option<u64>,
    initializer: Option<fn()>,
    chunk_size: Option<usize>,
    max_message_size: u64,
    /// Settings of the layers above the core (retries, results, rate
    /// limits, progress bar): see `layers.rs`.
    pub(crate) layers: LayerSettings,
    queue_capacity: Option<u64>,
    standby: Option<bool>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("time_limit", &self.time_limit)
            .field("soft_time_limit", &self.soft_time_limit)
            .field("max_tasks_per_worker", &self.max_tasks_per_worker)
            .field("max_memory_per_worker", &self.max_memory_per_worker)
            .field("initializer", &self.initializer.is_some())
            .field("chunk_size", &self.chunk_size)
            .field("max_message_size", &self.max_message_size)
            .field("layers", &self.layers)
            .field("queue_capacity", &self.queue_capacity)
            .field("standby", &self.standby)
            .finish()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: None,
            time_limit: None,
            soft_time_limit: None,
            max_tasks_per_worker: None,
            max_memory_per_worker: None,
            initializer: None,
            chunk_size: None,
            max_message_size: wire::DEFAULT_MAX_MESSAGE,
            layers: LayerSettings::default(),
            queue_capacity: None,
            standby: None,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes. Default: the number of CPUs.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Hard time limit per job (per item of a `map`): past it the worker is
    /// killed and replaced, and the job fails with [`JobError::TimedOut`].
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Soft time limit per job: past it,
    /// [`soft_time_limit_exceeded`](crate::soft_time_limit_exceeded) turns
    /// true inside the job so it can stop cleanly. Must not exceed the hard limit.
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }

    /// Replace each worker after it has run this many jobs (map items count
    /// one each), like `maxtasksperchild`. `1` runs every job in a fresh process.
    pub fn max_tasks_per_worker(mut self, n: usize) -> Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Replace a worker whose resident memory is above `bytes` after a job:
    /// the job's result is delivered first.
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.max_memory_per_worker = Some(bytes);
        self
    }

    /// A function every worker runs once when it starts (replacements too),
    /// before its first job.
    pub fn initializer(mut self, init: fn()) -> Self {
        self.initializer = Some(init);
        self
    }

    /// Items per batch for `map`, `imap` and `imap_unordered`. Default:
    /// automatic (about four batches per worker for `map`, one item for the
    /// `imap`s).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// Largest encoded argument or result accepted, in bytes (default 1 GiB).
    /// A bigger one fails its job alone with [`JobError::TooLarge`].
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Bounds the jobs waiting for a worker (submitted, not yet handed to
    /// one; `map` items count one each). Default: unbounded.
    ///
    /// When `n` jobs wait, [`Pool::submit`], [`Pool::apply`], `map` and the
    /// `imap`s block until workers take some, and [`Pool::try_submit`]
    /// gives the argument back with [`TrySubmitError::Full`]. A batch of
    /// more than `n` items is admitted alone, when nothing waits. A blocked
    /// submitter wakes when the pool is closed or terminated, and its jobs
    /// fail with [`JobError::PoolClosed`]. Jobs already handed to workers
    /// (a few per worker are queued in its ring) do not count.
    ///
    /// [`TrySubmitError::Full`]: crate::TrySubmitError::Full
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n as u64);
        self
    }

    /// Whether to keep one spare worker forked, initialised and asleep, so
    /// that a worker lost to a crash, a time limit, a cancellation or a task
    /// or memory limit is replaced at once instead of after a fork.
    ///
    /// Default: automatic. A pool starts keeping a spare once it first
    /// replaces a worker, so a pool whose workers never die never pays for
    /// the extra process (which sleeps, and shares its memory with the fork
    /// server until it writes). `true` keeps a spare from the start, `false`
    /// never. The spare is not counted in
    /// [`Stats::live_workers`](crate::Stats::live_workers) but in
    /// [`Stats::standby_workers`](crate::Stats::standby_workers); it runs
    /// the [`initializer`](Self::initializer) like any worker.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::builder().workers(2).standby_worker(true).build()?;
    /// assert_eq!(pool.apply(|x: u32| x + 1, 1), Ok(2));
    /// # Ok(()) }
    /// ```
    pub fn standby_worker(mut self, keep: bool) -> Self {
        self.standby = Some(keep);
        self
    }

    /// Forks the fork server and starts the pool.
    pub fn build(mut self) -> Result<Pool, Error> {
        let layers = std::mem::take(&mut self.layers);
        layers.validate()?;
        let config = self.validate()?;
        Pool::start(config, layers)
    }

    pub(crate) fn validate(self) -> Result<PoolConfig, Error> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let workers = self.workers.unwrap_or_else(num_cpus::get);
        if workers == 0 {
            return bad("workers must be at least 1".into());
        }
        if self.time_limit == Some(Duration::ZERO) || self.soft_time_limit == Some(Duration::ZERO) {
            return bad("time limits must be above zero".into());
        }
        if let (Some(soft), Some(hard)) = (self.soft_time_limit, self.time_limit)
            && soft > hard
        {
            return bad(format!(
                "soft_time_limit ({soft:?}) is above time_limit ({hard:?})"
            ));
        }
        if self.max_tasks_per_worker == Some(0) {
            return bad("max_tasks_per_worker must be at least 1".into());
        }
        if self.max_memory_per_worker == Some(0) {
            return bad("max_memory_per_worker must be above zero".into());
        }
        if self.chunk_size == Some(0) {
            return bad("chunk_size must be at least 1".into());
        }
        if self.queue_capacity == Some(0) {
            return bad("queue_capacity must be at least 1".into());
        }
        let cap_max = u64::from(u32::MAX) - 64;
        if !(1024..=cap_max).contains(&self.max_message_size) {
            return bad(format!(
                "max_message_size must be between 1 KiB and {cap_max} bytes"
            ));
        }
        Ok(PoolConfig {
            workers,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            max_tasks_per_worker: self.max_tasks_per_worker,
            chunk_size: self.chunk_size,
            queue_capacity: self.queue_capacity,
            standby: self.standby,
            worker: WorkerConfig {
                initializer: self.initializer,
                max_message_size: self.max_message_size,
                max_memory_per_worker: self.max_memory_per_worker,
                ring_size: shm::DEFAULT_RING,
            },
        })
    }
}

/// A pool of forked worker processes.
///
/// Cloning gives another handle to the same pool; the pool is terminated
/// when the last handle is dropped (or by [`terminate`](Pool::terminate) /
/// [`join`](Pool::join) on any of them). `Pool` is `Send + Sync`.
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.shared.config.workers)
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

/// State shared by every handle of one pool.
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
    /// State of the layers above the core (results, callbacks, rate limits).
    pub(crate) layers: Layers,
    /// Faulted-in buffers for the big byte strings of results (`prefault.rs`).
    pub(crate) prefault: Prefault,
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops taking jobs: refuses new ones and wakes blocked submitters.
    fn close(&self) {
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
    fn shutdown(&self, cmd: Command) -> bool {
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

impl Pool {
    /// A pool of `workers` processes with default settings.
    pub fn new(workers: usize) -> Result<Pool, Error> {
        Pool::builder().workers(workers).build()
    }

    /// A builder for a pool with more settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    fn start(config: PoolConfig, layers: LayerSettings) -> Result<Pool, Error> {
        let config = Arc::new(config);
        let counters = Arc::new(Counters::default());
        let throttles = Arc::new(Throttles::default());
        let layers = Layers::new(layers, throttles.clone());
        let prefault = Prefault::new();
        let (submitter, driver, thread) = supervisor::start(
            config.clone(),
            counters.clone(),
            throttles,
            prefault.spares().clone(),
        )?;
        let gate = config.queue_capacity.map(Gate::new);
        Ok(Pool {
            shared: Arc::new(Shared {
                submitter,
                driver,
                counters,
                config,
                closed: AtomicBool::new(false),
                gate,
                next_id: AtomicU64::new(1),
                thread: Mutex::new(Some(thread)),
                layers,
                prefault,
            }),
        })
    }

    /// Number of workers the pool keeps running.
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// Runs `f(arg)` in a worker; returns at once with a handle to the result.
    ///
    /// Submitting to a closed pool gives a handle that resolves to
    /// [`JobError::PoolClosed`]. With a
    /// [`queue_capacity`](PoolBuilder::queue_capacity), this blocks while
    /// the queue is full.
    /// The pool's default retry policy ([`PoolBuilder::retry`]) applies; for
    /// other options, build the job with [`Pool::job`].
    pub fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> JobHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_job(f, arg, false, None)
    }

    /// Like [`submit`](Pool::submit), but never blocks: when
    /// [`queue_capacity`](PoolBuilder::queue_capacity) jobs already wait,
    /// or the pool is closed, the argument comes back in the error.
    ///
    /// ```
    /// use forkpool::{Pool, TrySubmitError};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    /// let pool = Pool::builder().workers(1).queue_capacity(1).build()?;
    /// let mut handles = Vec::new();
    /// let mut arg = 50;
    /// loop {
    ///     match pool.try_submit(nap, arg) {
    ///         Ok(h) => handles.push(h),
    ///         Err(TrySubmitError::Full(back)) => { arg = back; break } // do something else
    ///         Err(e) => panic!("{e}"),
    ///     }
    /// }
    /// assert_eq!(arg, 50);
    /// for h in handles { assert_eq!(h.get(), Ok(50)); }
    /// # Ok(()) }
    /// ```
    pub fn try_submit<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<JobHandle<R>, TrySubmitError<A>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        if self.shared.is_closed() {
            return Err(TrySubmitError::Closed(arg));
        }
        let ticket = match &self.shared.gate {
            None => None,
            Some(gate) => match gate.try_acquire(1) {
                Ok(t) => Some(t),
                Err(Refused::Full) => return Err(TrySubmitError::Full(arg)),
                Err(Refused::Closed) => return Err(TrySubmitError::Closed(arg)),
            },
        };
        Ok(self.submit_job(f, arg, false, ticket))
    }

    fn submit_job<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        quiet: bool,
        ticket: Option<Ticket>,
    ) -> JobHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        if self.shared.layers.retry.is_some() {
            return self.job(f).submit_admitted(arg, ticket, quiet);
        }
        let shared = &self.shared;
        let id = JobId(shared.next_id.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(Slot::new(id));
        let handle = JobHandle::new(slot.clone(), Arc::downgrade(shared));
        if shared.is_closed() {
            slot.resolve(Err(JobError::PoolClosed));
            return handle;
        }
        let mut items = Vec::new();
        let encoded = wire::push_item(&mut items, |v| codec::encode_into(v, &arg));
        let cap = shared.config.worker.max_message_size;
        let refused = match encoded {
            Err(e) => Some(JobError::Codec(format!("argument: {e}"))),
            Ok(len) if len as u64 > cap => Some(JobError::TooLarge {
                size: len as u64,
                limit: cap,
            }),
            Ok(_) => None,
        };
        if let Some(error) = refused {
            shared.counters.submitted.fetch_add(1, Ordering::Relaxed);
            shared.counters.count_error(&error, 1);
            slot.resolve(Err(error));
            return handle;
        }
        let mut batch = Batch::new(
            Call::new(f),
            items,
            1,
            0,
            slot,
            JobOpts::limits(&shared.config),
            Some(id),
        );
        batch.ticket = ticket.map(Box::new);
        shared.submit(batch, quiet);
        handle
    }

    /// Runs `f(arg)` in a worker and waits for the result.
    ///
    /// The calling thread hands the job to a worker and collects the answer
    /// itself while it waits (for a short, adaptive while), so a quick job
    /// costs no thread wake-up.
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, JobError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_job(f, arg, true, None).get()
    }

    /// Runs `f` on every item, in parallel, and returns the results in
    /// input order.
    ///
    /// Every item runs even if some fail; then the lowest failing item is
    /// reported as [`Error::Job`]. Items are sent in batches
    /// ([`PoolBuilder::chunk_size`]), but each one succeeds or fails alone:
    /// if a worker dies mid-batch, the items it finished keep their
    /// results, the one it was running is charged, and the rest run on
    /// another worker.
    ///
    /// The input is read only as fast as workers take it: at most a few
    /// MiB of encoded arguments per worker are out at once, so an input of
    /// any length costs memory for its results only.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        map::map(self, f, items)
    }

    /// Like [`map`](Pool::map), but lazy: an iterator of each item's result,
    /// in input order. It pulls input only as results are consumed, with a
    /// bounded number of items in flight, so an endless input runs in flat
    /// memory. Dropping the iterator cancels the items not yet started.
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self.clone(), f, items.into_iter())
    }

    /// Like [`imap`](Pool::imap), but results come in the order they finish.
    pub fn imap_unordered<A, R, I>(&self, f: fn(A) -> R, items: I) -> ImapUnordered<I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        ImapUnordered::new(self.clone(), f, items.into_iter())
    }

    /// Stops accepting jobs. Jobs already submitted still run; submitting
    /// afterwards gives [`JobError::PoolClosed`].
    pub fn close(&self) {
        self.shared.close();
        let _ = self.shared.submitter.send(Command::Close);
    }

    /// Closes the pool, waits for every submitted job to finish, then for
    /// the workers to exit.
    ///
    /// Jobs waiting for a countdown, an ETA or a retry are waited for too
    /// (cancel them, or use [`terminate`](Pool::terminate), not to wait),
    /// and so are the success and error callbacks of finished jobs.
    pub fn join(self) -> Result<(), Error> {
        self.close();
        let ended = self.shared.shutdown(Command::Join);
        self.shared.layers.callbacks.finish();
        if ended {
            Ok(())
        } else {
            Err(Error::Io(std::io::Error::other(
                "the pool's supervisor thread panicked",
            )))
        }
    }

    /// Kills every worker now. Every job not finished resolves to
    /// [`JobError::Cancelled`]; nothing waits. Dropping the last handle of a
    /// pool does the same.
    pub fn terminate(self) {
        self.shared.close();
        self.shared.shutdown(Command::Terminate);
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }
}
