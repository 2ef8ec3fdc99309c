//! Retries: [`RetryPolicy`], [`RetryOn`], and the sink that resubmits a
//! failed job.
//!
//! A job with a policy keeps its encoded argument. When an attempt fails in
//! a way the policy retries — its worker crashed, it timed out, it
//! panicked, or (a fallible job) it returned `Err` — and retries are left,
//! the job is submitted again with a start time after the policy's delay:
//! it waits in the supervisor's timers, not in a worker. Otherwise the
//! failure is final and goes on to the job's handle, callbacks and stored
//! result. A retry that could only start after the job's expiry is not
//! made: the last failure stands.
//!
//! The delay follows Celery's `retry_backoff`: fixed, or exponential —
//! `base`, `2 × base`, `4 × base`, … — capped by `backoff_max` (default ten
//! minutes), and with `jitter` a uniformly random delay between zero and
//! that ("full jitter"), so that many jobs failing together do not retry
//! together.

use crate::batch::outcome;
use crate::batch::slot::Slot;
use crate::batch::{Batch, JobOpts, Outcome, Sink};
use crate::client::shared::Feed;
use crate::control::events::{Bus, EventKind};
use crate::error::JobError;
use crate::metrics::stats::Counters;
use crate::supervisor::{Command, Submitter};
use crate::sys::clock;
use crate::transport::wire::{self, Tag};
use crate::worker::call::Call;
use std::ops::BitOr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Which failures a [`RetryPolicy`] retries. Combine with `|`.
///
/// ```
/// use forkpool::RetryOn;
/// let transient = RetryOn::CRASHED | RetryOn::TIMED_OUT;
/// assert!(transient.contains(RetryOn::CRASHED));
/// assert!(!transient.contains(RetryOn::PANICKED));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "redis", derive(serde::Serialize, serde::Deserialize))]
pub struct RetryOn(u8);

impl RetryOn {
    /// The worker died under the job ([`JobError::Crashed`]).
    pub const CRASHED: RetryOn = RetryOn(1);
    /// The job ran past its hard time limit ([`JobError::TimedOut`]).
    pub const TIMED_OUT: RetryOn = RetryOn(2);
    /// The job panicked ([`JobError::Panicked`]).
    pub const PANICKED: RetryOn = RetryOn(4);
    /// A fallible job ([`Pool::try_job`](crate::Pool::try_job)) returned `Err`.
    pub const ERROR: RetryOn = RetryOn(8);
    /// All four.
    pub const ALL: RetryOn = RetryOn(15);

    /// Whether every failure in `other` is in `self`.
    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "redis", derive(serde::Serialize, serde::Deserialize))]
enum Delay {
    Fixed(Duration),
    Exponential(Duration),
}

/// When and how often a failed job is tried again.
///
/// ```
/// use forkpool::{RetryOn, RetryPolicy};
/// use std::time::Duration;
/// // Up to 5 retries, after 1 s, 2 s, 4 s, 8 s, 8 s (capped), each
/// // randomised between zero and that; only for crashes and timeouts.
/// let policy = RetryPolicy::new(5)
///     .backoff(Duration::from_secs(1))
///     .backoff_max(Duration::from_secs(8))
///     .jitter(true)
///     .on(RetryOn::CRASHED | RetryOn::TIMED_OUT);
/// assert_eq!(policy.delay_for(4), Duration::from_secs(8));
/// assert_eq!(policy.delay_for(5), Duration::from_secs(8));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "redis", derive(serde::Serialize, serde::Deserialize))]
pub struct RetryPolicy {
    max_retries: u32,
    delay: Delay,
    backoff_max: Duration,
    jitter: bool,
    on: RetryOn,
}

/// Celery's `retry_backoff_max`.
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(600);

impl RetryPolicy {
    /// Up to `max_retries` retries (so `max_retries + 1` attempts in all),
    /// on every kind of failure ([`RetryOn::ALL`]), with no delay.
    /// `RetryPolicy::new(0)` never retries.
    pub fn new(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            delay: Delay::Fixed(Duration::ZERO),
            backoff_max: DEFAULT_BACKOFF_MAX,
            jitter: false,
            on: RetryOn::ALL,
        }
    }

    /// Waits `delay` before each retry.
    pub fn delay(mut self, delay: Duration) -> RetryPolicy {
        self.delay = Delay::Fixed(delay);
        self
    }

    /// Waits `base` before the first retry, and twice as long before each
    /// next one, up to [`backoff_max`](Self::backoff_max) (Celery's
    /// `retry_backoff`).
    pub fn backoff(mut self, base: Duration) -> RetryPolicy {
        self.delay = Delay::Exponential(base);
        self
    }

    /// The longest exponential delay (Celery's `retry_backoff_max`).
    /// Default: ten minutes.
    pub fn backoff_max(mut self, max: Duration) -> RetryPolicy {
        self.backoff_max = max;
        self
    }

    /// Randomises each delay uniformly between zero and its value (Celery's
    /// `retry_jitter`). Default: off.
    pub fn jitter(mut self, on: bool) -> RetryPolicy {
        self.jitter = on;
        self
    }

    /// Retries only these failures. Default: [`RetryOn::ALL`].
    pub fn on(mut self, failures: RetryOn) -> RetryPolicy {
        self.on = failures;
        self
    }

    /// The most retries.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The delay before retry number `retry` (1 for the first), before any
    /// jitter.
    pub fn delay_for(&self, retry: u32) -> Duration {
        match self.delay {
            Delay::Fixed(d) => d,
            Delay::Exponential(base) => {
                let factor = 1u32
                    .checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX);
                base.checked_mul(factor)
                    .unwrap_or(Duration::MAX)
                    .min(self.backoff_max)
            }
        }
    }

    /// The delay before retry number `retry`, with jitter if the policy
    /// has it.
    pub(crate) fn delay_with_jitter(&self, retry: u32) -> Duration {
        let d = self.delay_for(retry);
        if !self.jitter || d.is_zero() {
            return d;
        }
        let ns = clock::ns(d);
        Duration::from_nanos(random() % ns.saturating_add(1))
    }

    /// Whether the policy retries `failure` (retries left or not).
    pub(crate) fn retries(&self, failure: RetryOn) -> bool {
        self.on.contains(failure)
    }
}

/// A random number for jitter (splitmix64 over a counter and the clock):
/// spread, not secret.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(clock::coarse_ns())
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What kind of failure an outcome of one job is, as far as retries go.
pub(crate) fn classify(outcome: &Outcome) -> Option<RetryOn> {
    match outcome {
        Outcome::Records { buf, .. } => classify_tag(wire::records(buf).next()?.tag),
        Outcome::Failed { error, .. } => classify_error(error),
    }
}

/// What kind of failure a worker's record of one job is.
pub(crate) fn classify_tag(tag: Tag) -> Option<RetryOn> {
    match tag {
        Tag::Panic => Some(RetryOn::PANICKED),
        Tag::Err => Some(RetryOn::ERROR),
        _ => None,
    }
}

/// What kind of failure a job's error is.
pub(crate) fn classify_error(error: &JobError) -> Option<RetryOn> {
    match error {
        JobError::Crashed { .. } => Some(RetryOn::CRASHED),
        JobError::TimedOut { .. } => Some(RetryOn::TIMED_OUT),
        _ => None,
    }
}

/// The error an attempt failed with; `None` for a fallible job's own `Err`.
fn error_of(outcome: &Outcome) -> Option<JobError> {
    match outcome {
        Outcome::Records { buf, .. } => wire::records(buf).next().and_then(|r| match r.tag {
            Tag::Err => None,
            _ => outcome::outcome(r).err(),
        }),
        Outcome::Failed { error, .. } => Some(error.clone()),
    }
}

/// The sink of a single job with a retry policy: resubmits it after a
/// failure the policy retries, and passes its final outcome to its slot.
///
/// It runs on the supervisor's thread, so it resubmits through the command
/// queue (the supervisor takes it in on its next turn, and `join` waits
/// for it), holding the queue's sender — never the pool, which would keep
/// the pool alive, or end it on the wrong thread.
pub(crate) struct RetrySink {
    me: Weak<RetrySink>,
    slot: Arc<Slot>,
    policy: RetryPolicy,
    call: Call,
    /// The function's name, which every attempt carries.
    name: &'static str,
    /// The encoded argument, as one `[len][bytes]` item.
    item: Vec<u8>,
    opts: JobOpts,
    submitter: Submitter,
    counters: Arc<Counters>,
    events: Arc<Bus>,
}

impl RetrySink {
    pub(crate) fn new(
        feed: &Feed,
        slot: Arc<Slot>,
        policy: RetryPolicy,
        (call, name): (Call, &'static str),
        item: Vec<u8>,
        opts: JobOpts,
    ) -> Arc<RetrySink> {
        Arc::new_cyclic(|me| RetrySink {
            me: me.clone(),
            slot,
            policy,
            call,
            name,
            item,
            opts,
            submitter: feed.submitter.clone(),
            counters: feed.counters.clone(),
            events: feed.events.clone(),
        })
    }

    /// Submits the next attempt if the policy allows one. True if it did.
    /// (A workflow calls it for a job whose first attempt ran in a batch
    /// of many, with a fresh slot: see `canvas/segment.rs`.)
    pub(crate) fn try_again(&self, failure: RetryOn) -> bool {
        let retry = self.slot.attempts();
        if retry > self.policy.max_retries
            || !self.policy.retries(failure)
            || self.slot.is_ready()
            || self.slot.is_revoked()
        {
            return false;
        }
        let delay = self.policy.delay_with_jitter(retry);
        let at = clock::coarse_deadline(delay);
        if self.opts.expires_at.is_some_and(|exp| at >= exp) {
            return false;
        }
        let Some(me) = self.me.upgrade() else {
            return false;
        };
        let opts = JobOpts {
            not_before: (!delay.is_zero()).then_some(at),
            ..self.opts
        };
        let mut batch = Batch::new(
            self.call,
            self.item.clone(),
            1,
            0,
            me,
            opts,
            Some(self.slot.id),
        );
        batch.name = self.name;
        match self.submitter.send(Command::Submit(batch)) {
            Ok(()) => {
                self.slot.add_attempt();
                self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(cmd) => {
                // The supervisor is gone: the failure stands.
                if let Command::Submit(mut b) = cmd {
                    b.forget(b.count());
                }
                false
            }
        }
    }
}

impl Sink for RetrySink {
    fn deliver(&self, base: u64, outcome: Outcome) {
        if let Some(failure) = classify(&outcome)
            && self.try_again(failure)
        {
            if self.events.watching() {
                self.events.publish(EventKind::Retried {
                    id: self.slot.id,
                    next_attempt: self.slot.attempts(),
                    error: error_of(&outcome),
                });
            }
            return;
        }
        self.slot.deliver(base, outcome);
    }

    fn claim(&self) -> bool {
        self.slot.claim()
    }

    fn fail_now(&self, error: JobError) -> bool {
        self.slot.fail_now(error)
    }

    fn attempt(&self) -> u32 {
        self.slot.attempts()
    }

    fn revoke(&self) {
        self.slot.revoke();
    }

    fn is_revoked(&self) -> bool {
        self.slot.is_revoked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_fixed_exponential_capped_and_jittered() {
        let fixed = RetryPolicy::new(3).delay(Duration::from_secs(2));
        assert_eq!(fixed.delay_for(1), Duration::from_secs(2));
        assert_eq!(fixed.delay_for(3), Duration::from_secs(2));
        let exp = RetryPolicy::new(10)
            .backoff(Duration::from_millis(100))
            .backoff_max(Duration::from_secs(1));
        let got: Vec<u128> = (1..=6).map(|n| exp.delay_for(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exp.delay_for(200), Duration::from_secs(1), "no overflow");
        assert_eq!(RetryPolicy::new(1).delay_for(1), Duration::ZERO);
        let jit = exp.clone().jitter(true);
        let samples: Vec<Duration> = (0..200).map(|_| jit.delay_with_jitter(3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter spreads: {}", distinct.len());
    }

    #[test]
    fn which_failures_are_retried() {
        let p = RetryPolicy::new(1).on(RetryOn::CRASHED | RetryOn::ERROR);
        assert!(p.retries(RetryOn::CRASHED) && p.retries(RetryOn::ERROR));
        assert!(!p.retries(RetryOn::PANICKED) && !p.retries(RetryOn::TIMED_OUT));
        assert!(RetryPolicy::new(1).retries(RetryOn::TIMED_OUT));
        let failed = |error| Outcome::Failed { count: 1, error };
        assert_eq!(
            classify(&failed(JobError::TimedOut {
                limit: Duration::from_secs(1)
            })),
            Some(RetryOn::TIMED_OUT)
        );
        assert_eq!(classify(&failed(JobError::Cancelled)), None);
        assert_eq!(classify(&failed(JobError::Expired)), None);
        let record = |tag| {
            let mut buf = wire::header(tag, 0).to_vec();
            buf.truncate(wire::HEADER);
            Outcome::Records { count: 1, buf }
        };
        assert_eq!(classify(&record(Tag::Panic)), Some(RetryOn::PANICKED));
        assert_eq!(classify(&record(Tag::Err)), Some(RetryOn::ERROR));
        assert_eq!(classify(&record(Tag::Ok)), None);
        assert_eq!(classify(&record(Tag::Codec)), None);
    }
}
