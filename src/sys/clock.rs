//! The clock that workers and the supervisor share.
//!
//! Time limits compare a start time written by a worker with "now" read by
//! the supervisor, so both use the same system-wide clock:
//! `CLOCK_MONOTONIC_COARSE`, which the vDSO answers in a few nanoseconds —
//! cheap enough to read once per item. Its resolution (one scheduler tick,
//! 1–4 ms) is far below any sensible time limit.

use std::time::Duration;

/// Nanoseconds on the coarse monotonic clock.
pub(crate) fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a local timespec; it is
    // async-signal-safe and cannot fail for this clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds on the precise monotonic clock (`CLOCK_MONOTONIC`): the
/// same timebase as [`coarse_ns`], which trails it by less than a tick. For
/// the few readings that must not be a tick off (a rate limiter's spacing);
/// a deadline read against the coarse clock then fires never early.
pub(crate) fn precise_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a local timespec; it is
    // async-signal-safe and cannot fail for this clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The coarse clock's resolution (one scheduler tick). A start time read
/// from it can be up to this much earlier than the real start, so a
/// deadline adds it to fire never before the limit, at most a tick after.
pub(crate) fn coarse_tick_ns() -> u64 {
    static TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_getres writes into a local timespec.
        let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
        if ok {
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        } else {
            4_000_000
        }
    })
}

/// A duration in nanoseconds, saturating.
pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The coarse-clock instant by which `after` has surely passed: the coarse
/// clock lags real time by up to one tick, so one tick is added.
pub(crate) fn coarse_deadline(after: Duration) -> u64 {
    coarse_ns()
        .saturating_add(ns(after))
        .saturating_add(coarse_tick_ns())
}

/// The clocks as one supervisor step sees them: each read at most once per
/// step, and only if something needs it (a step that finds nothing to do
/// reads no clock). A step lasts microseconds, so every reading in it is
/// that much late at most.
#[derive(Debug, Default)]
pub(crate) struct StepClock {
    coarse: Option<u64>,
    precise: Option<u64>,
}

impl StepClock {
    /// A new step: forget the readings of the last.
    #[inline]
    pub(crate) fn reset(&mut self) {
        *self = StepClock::default();
    }

    /// The coarse clock ([`coarse_ns`]) for this step.
    #[inline]
    pub(crate) fn coarse(&mut self) -> u64 {
        *self.coarse.get_or_insert_with(coarse_ns)
    }

    /// The precise clock ([`precise_ns`]) for this step: what statistics
    /// of waits and run times are measured on.
    #[inline]
    pub(crate) fn precise(&mut self) -> u64 {
        *self.precise.get_or_insert_with(precise_ns)
    }
}
