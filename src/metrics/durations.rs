//! Distributions of durations in bounded memory: [`Durations`] records
//! into an HDR histogram (the `hdrhistogram` crate), and
//! [`DurationSummary`] is what a user reads of one: count, total, p50,
//! p90, p99, max, and counts under fixed bounds (what a Prometheus
//! histogram exports).
//!
//! A histogram covers 1 µs to one hour with two significant digits, every
//! reading within 1% of the truth; a longer duration is recorded as one
//! hour. It starts small and grows to the longest duration recorded so
//! far: 3 KiB for sub-millisecond jobs, at most 26 KiB (an hour), whatever
//! the number of samples. A pool makes several (per queue, per function),
//! and it makes them just after forking its fork server, when every page
//! they would zero is a copy-on-write fault. The total is kept exactly,
//! beside the histogram (one addition per record).
//!
//! The bucket counts are read off the histogram when a summary is taken,
//! not counted as samples arrive, so recording costs nothing more; a
//! sample within 1% of a bound may land on either side of it.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// The longest duration a histogram tells apart: an hour, in µs.
const MAX_US: u64 = 3_600_000_000;

/// The upper bounds of [`DurationSummary::buckets`], in µs.
const BOUNDS_US: [u64; BUCKETS] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// How many bounds [`DurationSummary::buckets`] has.
const BUCKETS: usize = 17;

/// A distribution of durations.
#[derive(Debug, Clone)]
pub(crate) struct Durations {
    histogram: Histogram<u64>,
    /// Every sample added up, in ns (exact; u128 never overflows here).
    total_ns: u128,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            // Auto-resizing: the counts cover values up to the largest
            // recorded (at most MAX_US), not the whole range at once.
            histogram: Histogram::new(2).expect("valid precision"),
            total_ns: 0,
        }
    }
}

impl Durations {
    /// Records `count` samples of `ns` nanoseconds each.
    #[inline]
    pub(crate) fn record(&mut self, ns: u64, count: u64) {
        let us = (ns / 1000).clamp(1, MAX_US);
        // Saturates rather than fails: the bounds above hold every value.
        let _ = self.histogram.record_n(us, count);
        self.total_ns += u128::from(ns) * u128::from(count);
    }

    /// What a user reads of it.
    pub(crate) fn summary(&self) -> DurationSummary {
        let h = &self.histogram;
        let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        // Each recorded value counts under the first bound at or above
        // the lowest value it stands for (its HDR bucket spans < 1%).
        let mut buckets = [0u64; BUCKETS];
        for v in h.iter_recorded() {
            let low = h.lowest_equivalent(v.value_iterated_to());
            let i = BOUNDS_US.partition_point(|&b| b < low);
            if let Some(b) = buckets.get_mut(i) {
                *b += v.count_at_value();
            }
        }
        for i in 1..BUCKETS {
            buckets[i] += buckets[i - 1];
        }
        let secs = self.total_ns / 1_000_000_000;
        DurationSummary {
            count: h.len(),
            total: Duration::new(
                u64::try_from(secs).unwrap_or(u64::MAX),
                (self.total_ns % 1_000_000_000) as u32,
            ),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: Duration::from_micros(h.max()),
            buckets,
        }
    }
}

/// A distribution of durations, summarized: how many, their total, the
/// 50th, 90th and 99th percentiles and the largest (each within 1%), and
/// how many were at most each of a fixed set of bounds
/// ([`buckets`](DurationSummary::buckets), what a Prometheus histogram
/// exports).
///
/// Serialized, each duration is a number of seconds (the buckets are
/// left out: they are for Prometheus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DurationSummary {
    /// Samples recorded.
    pub count: u64,
    /// All samples added up (exact).
    #[serde(serialize_with = "super::json::secs")]
    pub total: Duration,
    /// Half the samples were at most this.
    #[serde(serialize_with = "super::json::secs")]
    pub p50: Duration,
    /// 90% of the samples were at most this.
    #[serde(serialize_with = "super::json::secs")]
    pub p90: Duration,
    /// 99% of the samples were at most this.
    #[serde(serialize_with = "super::json::secs")]
    pub p99: Duration,
    /// The largest sample.
    #[serde(serialize_with = "super::json::secs")]
    pub max: Duration,
    /// Samples at most each of the bounds, cumulative.
    #[serde(skip)]
    buckets: [u64; BUCKETS],
}

impl DurationSummary {
    /// The upper bounds of [`buckets`](DurationSummary::buckets): 0.5 ms,
    /// 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, 50 ms, 100 ms, 250 ms, 500 ms, 1 s,
    /// 2.5 s, 5 s, 10 s, 30 s, 1 min and 5 min. Fixed, so that histograms
    /// of every function, queue and pool can be added up.
    pub const BUCKET_BOUNDS: [Duration; BUCKETS] = {
        let mut out = [Duration::ZERO; BUCKETS];
        let mut i = 0;
        while i < BUCKETS {
            out[i] = Duration::from_micros(BOUNDS_US[i]);
            i += 1;
        }
        out
    };

    /// For each of [`BUCKET_BOUNDS`](DurationSummary::BUCKET_BOUNDS), how
    /// many samples were at most that long (cumulative, as Prometheus's
    /// `le` buckets; within 1% of the bound a sample may count on either
    /// side). Samples above the last bound are counted in
    /// [`count`](DurationSummary::count) only.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// let pool = forkpool::Pool::new(1)?;
    /// pool.apply(nap, 30).unwrap();
    /// let snap = pool.inspect();
    /// let ran = snap.function(std::any::type_name_of_val(&nap)).unwrap().ran;
    /// let (bound, n) = ran.buckets().find(|&(_, n)| n == 1).unwrap(); // first that holds it
    /// assert!(bound >= Duration::from_millis(30));
    /// assert!(ran.total >= Duration::from_millis(30));
    /// # Ok(()) }
    /// ```
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> {
        Self::BUCKET_BOUNDS.into_iter().zip(self.buckets)
    }
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
        let before = d.histogram.distinct_values();
        for ns in 0..100_000u64 {
            d.record(ns * 7919, 3);
        }
        assert!(
            d.histogram.distinct_values() < before + 2_000,
            "memory stays bounded"
        );
    }

    /// A histogram holds counts only up to the longest duration recorded
    /// so far, and reads the same as one made for the whole range.
    #[test]
    fn counts_grow_with_the_longest_duration_only() {
        let full = Histogram::<u64>::new_with_bounds(1, MAX_US, 2).unwrap();
        let mut d = Durations::default();
        for us in [3u64, 80, 450] {
            d.record(us * 1000, 2);
        }
        let small = d.histogram.distinct_values();
        assert!(
            small * 8 <= full.distinct_values(),
            "{small} counts for sub-ms jobs"
        );
        let mut whole = Durations {
            histogram: full,
            total_ns: 0,
        };
        for us in [3u64, 80, 450] {
            whole.record(us * 1000, 2);
        }
        d.record(5_000_000_000_000, 1); // beyond an hour: an hour
        whole.record(5_000_000_000_000, 1);
        assert_eq!(d.summary(), whole.summary());
        assert_eq!(
            d.histogram.distinct_values(),
            whole.histogram.distinct_values()
        );
    }

    #[test]
    fn buckets_are_cumulative_and_the_total_exact() {
        let mut d = Durations::default();
        d.record(300_000, 2); // 0.3 ms: under every bound
        d.record(7_000_000, 1); // 7 ms: from 10 ms on
        d.record(40_000_000_000, 1); // 40 s: from 1 min on
        d.record(4_000_000_000_000, 1); // over an hour: above every bound
        let s = d.summary();
        let b: Vec<(Duration, u64)> = s.buckets().collect();
        assert_eq!(b.len(), DurationSummary::BUCKET_BOUNDS.len());
        let at = |ms: u64| {
            b.iter()
                .find(|(d, _)| *d == Duration::from_millis(ms))
                .unwrap()
                .1
        };
        assert_eq!(at(1), 2);
        assert_eq!(at(5), 2);
        assert_eq!(at(10), 3);
        assert_eq!(at(30_000), 3);
        assert_eq!(at(60_000), 4);
        assert_eq!(at(300_000), 4);
        assert_eq!(s.count, 5);
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let total = Duration::from_nanos(600_000 + 7_000_000 + 40_000_000_000 + 4_000_000_000_000);
        assert_eq!(s.total, total);
        assert_eq!(
            DurationSummary::default()
                .buckets()
                .map(|(_, n)| n)
                .sum::<u64>(),
            0
        );
    }
}
