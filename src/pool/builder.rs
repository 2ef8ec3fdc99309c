//! [`PoolBuilder`]: every setting of a pool, checked once in
//! [`build`](PoolBuilder::build).
//!
//! The builder only collects values. `build` validates them into the
//! crate-private [`PoolConfig`] (with the [`WorkerConfig`] the forked
//! children see) and the job options' [`LayerSettings`], so a bad setting
//! is an [`Error::InvalidConfig`] naming it, before anything is forked.

use super::Pool;
use super::queue::Queue;
use crate::config::{DEFAULT_QUEUE, PoolConfig, WorkerConfig};
use crate::error::Error;
use crate::options::LayerSettings;
use crate::options::rate::RateLimit;
use crate::options::retry::RetryPolicy;
use crate::transport::codec::Codec;
use crate::transport::shm;
use crate::transport::wire;
use crate::worker::call::Func;
use std::fmt;
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
    /// The default queue's settings, which the other queues inherit.
    default: Queue,
    /// The other queues, in the order they were given.
    queues: Vec<(String, Queue)>,
    /// `(function address, queue name)`.
    routes: Vec<(usize, String)>,
    initializer: Option<fn()>,
    chunk_size: Option<usize>,
    max_message_size: u64,
    /// Settings of the job options (retries, results, rate limits,
    /// progress bar): see `options/mod.rs`.
    layers: LayerSettings,
    queue_capacity: Option<u64>,
    standby: Option<bool>,
    codec: Codec,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("default", &self.default)
            .field("queues", &self.queues)
            .field("routes", &self.routes.len())
            .field("initializer", &self.initializer.is_some())
            .field("chunk_size", &self.chunk_size)
            .field("max_message_size", &self.max_message_size)
            .field("layers", &self.layers)
            .field("queue_capacity", &self.queue_capacity)
            .field("standby", &self.standby)
            .field("codec", &self.codec)
            .finish()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            default: Queue::default(),
            queues: Vec::new(),
            routes: Vec::new(),
            initializer: None,
            chunk_size: None,
            max_message_size: wire::DEFAULT_MAX_MESSAGE,
            layers: LayerSettings::default(),
            queue_capacity: None,
            standby: None,
            codec: Codec::default(),
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes. Default: the number of CPUs.
    pub fn workers(mut self, n: usize) -> Self {
        self.default.workers = Some((n, n));
        self
    }

    /// Between `min` and `max` workers in the default queue, following the
    /// load (see [`Queue::autoscale`](crate::Queue::autoscale)).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::builder().autoscale(1, 8).build()?;
    /// assert_eq!(pool.apply(|x: u32| x + 1, 1), Ok(2));
    /// # Ok(()) }
    /// ```
    pub fn autoscale(mut self, min: usize, max: usize) -> Self {
        self.default.workers = Some((min, max));
        self
    }

    /// How long an idle worker beyond its queue's minimum stays (every
    /// queue that sets none). Default: 10 s.
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        self.default.keep_alive = Some(idle);
        self
    }

    /// Priority aging of every queue that sets none (see
    /// [`Queue::aging`](crate::Queue::aging)). Default: none, priorities
    /// are strict.
    pub fn aging(mut self, every: Duration) -> Self {
        self.default.aging = Some(every);
        self
    }

    /// Adds a named queue with workers of its own. Jobs go to it when they
    /// name it ([`Job::queue`](crate::Job::queue),
    /// [`Pool::queue`](crate::Pool::queue)) or when their function is
    /// [routed](Self::route) to it; every other job goes to the queue
    /// called `"default"`, whose settings are the builder's own.
    ///
    /// ```
    /// use forkpool::{Pool, Queue};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = Pool::builder()
    ///     .workers(2)
    ///     .queue("slow", Queue::new().workers(1))
    ///     .build()?;
    /// assert_eq!(pool.queue("slow")?.apply(|x: u8| x * 2, 21), Ok(42));
    /// # Ok(()) }
    /// ```
    pub fn queue(mut self, name: impl Into<String>, settings: Queue) -> Self {
        self.queues.push((name.into(), settings));
        self
    }

    /// Sends every job of function `f` that names no queue to queue
    /// `queue` (Celery's `task_routes`). A route to a queue the pool does
    /// not have makes [`build`](Self::build) fail.
    pub fn route<F, A, R>(mut self, f: F, queue: impl Into<String>) -> Self
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: 'static,
        R: 'static,
    {
        self.routes.push((Func::of(f).ptr as usize, queue.into()));
        self
    }

    /// Hard time limit per job (per item of a `map`): past it the worker is
    /// killed and replaced, and the job fails with [`JobError::TimedOut`](crate::JobError::TimedOut).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.default.time_limit = Some(limit);
        self
    }

    /// Soft time limit per job: past it,
    /// [`soft_time_limit_exceeded`](crate::soft_time_limit_exceeded) turns
    /// true inside the job so it can stop cleanly. Must not exceed the hard limit.
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.default.soft_time_limit = Some(limit);
        self
    }

    /// Replace each worker after it has run this many jobs (map items count
    /// one each), like `maxtasksperchild`. `1` runs every job in a fresh process.
    pub fn max_tasks_per_worker(mut self, n: usize) -> Self {
        self.default.max_tasks_per_worker = Some(n);
        self
    }

    /// Replace a worker whose resident memory is above `bytes` after a job:
    /// the job's result is delivered first.
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.default.max_memory_per_worker = Some(bytes);
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
    /// A bigger one fails its job alone with [`JobError::TooLarge`](crate::JobError::TooLarge).
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
    /// fail with [`JobError::PoolClosed`](crate::JobError::PoolClosed). Jobs already handed to workers
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

    /// The retry policy of every job that does not set its own (with
    /// [`Job::retry`](crate::Job::retry)), [`Pool::submit`](crate::Pool::submit)
    /// and [`Pool::apply`](crate::Pool::apply) included. `map` items are
    /// not retried. Default: no retries.
    ///
    /// ```
    /// use forkpool::{Pool, RetryPolicy, RetryOn};
    /// use std::time::Duration;
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = Pool::builder()
    ///     .workers(2)
    ///     .retry(RetryPolicy::new(3).backoff(Duration::from_millis(100)).on(RetryOn::CRASHED))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.layers.retry = Some(policy);
        self
    }

    /// How long the finished result of a detached job
    /// ([`Job::detach`](crate::Job::detach)) is kept for
    /// [`Pool::take_result`](crate::Pool::take_result). Default: one day.
    pub fn result_expires(mut self, keep: Duration) -> Self {
        self.layers.result_expires = keep;
        self
    }

    /// Limits how fast jobs of function `f` start, across all workers
    /// (the same as [`Pool::set_rate_limit`](crate::Pool::set_rate_limit)
    /// right after building).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn call_api(id: u32) -> u32 { id }
    /// let pool = forkpool::Pool::builder()
    ///     .workers(2)
    ///     .rate_limit(call_api, "10/s".parse()?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn rate_limit<F, A, R>(mut self, f: F, limit: RateLimit) -> Self
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: 'static,
        R: 'static,
    {
        self.layers
            .rate_limits
            .push((Func::of(f).ptr as usize, limit));
        self
    }

    /// Whether `map`, `imap` and `imap_unordered` draw a progress bar on
    /// stderr (items done, rate, time left). Default: no. The bar is drawn
    /// only when stderr is a terminal, and only with the `progress-bar`
    /// cargo feature (on by default); otherwise this does nothing.
    pub fn progress_bar(mut self, show: bool) -> Self {
        self.layers.progress_bar = show;
        self
    }

    /// How arguments and results become bytes. Default:
    /// [`Codec::Bincode`] (bincode 1.3, the fastest between forks of one
    /// program); [`Codec::available`] lists what the crate's features
    /// compiled in (`postcard`, `json`, `msgpack`). A value the codec
    /// cannot encode or decode fails its job alone with
    /// [`JobError::Codec`](crate::JobError::Codec).
    ///
    /// ```
    /// use forkpool::{Codec, Pool};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = Pool::builder().workers(1).codec(Codec::Bincode).build()?;
    /// assert_eq!(pool.codec(), Codec::Bincode);
    /// assert_eq!(pool.apply(|s: String| s.len(), "four".into()), Ok(4));
    /// # Ok(()) }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Forks the fork server and starts the pool.
    pub fn build(mut self) -> Result<Pool, Error> {
        let layers = std::mem::take(&mut self.layers);
        layers.validate()?;
        let codec = self.codec;
        let config = self.validate()?;
        Pool::start(config, layers, codec)
    }

    fn validate(self) -> Result<PoolConfig, Error> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
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
        let worker = WorkerConfig {
            initializer: self.initializer,
            max_message_size: self.max_message_size,
            max_memory_per_worker: None,
            ring_size: shm::DEFAULT_RING,
        };
        let cpus = num_cpus::get();
        let mut queues = vec![
            self.default
                .resolve(DEFAULT_QUEUE, &self.default, &worker, cpus)?,
        ];
        for (name, settings) in &self.queues {
            if name.is_empty() {
                return bad("a queue needs a name".into());
            }
            if queues.iter().any(|q| &q.name == name) {
                return bad(format!("two queues are called {name:?}"));
            }
            queues.push(settings.resolve(name, &self.default, &worker, cpus)?);
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (func, name) in &self.routes {
            let Some(q) = queues.iter().position(|q| &q.name == name) else {
                return bad(format!(
                    "a function is routed to queue {name:?}, which the pool does not have"
                ));
            };
            routes.retain(|&(f, _)| f != *func);
            routes.push((*func, q));
        }
        Ok(PoolConfig {
            queues,
            routes,
            chunk_size: self.chunk_size,
            queue_capacity: self.queue_capacity,
            standby: self.standby,
            max_message_size: self.max_message_size,
        })
    }
}
