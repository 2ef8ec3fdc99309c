//! Rate limits: [`RateLimit`] in Celery's `"10/s"` form, and the per-function
//! limiter that the supervisor consults as a throttle.
//!
//! A limit belongs to a function within a pool: every job of that function
//! — [`Pool::submit`](crate::Pool::submit), [`Pool::job`](crate::Pool::job), `map` items alike — starts no faster
//! than the limit, counted across all workers, while jobs of other
//! functions run freely. Like Celery's token bucket of capacity one, starts
//! are spaced evenly: `"10/s"` lets one job start every 100 ms, with no
//! burst. Jobs held back wait in the supervisor's timers, in order, not in
//! a worker.
//!
//! Functions are told apart by address. Two functions the compiler merged
//! because their machine code is identical share an address, and a limit.

use crate::batch::throttle::{Throttle, Throttles};
use crate::sys::clock;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How fast jobs of one function may start: `count` per `per`.
///
/// Parse it from Celery's notation — `"10/s"`, `"100/m"`, `"1000/h"`; a bare
/// number means per second, and the count may have a fraction (`"0.5/s"`):
///
/// ```
/// use forkpool::RateLimit;
/// use std::time::Duration;
/// let limit: RateLimit = "100/m".parse()?;
/// assert_eq!(limit.interval(), Duration::from_millis(600));
/// assert_eq!(limit.to_string(), "100/m");
/// assert!("10/d".parse::<RateLimit>().is_err()); // unknown unit
/// # Ok::<(), forkpool::RateLimitError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    count: f64,
    per: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Second,
    Minute,
    Hour,
}

impl Unit {
    fn secs(self) -> f64 {
        match self {
            Unit::Second => 1.0,
            Unit::Minute => 60.0,
            Unit::Hour => 3600.0,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Unit::Second => "s",
            Unit::Minute => "m",
            Unit::Hour => "h",
        }
    }
}

/// Why a rate limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The text was empty.
    #[error("empty rate limit: expected a form like \"10/s\", \"100/m\" or \"1000/h\"")]
    Empty,
    /// The part before `/` is not a number.
    #[error("rate limit {input:?}: {count:?} is not a number of jobs")]
    BadCount {
        /// The whole text given.
        input: String,
        /// The part that should have been a number.
        count: String,
    },
    /// The part after `/` is not `s`, `m` or `h`.
    #[error("rate limit {input:?}: unknown unit {unit:?} (use s, m or h)")]
    BadUnit {
        /// The whole text given.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// The count is zero or negative (Celery reads 0 as "no limit"; here
    /// that is [`Pool::set_rate_limit`](crate::Pool::set_rate_limit) with `None`).
    #[error("rate limit {input:?}: the count must be above zero (to lift a limit, set None)")]
    NotPositive {
        /// The whole text given.
        input: String,
    },
}

impl RateLimit {
    /// `count` jobs per second.
    pub fn per_second(count: u32) -> Result<RateLimit, RateLimitError> {
        RateLimit::new(f64::from(count), Unit::Second, || format!("{count}/s"))
    }

    /// `count` jobs per minute.
    pub fn per_minute(count: u32) -> Result<RateLimit, RateLimitError> {
        RateLimit::new(f64::from(count), Unit::Minute, || format!("{count}/m"))
    }

    /// `count` jobs per hour.
    pub fn per_hour(count: u32) -> Result<RateLimit, RateLimitError> {
        RateLimit::new(f64::from(count), Unit::Hour, || format!("{count}/h"))
    }

    fn new(
        count: f64,
        per: Unit,
        input: impl FnOnce() -> String,
    ) -> Result<RateLimit, RateLimitError> {
        if count.is_nan() || count <= 0.0 {
            return Err(RateLimitError::NotPositive { input: input() });
        }
        if !count.is_finite() {
            return Err(RateLimitError::BadCount {
                input: input(),
                count: count.to_string(),
            });
        }
        Ok(RateLimit { count, per })
    }

    /// The time between two starts: `"10/s"` is 100 ms.
    pub fn interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.per.secs() / self.count)
            .unwrap_or(Duration::MAX)
            .max(Duration::from_nanos(1))
    }
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(text: &str) -> Result<RateLimit, RateLimitError> {
        let input = text.trim();
        if input.is_empty() {
            return Err(RateLimitError::Empty);
        }
        let (count, unit) = match input.split_once('/') {
            Some((c, u)) => (c.trim(), u.trim()),
            None => (input, "s"),
        };
        let per = match unit {
            "s" => Unit::Second,
            "m" => Unit::Minute,
            "h" => Unit::Hour,
            _ => {
                return Err(RateLimitError::BadUnit {
                    input: input.into(),
                    unit: unit.into(),
                });
            }
        };
        let bad_count = || RateLimitError::BadCount {
            input: input.into(),
            count: count.into(),
        };
        // Digits and at most one point: no signs, exponents, "inf" or "nan".
        if count.is_empty()
            || !count.chars().all(|c| c.is_ascii_digit() || c == '.')
            || count.matches('.').count() > 1
            || count == "."
        {
            return Err(bad_count());
        }
        let n: f64 = count.parse().map_err(|_| bad_count())?;
        RateLimit::new(n, per, || input.into())
    }
}

impl TryFrom<&str> for RateLimit {
    type Error = RateLimitError;
    fn try_from(text: &str) -> Result<RateLimit, RateLimitError> {
        text.parse()
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

/// One function's limiter: a throttle that spaces its starts by an interval.
pub(crate) struct RateLimiter {
    /// Nanoseconds between starts; 0 when the limit was lifted.
    interval_ns: AtomicU64,
    state: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// When the latest item was let through.
    last: Option<u64>,
    /// The earliest instant not yet promised to a waiting item.
    next_free: u64,
}

impl RateLimiter {
    fn new() -> RateLimiter {
        RateLimiter {
            interval_ns: AtomicU64::new(0),
            state: Mutex::new(Slots::default()),
        }
    }

    fn set(&self, limit: Option<RateLimit>) {
        let ns = limit.map_or(0, |l| clock::ns(l.interval()).max(1));
        self.interval_ns.store(ns, Ordering::Relaxed);
    }
}

impl Throttle for RateLimiter {
    fn admit(&self, now: u64, waited: bool) -> Result<(), u64> {
        let interval = self.interval_ns.load(Ordering::Relaxed);
        if interval == 0 {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = s.last.map_or(0, |l| l.saturating_add(interval));
        if now >= earliest && (waited || now >= s.next_free) {
            s.last = Some(now);
            s.next_free = s.next_free.max(now.saturating_add(interval));
            return Ok(());
        }
        if waited {
            // Its promised slot came, but an earlier item started late.
            return Err(earliest);
        }
        // A newcomer queues behind the items already promised a slot.
        let at = earliest.max(s.next_free).max(now);
        s.next_free = at.saturating_add(interval);
        Err(at)
    }
}

/// The rate limits of one pool.
pub(crate) struct RateLimits {
    throttles: Arc<Throttles>,
    limiters: Mutex<HashMap<usize, Arc<RateLimiter>>>,
}

impl RateLimits {
    pub(crate) fn new(throttles: Arc<Throttles>) -> RateLimits {
        RateLimits {
            throttles,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// Sets (or with `None` lifts) the limit of function `func`.
    pub(crate) fn set(&self, func: usize, limit: Option<RateLimit>) {
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&func) {
            Some(l) => l.set(limit),
            None if limit.is_none() => {}
            None => {
                let l = Arc::new(RateLimiter::new());
                l.set(limit);
                self.throttles.insert(func, l.clone());
                map.insert(func, l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RateLimit, RateLimitError> {
        s.parse()
    }

    #[test]
    fn celery_forms_parse() {
        let ms = |s: &str| parse(s).unwrap().interval().as_secs_f64() * 1000.0;
        assert_eq!(ms("10/s"), 100.0);
        assert_eq!(ms("100/m"), 600.0);
        assert_eq!(ms("1000/h"), 3600.0);
        assert_eq!(ms("4"), 250.0, "a bare number is per second");
        assert_eq!(ms(" 0.5 / s "), 2000.0);
        assert_eq!(parse("100/m").unwrap().to_string(), "100/m");
        assert_eq!(RateLimit::per_minute(100), parse("100/m"));
        assert_eq!(RateLimit::try_from("2/h"), RateLimit::per_hour(2));
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        assert_eq!(parse(""), Err(RateLimitError::Empty));
        assert_eq!(parse("  "), Err(RateLimitError::Empty));
        for (text, part) in [
            ("ten/s", "ten"),
            ("/s", ""),
            ("-1/s", "-1"),
            ("1e3/s", "1e3"),
            ("inf/s", "inf"),
            ("1.2.3/s", "1.2.3"),
            (".", "."),
        ] {
            match parse(text) {
                Err(RateLimitError::BadCount { count, .. }) => assert_eq!(count, part, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        match parse("10/d") {
            Err(e @ RateLimitError::BadUnit { .. }) => {
                assert!(e.to_string().contains("\"d\""), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("10/"), Err(RateLimitError::BadUnit { .. })));
        assert!(matches!(
            parse("0/s"),
            Err(RateLimitError::NotPositive { .. })
        ));
        assert!(matches!(
            parse("0.0"),
            Err(RateLimitError::NotPositive { .. })
        ));
        assert!(matches!(
            RateLimit::per_second(0),
            Err(RateLimitError::NotPositive { .. })
        ));
    }

    #[test]
    fn starts_are_spaced_and_waiters_keep_their_turn() {
        let l = RateLimiter::new();
        assert_eq!(l.admit(1000, false), Ok(()), "no limit yet");
        l.set(Some(parse("10/s").unwrap())); // 100 ms
        let ms = 1_000_000u64;
        let t0 = 10_000 * ms;
        assert_eq!(l.admit(t0, false), Ok(()));
        // Two newcomers get the next two slots.
        assert_eq!(l.admit(t0 + ms, false), Err(t0 + 100 * ms));
        assert_eq!(l.admit(t0 + 2 * ms, false), Err(t0 + 200 * ms));
        // A third arriving when the first slot is due still queues behind.
        assert_eq!(l.admit(t0 + 100 * ms, false), Err(t0 + 300 * ms));
        // The waiter whose slot came goes; the next is not early.
        assert_eq!(l.admit(t0 + 100 * ms, true), Ok(()));
        assert_eq!(l.admit(t0 + 150 * ms, true), Err(t0 + 200 * ms));
        // A waiter that started late pushes the next one back.
        assert_eq!(l.admit(t0 + 230 * ms, true), Ok(()));
        assert_eq!(l.admit(t0 + 300 * ms, true), Err(t0 + 330 * ms));
        // Lifting the limit lets everything through.
        l.set(None);
        assert_eq!(l.admit(t0 + 301 * ms, false), Ok(()));
    }
}
