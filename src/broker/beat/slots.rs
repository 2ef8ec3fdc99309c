//! A schedule's slots as every process sees them: wall-clock instants in
//! milliseconds since the Unix epoch — an interval's at whole multiples
//! of it, a cron expression's where it matches — so that a slot's number
//! is the same in every process. Pure: the tests call it with made-up
//! times.

#[cfg(test)]
use crate::beat::schedule::Schedule;
use crate::beat::schedule::Timing;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// At most this many cron slots are counted one by one between the last
/// claim and now (a schedule idle for years on a per-second expression);
/// past that, the count stops there.
const MOST_COUNTED: u64 = 100_000;

/// `t` in milliseconds since the Unix epoch (0 before it).
pub(super) fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

pub(super) fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A schedule's slots as every process sees them: instants in ms since
/// the Unix epoch.
#[derive(Debug)]
pub(super) struct Slots {
    pub(super) timing: Timing,
}

impl Slots {
    /// The interval in ms of an interval schedule.
    fn every_ms(&self) -> Option<u64> {
        match &self.timing {
            Timing::Every(d) => Some((d.as_millis().min(u128::from(u64::MAX)) as u64).max(1)),
            #[cfg(feature = "cron")]
            Timing::Cron(_) => None,
        }
    }

    /// The first slot strictly after `t`; `None` if there is none.
    pub(super) fn next_after(&self, t: u64) -> Option<u64> {
        match &self.timing {
            Timing::Every(_) => {
                let every = self.every_ms().expect("an interval");
                (t / every).checked_add(1)?.checked_mul(every)
            }
            #[cfg(feature = "cron")]
            Timing::Cron(c) => c.next_after(time_of(t)).map(ms_of),
        }
    }

    /// The newest slot at or before `now`, at or after `first` (a slot).
    pub(super) fn newest_upto(&self, first: u64, now: u64) -> u64 {
        match self.every_ms() {
            Some(every) => (now / every * every).max(first),
            None => {
                let mut slot = first;
                for _ in 0..MOST_COUNTED {
                    match self.next_after(slot) {
                        Some(n) if n <= now => slot = n,
                        _ => return slot,
                    }
                }
                // Too many to walk (a per-second expression idle for
                // days): look back from now in doubling windows for a slot,
                // and walk from there.
                let mut back = 1_000u64;
                loop {
                    let from = now.saturating_sub(back);
                    if let Some(mut s) = self.next_after(from).filter(|&s| s <= now) {
                        while let Some(n) = self.next_after(s).filter(|&n| n <= now) {
                            s = n;
                        }
                        return s.max(slot);
                    }
                    if from == 0 {
                        return slot;
                    }
                    back = back.saturating_mul(2);
                }
            }
        }
    }

    /// How many slots lie in `(after, upto]` (`upto` a slot), and the
    /// newest `k` of them, oldest first.
    pub(super) fn count_and_tail(&self, after: u64, upto: u64, k: usize) -> (u64, Vec<u64>) {
        if upto <= after {
            return (0, Vec::new());
        }
        match self.every_ms() {
            Some(every) => {
                let count = upto / every - after / every;
                let n = count.min(k as u64);
                let tail = (0..n).rev().map(|i| upto - i * every).collect();
                (count, tail)
            }
            None => {
                let mut tail = VecDeque::with_capacity(k + 1);
                let mut count = 0;
                let mut at = after;
                while let Some(slot) = self.next_after(at).filter(|&s| s <= upto) {
                    count += 1;
                    tail.push_back(slot);
                    if tail.len() > k {
                        tail.pop_front();
                    }
                    at = slot;
                    if count == MOST_COUNTED {
                        // Too many: the newest one stands for the rest.
                        tail.clear();
                        tail.push_back(upto);
                        break;
                    }
                }
                (count.max(1), tail.into_iter().collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(ms: u64) -> Slots {
        Slots {
            timing: Timing::Every(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn interval_slots_are_multiples_of_the_interval_since_the_epoch() {
        let s = every(250);
        assert_eq!(s.next_after(0), Some(250));
        assert_eq!(s.next_after(249), Some(250));
        assert_eq!(s.next_after(250), Some(500));
        assert_eq!(s.newest_upto(250, 999), 750);
        assert_eq!(s.newest_upto(250, 250), 250);
        // (250, 1000]: 500, 750, 1000.
        assert_eq!(s.count_and_tail(250, 1000, 2), (3, vec![750, 1000]));
        assert_eq!(s.count_and_tail(250, 1000, 0), (3, vec![]));
        assert_eq!(s.count_and_tail(1000, 1000, 1), (0, vec![]));
        assert_eq!(s.next_after(u64::MAX - 1), None);
    }

    #[cfg(feature = "cron")]
    #[test]
    fn cron_slots_are_counted_between_two_claims() {
        let s = Slots {
            timing: Schedule::cron("*/10 * * * * *", "UTC").unwrap().timing,
        };
        // (0 s, 60 s]: 10, 20, …, 60.
        assert_eq!(s.count_and_tail(0, 60_000, 2), (6, vec![50_000, 60_000]));
        assert_eq!(s.newest_upto(10_000, 65_000), 60_000);
        assert_eq!(s.next_after(60_000), Some(70_000));
    }

    #[cfg(feature = "cron")]
    #[test]
    fn the_newest_of_too_many_cron_slots_is_found_from_now() {
        let s = Slots {
            timing: Schedule::cron("* * * * * *", "UTC").unwrap().timing,
        };
        // 200,000 one-second slots since the first: more than are walked.
        assert_eq!(s.newest_upto(1_000, 200_000_500), 200_000_000);
        assert_eq!(s.newest_upto(1_000, 5_500), 5_000);
    }
}
