//! The per-pool state of the layers above the core, and their pool-wide
//! settings on [`PoolBuilder`](crate::PoolBuilder).
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
use std::sync::Arc;
use std::time::Duration;

/// How long finished results of detached jobs are kept by default: one
/// day, as Celery's `result_expires`.
pub(crate) const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(24 * 60 * 60);

/// The layers' settings, as given to the builder.
#[derive(Debug, Clone)]
pub(crate) struct LayerSettings {
    pub(crate) result_expires: Duration,
    pub(crate) retry: Option<RetryPolicy>,
    /// `(function address, limit)`.
    pub(crate) rate_limits: Vec<(usize, RateLimit)>,
    pub(crate) progress_bar: bool,
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
