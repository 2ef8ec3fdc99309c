//! Which of a schedule's slots are due: [`Timeline`], a pure state
//! machine over the clocks' readings — each slot is handed out once, and
//! never before its time.
//!
//! The runner looks at a timeline whenever it wakes, with both clocks
//! read *after* waking, and [`Timeline::take_due`] hands out the slots
//! whose time has come since the last look, moving past them. So:
//!
//! - **Never early.** A slot is handed out only if the clock read says
//!   its time has come; a timer that wakes early hands out nothing, and
//!   the runner sleeps again.
//! - **Never twice.** Handing a slot out moves the timeline past it, so
//!   the same slot cannot be handed out by a later look, however many
//!   wakes there are (celery#4041 ran a daily task 32,000 times).
//!
//! Interval slots are instants of the monotonic clock (`anchor + k ×
//! every`), which never goes back: the two rules are plain arithmetic.
//! Cron slots are wall-clock instants, and the wall clock can be set
//! back; then the slots the timeline had already handed out come round
//! again. The timeline keeps the spans of wall time whose slots it has
//! handed out (a few, merged as they meet) and skips them: a clock set
//! back an hour repeats nothing, and waits for the slot after the last
//! one handed out; a clock that was wrong by years and is corrected runs
//! the slots of the corrected time. A clock set forward makes the slots
//! it jumped over due at once, which the missed-slot policy
//! (`policy.rs`) turns into runs, skips or misses.

use crate::beat::clock::{Deadline, Now};
use crate::beat::policy::Due;
use crate::beat::schedule::Timing;
use std::time::{Duration, SystemTime};

/// When a slot is due: an instant of the monotonic clock (an interval
/// schedule) or of the wall clock (a cron schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotTime {
    Mono(Duration),
    // Built only with the `cron` feature; matched everywhere.
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    Wall(SystemTime),
}

impl SlotTime {
    /// Whether the slot's time has come at `now`.
    pub(crate) fn is_due(self, now: Now) -> bool {
        match self {
            SlotTime::Mono(m) => now.mono >= m,
            SlotTime::Wall(w) => now.wall >= w,
        }
    }

    /// How long ago the slot's time came (zero if it has not).
    pub(crate) fn late(self, now: Now) -> Duration {
        match self {
            SlotTime::Mono(m) => now.mono.saturating_sub(m),
            SlotTime::Wall(w) => now.wall.duration_since(w).unwrap_or_default(),
        }
    }

    /// The deadline to sleep until for this slot.
    pub(crate) fn deadline(self) -> Deadline {
        match self {
            SlotTime::Mono(m) => Deadline {
                wall: None,
                mono: Some(m),
            },
            SlotTime::Wall(w) => Deadline {
                wall: Some(w),
                mono: None,
            },
        }
    }

    /// The slot as a wall-clock time, for people: an interval slot is
    /// placed by the wall clock as read at `now`.
    pub(crate) fn wall_estimate(self, now: Now) -> SystemTime {
        match self {
            SlotTime::Wall(w) => w,
            SlotTime::Mono(m) if m >= now.mono => now.wall + (m - now.mono),
            SlotTime::Mono(m) => now.wall - (now.mono - m),
        }
    }
}

/// Slots handed out by one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// How many, and how late the newest is.
    pub(crate) due: Due,
    /// The newest of them.
    pub(crate) newest: SlotTime,
}

/// At most this many slots of a cron schedule are counted one by one in
/// a single look (a clock set forward by years on a per-second
/// schedule); past that, the rest up to now count as one more.
const MOST_COUNTED: u64 = 100_000;

/// At most this many spans of handed-out wall time are kept (one more
/// each time the clock is set back before the start of the current one).
const MOST_SPANS: usize = 16;

/// A schedule's slots: which is next, which are due.
#[derive(Debug)]
pub(crate) struct Timeline {
    timing: Timing,
    /// The next slot not handed out yet; `None`: there are no more (a
    /// cron expression with a last match).
    next: Option<SlotTime>,
    /// Interval schedules: the monotonic instant the schedule was made;
    /// slot `k` (from 1) is at `anchor + k × every`.
    anchor: Duration,
    /// Interval schedules: the number `k` of the next slot.
    next_k: u64,
    /// Cron schedules: spans `[first, last]` of wall time whose slots
    /// have all been handed out, disjoint; the last one is the current.
    spans: Vec<(SystemTime, SystemTime)>,
    /// Cron schedules: the wall clock at the last look, to see it go back.
    last_wall: SystemTime,
}

/// `d` as nanoseconds.
fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

/// Nanoseconds as a duration (saturating at about 584 years).
fn from_nanos(ns: u128) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl Timeline {
    /// A timeline whose first slot is the first after `now`: one interval
    /// on, or the cron expression's next match.
    pub(crate) fn new(timing: Timing, now: Now) -> Timeline {
        let mut t = Timeline {
            timing,
            next: None,
            anchor: now.mono,
            next_k: 1,
            spans: Vec::new(),
            last_wall: now.wall,
        };
        t.next = t.slot_k(1).or_else(|| t.unhandled_after(now.wall));
        t
    }

    /// The next slot not handed out yet.
    pub(crate) fn next(&self) -> Option<SlotTime> {
        self.next
    }

    /// The interval of an interval schedule.
    fn interval(&self) -> Option<Duration> {
        match self.timing {
            Timing::Every(every) => Some(every),
            #[cfg(feature = "cron")]
            Timing::Cron(_) => None,
        }
    }

    /// Slot `k` of an interval schedule (`None` for a cron schedule).
    fn slot_k(&self, k: u64) -> Option<SlotTime> {
        let every = self.interval()?;
        Some(SlotTime::Mono(
            self.anchor + from_nanos(nanos(every) * u128::from(k)),
        ))
    }

    /// The first cron slot strictly after `t` that no span holds.
    fn unhandled_after(&self, t: SystemTime) -> Option<SlotTime> {
        #[cfg(feature = "cron")]
        if let Timing::Cron(cron) = &self.timing {
            let mut slot = cron.next_after(t)?;
            // Each pass moves past a span, and slots only move forward:
            // at most one pass per span.
            while let Some(&(_, last)) = self.spans.iter().find(|&&(a, b)| a <= slot && slot <= b) {
                slot = cron.next_after(last)?;
            }
            return Some(SlotTime::Wall(slot));
        }
        let _ = t;
        None
    }

    /// Records that the cron slot `slot` was handed out: it extends the
    /// current span if it lies after it, or starts a new one (the clock
    /// was set back before the current span's start).
    fn hand(&mut self, slot: SystemTime) {
        match self.spans.last_mut() {
            Some((_, last)) if slot > *last => *last = slot,
            _ => self.spans.push((slot, slot)),
        }
        // A span grown over older ones (after the clock was set back,
        // time caught up with them) takes them in.
        let (first, last) = *self.spans.last().expect("just pushed or grown");
        let current = self.spans.len() - 1;
        let mut i = 0;
        self.spans.retain(|&(a, b)| {
            let keep = i == current || !(first <= a && b <= last);
            i += 1;
            keep
        });
        if self.spans.len() > MOST_SPANS {
            self.spans.remove(0);
        }
    }

    /// Hands out every slot due at `now`, each once, none early; `None`
    /// when none is due. Call with the clocks read after waking.
    pub(crate) fn take_due(&mut self, now: Now) -> Option<Taken> {
        if now.wall < self.last_wall {
            // The wall clock was set back: the next cron slot is the first
            // after the new time that was not handed out already.
            if let Some(next) = self.unhandled_after(now.wall) {
                self.next = Some(next);
            }
        }
        self.last_wall = now.wall;
        let first = self.next.filter(|s| s.is_due(now))?;
        let taken = match (first, self.interval()) {
            (SlotTime::Mono(_), Some(every)) => {
                let newest_k = (nanos(now.mono - self.anchor) / nanos(every)) as u64;
                let count = newest_k - self.next_k + 1;
                let newest = self.slot_k(newest_k).expect("an interval schedule");
                self.next_k = newest_k + 1;
                self.next = self.slot_k(self.next_k);
                Taken {
                    due: Due {
                        count,
                        newest_late: newest.late(now),
                    },
                    newest,
                }
            }
            (SlotTime::Wall(mut slot), _) => {
                let mut count = 0;
                loop {
                    self.hand(slot);
                    count += 1;
                    match self.unhandled_after(slot) {
                        Some(SlotTime::Wall(next)) if next <= now.wall => {
                            if count == MOST_COUNTED {
                                // Too many to count one by one: the rest
                                // up to now count as one.
                                self.hand(now.wall);
                                count += 1;
                                self.next = self.unhandled_after(now.wall);
                                break;
                            }
                            slot = next;
                        }
                        other => {
                            self.next = other;
                            break;
                        }
                    }
                }
                let newest = SlotTime::Wall(slot);
                Taken {
                    due: Due {
                        count,
                        newest_late: newest.late(now),
                    },
                    newest,
                }
            }
            (SlotTime::Mono(_), None) => unreachable!("monotonic slots belong to intervals"),
        };
        debug_assert!(taken.newest.is_due(now), "a slot handed out early");
        debug_assert!(self.next.is_none_or(|n| !n.is_due(now)));
        Some(taken)
    }

    /// Moves past every slot up to `now` without handing them out: a
    /// paused schedule resumes at its first slot after now (an interval
    /// keeps its phase).
    pub(crate) fn skip_to(&mut self, now: Now) {
        self.last_wall = now.wall;
        match self.interval() {
            Some(every) => {
                let passed = nanos(now.mono.saturating_sub(self.anchor)) / nanos(every);
                self.next_k = passed as u64 + 1;
                self.next = self.slot_k(self.next_k);
            }
            None => self.next = self.unhandled_after(now.wall),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beat::clock::{Clock, FakeClock};
    use crate::beat::policy::Policy;
    use crate::control::schedules::{Missed, Overlap};
    use std::collections::HashMap;

    fn epoch(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn interval_slots_are_due_on_time_and_once() {
        let clock = FakeClock::at(epoch(1_700_000_000));
        let mut t = Timeline::new(Timing::Every(SEC), clock.now());
        let first = t.next().unwrap();
        assert_eq!(first, SlotTime::Mono(clock.now_monotonic() + SEC));
        clock.advance(999 * MS);
        assert_eq!(t.take_due(clock.now()), None, "1 ms early");
        clock.advance(MS);
        let taken = t.take_due(clock.now()).unwrap();
        assert_eq!(taken.due.count, 1);
        assert_eq!(taken.newest, first);
        assert_eq!(taken.due.newest_late, Duration::ZERO);
        assert_eq!(t.take_due(clock.now()), None, "not twice");
        // A stall of 10.5 s: ten slots due at once, the newest 0.5 s late.
        clock.advance(10 * SEC + 500 * MS);
        let taken = t.take_due(clock.now()).unwrap();
        assert_eq!(taken.due.count, 10);
        assert_eq!(taken.due.newest_late, 500 * MS);
        assert_eq!(
            t.next(),
            Some(SlotTime::Mono(first.deadline().mono.unwrap() + 11 * SEC))
        );
    }

    #[test]
    fn interval_slots_ignore_the_wall_clock() {
        let clock = FakeClock::at(epoch(1_700_000_000));
        let mut t = Timeline::new(Timing::Every(SEC), clock.now());
        clock.set_wall(epoch(1_600_000_000));
        clock.advance(SEC);
        assert_eq!(t.take_due(clock.now()).unwrap().due.count, 1);
        clock.set_wall(epoch(1_800_000_000));
        assert_eq!(t.take_due(clock.now()), None);
        clock.advance(SEC);
        assert_eq!(t.take_due(clock.now()).unwrap().due.count, 1);
    }

    #[test]
    fn a_resumed_interval_keeps_its_phase() {
        let clock = FakeClock::at(epoch(1_700_000_000));
        let start = clock.now_monotonic();
        let mut t = Timeline::new(Timing::Every(10 * SEC), clock.now());
        clock.advance(35 * SEC);
        t.skip_to(clock.now());
        assert_eq!(t.next(), Some(SlotTime::Mono(start + 40 * SEC)));
        assert_eq!(t.take_due(clock.now()), None);
    }

    /// The simulation behind BENCHMARKS.md's "0 duplicate runs over
    /// 10,000 slots": a 1 s schedule driven by a timer that wakes up to
    /// 300 ms early or late at random, with runs that take a random time
    /// (some longer than the interval) and a stall of 3.7 s now and then,
    /// under the default policies.
    /// Every run is tied to the slot it was started for: no slot runs
    /// twice, none runs before its time, every slot is accounted for.
    #[test]
    fn ten_thousand_slots_with_jittered_timers_run_no_slot_twice_and_none_early() {
        for seed in 1..=3u64 {
            let clock = FakeClock::at(epoch(1_700_000_000)).jitter(300 * MS, 300 * MS, seed);
            let policy = Policy {
                overlap: Overlap::Forbid,
                missed: Missed::RunOnce,
                grace: SEC,
            };
            let mut t = Timeline::new(Timing::Every(SEC), clock.now());
            let mut runs_per_slot: HashMap<Duration, u32> = HashMap::new();
            let (mut slots, mut runs, mut skips, mut misses, mut owed) = (0u64, 0u64, 0, 0, 0);
            // The unfinished run ends at this monotonic time.
            let mut running_until: Option<Duration> = None;
            let (mut rng, mut wakes) = (seed, 0u64);
            while slots < 10_000 {
                let deadline = t.next().unwrap().deadline();
                clock.sleep_until(deadline);
                wakes += 1;
                if wakes % 499 == 0 {
                    clock.advance(3700 * MS);
                }
                let now = clock.now();
                if running_until.is_some_and(|end| now.mono >= end) {
                    running_until = None;
                }
                let Some(taken) = t.take_due(now) else {
                    continue;
                };
                assert!(taken.newest.is_due(now), "a slot handed out early");
                slots += taken.due.count;
                let d = policy.decide(
                    Some(taken.due),
                    usize::from(running_until.is_some()),
                    &mut owed,
                );
                if d.start > 0 {
                    let SlotTime::Mono(at) = taken.newest else {
                        unreachable!()
                    };
                    *runs_per_slot.entry(at).or_default() += d.start;
                    runs += u64::from(d.start);
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    running_until = Some(now.mono + Duration::from_millis((rng >> 33) % 1500));
                }
                skips += d.skipped;
                misses += d.missed;
            }
            assert!(clock.early_wakes() > 1000, "the timer woke early often");
            let twice: Vec<_> = runs_per_slot.iter().filter(|&(_, &n)| n > 1).collect();
            assert!(twice.is_empty(), "slots run twice: {twice:?}");
            assert_eq!(
                runs + skips + misses,
                slots,
                "every slot accounted for once"
            );
            assert!(
                runs > 5_000 && skips > 500 && misses > 20,
                "runs {runs} skips {skips} misses {misses}"
            );
        }
    }

    #[cfg(feature = "cron")]
    mod cron {
        use super::*;
        use crate::beat::cron::CronTiming;
        use chrono::{DateTime, TimeZone, Utc};
        use chrono_tz::Tz;
        use std::collections::HashSet;

        fn cron(expr: &str, zone: &str) -> Timing {
            Timing::Cron(Box::new(CronTiming::parse(expr, zone).unwrap()))
        }

        fn local(zone: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> SystemTime {
            SystemTime::from(
                zone.with_ymd_and_hms(y, m, d, h, min, 0)
                    .earliest()
                    .unwrap(),
            )
        }

        fn show(zone: Tz, t: SystemTime) -> String {
            DateTime::<Utc>::from(t)
                .with_timezone(&zone)
                .format("%m-%d %H:%M%:z")
                .to_string()
        }

        /// Runs a timeline on a jittered fake clock from `from` for
        /// `span`, and returns the slots handed out, in local time.
        fn fire_times(
            timing: Timing,
            zone: Tz,
            from: SystemTime,
            span: Duration,
            seed: u64,
        ) -> Vec<String> {
            let clock = FakeClock::at(from).jitter(20 * MS, 20 * MS, seed);
            let mut t = Timeline::new(timing, clock.now());
            let end = from + span;
            let mut out = Vec::new();
            while let Some(next) = t.next() {
                if next.wall_estimate(clock.now()) > end {
                    break;
                }
                clock.sleep_until(next.deadline());
                if let Some(taken) = t.take_due(clock.now()) {
                    assert_eq!(taken.due.count, 1);
                    let SlotTime::Wall(w) = taken.newest else {
                        unreachable!()
                    };
                    assert!(clock.now_wall() >= w, "early");
                    out.push(show(zone, w));
                }
            }
            out
        }

        #[test]
        fn a_daily_job_across_both_changes_in_berlin_and_new_york() {
            let berlin = Tz::Europe__Berlin;
            let ny = Tz::America__New_York;
            let week = Duration::from_secs(3 * 24 * 3600);
            let spring = fire_times(
                cron("30 2 * * *", "Europe/Berlin"),
                berlin,
                local(berlin, 2025, 3, 29, 0, 0),
                week,
                1,
            );
            assert_eq!(
                spring,
                [
                    "03-29 02:30+01:00",
                    "03-30 03:00+02:00",
                    "03-31 02:30+02:00"
                ]
            );
            let fall = fire_times(
                cron("30 2 * * *", "Europe/Berlin"),
                berlin,
                local(berlin, 2025, 10, 25, 0, 0),
                week,
                2,
            );
            assert_eq!(
                fall,
                [
                    "10-25 02:30+02:00",
                    "10-26 02:30+02:00",
                    "10-27 02:30+01:00"
                ]
            );
            let spring = fire_times(
                cron("30 2 * * *", "America/New_York"),
                ny,
                local(ny, 2025, 3, 8, 0, 0),
                week,
                3,
            );
            assert_eq!(
                spring,
                [
                    "03-08 02:30-05:00",
                    "03-09 03:00-04:00",
                    "03-10 02:30-04:00"
                ]
            );
            let fall = fire_times(
                cron("30 1 * * *", "America/New_York"),
                ny,
                local(ny, 2025, 11, 1, 0, 0),
                week,
                4,
            );
            assert_eq!(
                fall,
                [
                    "11-01 01:30-04:00",
                    "11-02 01:30-04:00",
                    "11-03 01:30-05:00"
                ]
            );
        }

        #[test]
        fn an_hourly_job_across_both_changes_runs_every_real_hour() {
            for (name, zone, spring, fall) in [
                (
                    "Europe/Berlin",
                    Tz::Europe__Berlin,
                    (2025, 3, 30),
                    (2025, 10, 26),
                ),
                (
                    "America/New_York",
                    Tz::America__New_York,
                    (2025, 3, 9),
                    (2025, 11, 2),
                ),
            ] {
                for (y, m, d) in [spring, fall] {
                    let from = local(zone, y, m, d, 0, 0) - Duration::from_secs(1);
                    let day = Duration::from_secs(24 * 3600);
                    let got = fire_times(cron("0 * * * *", name), zone, from, 2 * day, 5);
                    // Two days of real time hold 48 real hours: 48 runs,
                    // whatever the wall clock did.
                    assert_eq!(got.len(), 48, "{name}: {got:?}");
                    let unique: HashSet<_> = got.iter().collect();
                    assert_eq!(unique.len(), 48, "{name}: a slot twice: {got:?}");
                }
            }
        }

        #[test]
        fn a_clock_set_back_repeats_no_slot_and_one_set_forward_makes_slots_due() {
            let zone = Tz::UTC;
            let start = local(zone, 2025, 6, 1, 12, 0);
            let clock = FakeClock::at(start);
            let mut t = Timeline::new(cron("*/10 * * * *", "UTC"), clock.now());
            let mut handed = Vec::new();
            let mut look = |t: &mut Timeline, clock: &FakeClock| {
                if let Some(taken) = t.take_due(clock.now()) {
                    let SlotTime::Wall(w) = taken.newest else {
                        unreachable!()
                    };
                    handed.push((show(zone, w), taken.due.count));
                }
            };
            for _ in 0..3 {
                clock.sleep_until(t.next().unwrap().deadline());
                look(&mut t, &clock);
            }
            // 12:10, 12:20, 12:30 ran. The clock is set back 25 minutes, to 12:05.
            clock.set_wall(local(zone, 2025, 6, 1, 12, 5));
            look(&mut t, &clock);
            assert_eq!(
                t.next(),
                Some(SlotTime::Wall(local(zone, 2025, 6, 1, 12, 40)))
            );
            // 12:10 .. 12:30 come round again on the wall clock: nothing runs.
            for _ in 0..30 {
                clock.advance(Duration::from_secs(60));
                look(&mut t, &clock);
            }
            assert_eq!(clock.now_wall(), local(zone, 2025, 6, 1, 12, 35));
            clock.sleep_until(t.next().unwrap().deadline());
            look(&mut t, &clock);
            // Set forward by an hour: six slots due at once.
            clock.set_wall(local(zone, 2025, 6, 1, 13, 41));
            look(&mut t, &clock);
            assert_eq!(
                handed,
                [
                    ("06-01 12:10+00:00".to_string(), 1),
                    ("06-01 12:20+00:00".to_string(), 1),
                    ("06-01 12:30+00:00".to_string(), 1),
                    ("06-01 12:40+00:00".to_string(), 1),
                    ("06-01 13:40+00:00".to_string(), 6),
                ]
            );
        }

        #[test]
        fn a_clock_corrected_from_years_ahead_runs_the_corrected_times_slots() {
            let zone = Tz::UTC;
            let wrong = local(zone, 2040, 1, 1, 0, 0);
            let clock = FakeClock::at(wrong);
            let mut t = Timeline::new(cron("0 * * * *", "UTC"), clock.now());
            clock.sleep_until(t.next().unwrap().deadline());
            assert!(t.take_due(clock.now()).is_some()); // 2040-01-01 01:00
            // NTP steps the clock back to the real time.
            let right = local(zone, 2025, 6, 1, 12, 30);
            clock.set_wall(right);
            assert_eq!(t.take_due(clock.now()), None);
            assert_eq!(
                t.next(),
                Some(SlotTime::Wall(local(zone, 2025, 6, 1, 13, 0)))
            );
            // Years later, the slot handed out in 2040 is still skipped.
            clock.set_wall(local(zone, 2040, 1, 1, 0, 30));
            t.take_due(clock.now());
            assert_eq!(
                t.next(),
                Some(SlotTime::Wall(local(zone, 2040, 1, 1, 2, 0)))
            );
        }

        #[test]
        fn ten_thousand_cron_slots_with_jitter_and_clock_jumps_run_once_each() {
            let zone = Tz::Europe__Berlin;
            // Every 10 s, through the fall-back night, the wall clock set
            // back 45 s or forward 35 s now and then.
            let from = local(zone, 2025, 10, 26, 1, 0);
            let clock = FakeClock::at(from).jitter(3 * SEC, 3 * SEC, 9);
            let mut t = Timeline::new(cron("*/10 * * * * *", "Europe/Berlin"), clock.now());
            let mut seen = HashSet::new();
            let (mut slots, mut looks) = (0u64, 0u64);
            while slots < 10_000 {
                clock.sleep_until(t.next().unwrap().deadline());
                looks += 1;
                if looks % 97 == 0 {
                    clock.set_wall(clock.now_wall() - Duration::from_secs(45));
                } else if looks % 89 == 0 {
                    clock.set_wall(clock.now_wall() + Duration::from_secs(35));
                }
                let now = clock.now();
                let Some(taken) = t.take_due(now) else {
                    continue;
                };
                let SlotTime::Wall(w) = taken.newest else {
                    unreachable!()
                };
                assert!(now.wall >= w, "early");
                assert!(seen.insert(w), "slot {} handed out twice", show(zone, w));
                slots += taken.due.count;
            }
            assert!(clock.early_wakes() > 1000);
        }
    }
}
