//! [`PoolBuilder`]: every setting of a pool, checked once in
//! [`build`](PoolBuilder::build).
//!
//! The builder only collects values. `build` validates them into the
//! crate-private [`PoolConfig`] (with the [`WorkerConfig`] the forked
//! children see) and the job options' [`LayerSettings`], so a bad setting
//! is an [`Error::InvalidConfig`] naming it, before anything is forked.

use super::Pool;
use crate::config::{PoolConfig, WorkerConfig};
use crate::error::Error;
use crate::options::LayerSettings;
use crate::options::rate::RateLimit;
use crate::options::retry::RetryPolicy;
use crate::transport::shm;
use crate::transport::wire;
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
    workers: Option<usize>,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    max_tasks_per_worker: Option<usize>,
    max_memory_per_worker: Option<u64>,
    initializer: Option<fn()>,
    chunk_size: Option<usize>,
    max_message_size: u64,
    /// Settings of the job options (retries, results, rate limits,
    /// progress bar): see `options/mod.rs`.
    layers: LayerSettings,
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
    /// killed and replaced, and the job fails with [`JobError::TimedOut`](crate::JobError::TimedOut).
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
    pub fn rate_limit<A, R>(mut self, f: fn(A) -> R, limit: RateLimit) -> Self {
        self.layers.rate_limits.push((f as usize, limit));
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

    /// Forks the fork server and starts the pool.
    pub fn build(mut self) -> Result<Pool, Error> {
        let layers = std::mem::take(&mut self.layers);
        layers.validate()?;
        let config = self.validate()?;
        Pool::start(config, layers)
    }

    fn validate(self) -> Result<PoolConfig, Error> {
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
