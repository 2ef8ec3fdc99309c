//! Throttles: a per-function say over when its jobs may start.
//!
//! This is the core's whole knowledge of rate limits. A [`Throttle`] belongs to
//! a function (keyed by its address, like the function pointer a batch
//! carries); the supervisor attaches it to every batch of that function it
//! receives and asks it, each time it is about to hand one item to an idle
//! worker, whether the item may start now or not before some instant. A
//! refused item waits in the supervisor's timers, never in a worker, and
//! jobs of other functions keep flowing past it.
//!
//! Throttled items are dispatched one at a time, and only to a worker with
//! nothing else queued, so "dispatched" is "started" up to the worker's
//! wake-up latency, and the throttle's count of starts is the real one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Decides when items of one function may start.
pub(crate) trait Throttle: Send + Sync {
    /// May an item start at `now` (precise monotonic nanoseconds, the
    /// coarse clock's timebase; see `sys/clock.rs`)? `Ok`: it
    /// starts now, and the throttle counts it. `Err(at)`: ask again at `at`.
    /// `waited` is true when the item already waited for an instant this
    /// throttle gave it (so it keeps its place ahead of newcomers).
    fn admit(&self, now: u64, waited: bool) -> Result<(), u64>;
}

/// The throttles of one pool, by function address.
#[derive(Default)]
pub(crate) struct Throttles {
    /// Whether any throttle was ever installed: lets the supervisor skip the
    /// lookup entirely for pools without one.
    any: AtomicBool,
    map: RwLock<HashMap<usize, Arc<dyn Throttle>>>,
}

impl Throttles {
    /// The throttle of function `func`, if it has one.
    pub(crate) fn get(&self, func: usize) -> Option<Arc<dyn Throttle>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&func).cloned()
    }

    /// Installs `throttle` for function `func`, replacing any other.
    /// Batches already received keep the throttle they were given.
    pub(crate) fn insert(&self, func: usize, throttle: Arc<dyn Throttle>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(func, throttle);
        self.any.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;
    impl Throttle for Never {
        fn admit(&self, now: u64, _: bool) -> Result<(), u64> {
            Err(now + 1)
        }
    }

    #[test]
    fn throttles_are_per_function() {
        let throttles = Throttles::default();
        assert!(throttles.get(1).is_none());
        let a: Arc<dyn Throttle> = Arc::new(Never);
        throttles.insert(1, a.clone());
        assert!(Arc::ptr_eq(&throttles.get(1).unwrap(), &a));
        assert!(throttles.get(2).is_none());
        assert_eq!(a.admit(5, false), Err(6));
    }
}
