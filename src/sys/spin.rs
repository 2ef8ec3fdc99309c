//! Waiting briefly for another thread or process without going to sleep.
//!
//! A worker waiting for its next frame, and a caller waiting for its job's
//! answer while it helps the supervisor, spin before they sleep: waking a
//! sleeping thread costs a system call and, on a VM whose idle vCPU halts,
//! some 30 µs. Spinning only pays while the party waited for runs on
//! another CPU; on the same CPU it only delays it. So a wait
//!
//! - checks flat out (a few `PAUSE`s between checks) for at most
//!   [`HOT`], and only while the peer it waits for last ran on another CPU;
//! - otherwise yields the CPU between checks, which costs nothing when
//!   nobody else wants the CPU and hands it over when the peer (or anyone)
//!   does;
//! - stops at a budget that adapts (see [`Budget`]), after which the waiter
//!   sleeps.
//!
//! Where each side runs is published in the worker's status page
//! (`worker.cpu`, `driver_cpu`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest flat-out phase of a wait.
pub(crate) const HOT: Duration = Duration::from_micros(10);

/// "No CPU known": never equal to a real CPU number.
pub(crate) const NO_CPU: u32 = u32::MAX;

/// The CPU this thread runs on now.
pub(crate) fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions (vDSO, no side effects).
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(NO_CPU)
}

/// One wait in progress.
pub(crate) struct Wait {
    start: Instant,
    budget: Duration,
    me: u32,
}

impl Wait {
    /// Starts a wait of at most `budget`.
    pub(crate) fn new(budget: Duration) -> Wait {
        Wait {
            start: Instant::now(),
            budget,
            me: current_cpu(),
        }
    }

    /// The CPU the waiter runs on.
    pub(crate) fn cpu(&self) -> u32 {
        self.me
    }

    /// Pauses between two checks for a peer last seen on `peer_cpu`. False
    /// once the budget is spent: time to sleep.
    pub(crate) fn pause(&self, peer_cpu: u32) -> bool {
        let spent = self.start.elapsed();
        if spent >= self.budget {
            return false;
        }
        if spent < HOT && peer_cpu != self.me {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        true
    }
}

/// An adaptive spin budget: doubles when a wait paid off, halves when it did
/// not, between a floor and a ceiling. The floor must exceed one round trip
/// through a sleeping peer (~35 µs here): below that, two sides at their
/// floors each give up before the other answers, and stay in that slow state.
pub(crate) struct Budget {
    ns: AtomicU64,
    min: Duration,
    max: Duration,
}

impl Budget {
    pub(crate) const fn new(start: Duration, min: Duration, max: Duration) -> Budget {
        Budget {
            ns: AtomicU64::new(start.as_nanos() as u64),
            min,
            max,
        }
    }

    pub(crate) fn get(&self) -> Duration {
        Duration::from_nanos(self.ns.load(Ordering::Relaxed))
    }

    /// Learns from a wait of budget `used`.
    pub(crate) fn adapt(&self, paid_off: bool, used: Duration) {
        let next = if paid_off { used * 2 } else { used / 2 };
        let next = next.clamp(self.min, self.max);
        self.ns.store(next.as_nanos() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_adapt_within_bounds() {
        let b = Budget::new(
            Duration::from_micros(100),
            Duration::from_micros(50),
            Duration::from_micros(400),
        );
        b.adapt(true, b.get());
        b.adapt(true, b.get());
        b.adapt(true, b.get());
        assert_eq!(b.get(), Duration::from_micros(400));
        for _ in 0..10 {
            b.adapt(false, b.get());
        }
        assert_eq!(b.get(), Duration::from_micros(50));
    }

    #[test]
    fn a_wait_ends_at_its_budget() {
        let start = Instant::now();
        let w = Wait::new(Duration::from_millis(2));
        let mut pauses = 0;
        while w.pause(NO_CPU) {
            pauses += 1;
        }
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert!(pauses > 0);
    }
}
