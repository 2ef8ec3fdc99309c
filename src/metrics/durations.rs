//! Distributions of durations in bounded memory: [`Durations`] records
//! into an HDR histogram (the `hdrhistogram` crate), and
//! [`DurationSummary`] is what a user reads of one: count, p50, p90, p99
//! and max.
//!
//! A histogram covers 1 µs to one hour with two significant digits: a few
//! kilobytes whatever the number of samples, and every reading within 1%
//! of the truth. A longer duration is recorded as one hour.

use hdrhistogram::Histogram;
use std::time::Duration;

/// The longest duration a histogram tells apart: an hour, in µs.
const MAX_US: u64 = 3_600_000_000;

/// A distribution of durations.
#[derive(Debug, Clone)]
pub(crate) struct Durations(Histogram<u64>);

impl Default for Durations {
    fn default() -> Self {
        Durations(Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds"))
    }
}

impl Durations {
    /// Records `count` samples of `ns` nanoseconds each.
    #[inline]
    pub(crate) fn record(&mut self, ns: u64, count: u64) {
        let us = (ns / 1000).clamp(1, MAX_US);
        // Saturates rather than fails: the bounds above hold every value.
        let _ = self.0.record_n(us, count);
    }

    /// What a user reads of it.
    pub(crate) fn summary(&self) -> DurationSummary {
        let at = |q: f64| Duration::from_micros(self.0.value_at_quantile(q));
        DurationSummary {
            count: self.0.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: Duration::from_micros(self.0.max()),
        }
    }
}

/// A distribution of durations, summarized: how many, and the 50th, 90th
/// and 99th percentiles and the largest (each within 1%).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurationSummary {
    /// Samples recorded.
    pub count: u64,
    /// Half the samples were at most this.
    pub p50: Duration,
    /// 90% of the samples were at most this.
    pub p90: Duration,
    /// 99% of the samples were at most this.
    pub p99: Duration,
    /// The largest sample.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_one_percent_in_bounded_memory() {
        let mut d = Durations::default();
        for ms in 1..=100u64 {
            d.record(ms * 1_000_000, 1);
        }
        d.record(5_000_000_000_000, 1); // beyond an hour: an hour
        let s = d.summary();
        assert_eq!(s.count, 101);
        let near = |got: Duration, want_ms: u64| {
            let want = Duration::from_millis(want_ms);
            got.abs_diff(want) <= want / 100
        };
        assert!(near(s.p50, 51), "{s:?}");
        assert!(near(s.p90, 91), "{s:?}");
        assert!(near(s.p99, 100), "{s:?}");
        assert!(near(s.max, 3_600_000), "{s:?}");
        let before = d.0.distinct_values();
        for ns in 0..100_000u64 {
            d.record(ns * 7919, 3);
        }
        assert!(
            d.0.distinct_values() < before + 2_000,
            "memory stays bounded"
        );
    }
}
