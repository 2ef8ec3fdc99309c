//! The per-pool state of the layers above the core, and their pool-wide
//! settings on [`PoolBuilder`].
//!
//! The core (supervisor, workers, batches) knows nothing of Celery-style
//! options. The layers that provide them — job signatures
//! (`signature.rs`), retries (`retry.rs`), callbacks (`callbacks.rs`),
//! results by id (`results.rs`), rate limits (`rate.rs`), progress
//! (`progress.rs`, `progress_bar.rs`) — talk to it only through batches,
//! sinks, job options and throttles, and keep what they need here.
//!
//! Nothing here holds the pool itself: the last `Pool` handle dropping
//! still terminates it.

pub(crate) mod callbacks;
pub(crate) mod rate;
pub(crate) mod results;
pub(crate) mod retry;
pub(crate) mod signature;

use crate::batch::throttle::Throttles;
use crate::error::Error;
use crate::options::callbacks::Callbacks;
use crate::options::rate::{RateLimit, RateLimits};
use crate::options::results::Store;
use crate::options::retry::RetryPolicy;
use crate::pool::PoolBuilder;
use std::sync::Arc;
use std::time::Duration;

/// How long finished results of detached jobs are kept by default: one
/// day, as Celery's `result_expires`.
pub(crate) const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(24 * 60 * 60);

/// The layers' settings, as given to the builder.
#[derive(Debug, Clone)]
pub(crate) struct LayerSettings {
    result_expires: Duration,
    retry: Option<RetryPolicy>,
    /// `(function address, limit)`.
    rate_limits: Vec<(usize, RateLimit)>,
    progress_bar: bool,
}

impl Default for LayerSettings {
    fn default() -> Self {
        LayerSettings {
            result_expires: DEFAULT_RESULT_EXPIRES,
            retry: None,
            rate_limits: Vec::new(),
            progress_bar: false,
        }
    }
}

impl LayerSettings {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.result_expires.is_zero() {
            return Err(Error::InvalidConfig(
                "result_expires must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// The layers' live state, owned by the pool's shared state.
pub(crate) struct Layers {
    /// Finished results of detached jobs, by id.
    pub store: Arc<Store>,
    /// The thread that runs success and error callbacks.
    pub callbacks: Callbacks,
    /// Per-function rate limits.
    pub rates: RateLimits,
    /// The retry policy of jobs that set none.
    pub retry: Option<RetryPolicy>,
    /// Whether `map` and `imap` draw a progress bar.
    pub progress_bar: bool,
}

impl Layers {
    pub(crate) fn new(settings: LayerSettings, throttles: Arc<Throttles>) -> Layers {
        let rates = RateLimits::new(throttles);
        for (func, limit) in settings.rate_limits {
            rates.set(func, Some(limit));
        }
        Layers {
            store: Arc::new(Store::new(settings.result_expires)),
            callbacks: Callbacks::default(),
            rates,
            retry: settings.retry,
            progress_bar: settings.progress_bar,
        }
    }
}

/// Pool-wide defaults of the job options.
impl PoolBuilder {
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
}
