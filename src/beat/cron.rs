//! Cron expressions in a time zone, turned into wall-clock slots (feature
//! `cron`).
//!
//! The expression is parsed by `croner` (five fields, or six with
//! seconds, or seven with a year; see [`Schedule::cron`](crate::Schedule::cron)),
//! the zone is an IANA name looked up in `chrono-tz`'s copy of the time
//! zone database. A slot is a wall-clock *instant* (a UTC time), so the
//! same local time in the two passes of a fall-back hour are two
//! different instants, and asking for the slot after an instant is never
//! ambiguous.
//!
//! What it promises: [`CronTiming::next_after`] answers the first match
//! strictly after the instant it is given — never that instant, never an
//! earlier one — with croner's daylight-saving rules (Vixie cron's, as
//! the Open Cron Pattern Specification writes them down): a fixed time
//! that falls in a spring-forward gap runs at the first time after the
//! gap, a fixed time in a fall-back overlap runs once, at its first pass;
//! wildcard and step fields run on every real occurrence. The tests below
//! pin those rules in Europe/Berlin and America/New_York.

use crate::beat::schedule::ScheduleError;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::CronParser;
use std::fmt;
use std::time::SystemTime;

/// A parsed cron expression and its time zone.
#[derive(Clone)]
pub(crate) struct CronTiming {
    /// As the user wrote it.
    expr: String,
    cron: Cron,
    zone: Tz,
}

impl fmt::Debug for CronTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronTiming")
            .field("expr", &self.expr)
            .field("zone", &self.zone.name())
            .finish()
    }
}

impl fmt::Display for CronTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cron {:?} in {}", self.expr, self.zone.name())
    }
}

/// The fields of an expression of `n` fields, by position.
fn field_names(n: usize) -> &'static [&'static str] {
    const FIVE: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    const SIX: [&str; 6] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "day-of-week",
    ];
    const SEVEN: [&str; 7] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "day-of-week",
        "year",
    ];
    match n {
        5 => &FIVE,
        6 => &SIX,
        7 => &SEVEN,
        _ => &[],
    }
}

impl CronTiming {
    /// Parses `expr` and looks up `zone`; the error names what is wrong.
    pub(crate) fn parse(expr: &str, zone: &str) -> Result<CronTiming, ScheduleError> {
        let tz: Tz = zone.parse().map_err(|_| ScheduleError::UnknownZone {
            zone: zone.to_string(),
        })?;
        let cron = CronParser::new()
            .parse(expr)
            .map_err(|e| ScheduleError::BadCron {
                expr: expr.to_string(),
                reason: Self::explain(expr, &e),
            })?;
        Ok(CronTiming {
            expr: expr.to_string(),
            cron,
            zone: tz,
        })
    }

    /// croner's message, led by the field to blame when one alone is:
    /// the one whose replacement by `*` makes the expression parse.
    fn explain(expr: &str, error: &CronError) -> String {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let names = field_names(fields.len());
        let blamed = (0..names.len()).find(|&i| {
            let mut fixed = fields.clone();
            fixed[i] = "*";
            CronParser::new().parse(&fixed.join(" ")).is_ok()
        });
        match blamed {
            Some(i) => format!("{} field {:?}: {error}", names[i], fields[i]),
            None => error.to_string(),
        }
    }

    /// The expression as given.
    pub(crate) fn expr(&self) -> &str {
        &self.expr
    }

    /// The first slot strictly after the instant `t`; `None` if the
    /// expression matches nothing after it (croner searches a few years
    /// ahead, and no further than the year 5000).
    pub(crate) fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let local = DateTime::<Utc>::from(t).with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        let next = SystemTime::from(next.with_timezone(&Utc));
        // croner's promise, which `timeline.rs` builds on.
        debug_assert!(next > t, "croner answered {next:?} after {t:?}");
        (next > t).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn at(zone: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> SystemTime {
        SystemTime::from(
            zone.with_ymd_and_hms(y, m, d, h, min, 0)
                .earliest()
                .unwrap(),
        )
    }

    /// Every slot of `expr` in `zone` on local day `y-m-d`, as local
    /// times with their UTC offsets.
    fn slots_on(expr: &str, zone: &str, y: i32, m: u32, d: u32) -> Vec<String> {
        let c = CronTiming::parse(expr, zone).unwrap();
        let day = NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut t = at(c.zone, y, m, d, 0, 0) - std::time::Duration::from_secs(1);
        let mut out = Vec::new();
        while let Some(next) = c.next_after(t) {
            let local = DateTime::<Utc>::from(next).with_timezone(&c.zone);
            if local.date_naive() != day {
                break;
            }
            out.push(local.format("%H:%M%:z").to_string());
            t = next;
        }
        out
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        let err = |e: &str| CronTiming::parse(e, "UTC").unwrap_err().to_string();
        assert_eq!(
            err("0 25 * * *"),
            "bad cron expression \"0 25 * * *\": hour field \"25\": Component error: Number out of bounds."
        );
        assert!(err("61 * * * *").contains("minute field \"61\""));
        assert!(err("* * * 13 *").contains("month field \"13\""));
        assert!(
            err("*/0 * * * *")
                .contains("minute field \"*/0\": Component error: Step cannot be zero.")
        );
        assert!(err("* * * *").contains("between 5 and 7 fields"));
        assert!(err("").contains("empty"));
        assert!(err("every day").contains("bad cron expression"));
        assert_eq!(
            CronTiming::parse("@daily", "Mars/Olympus").unwrap_err(),
            ScheduleError::UnknownZone {
                zone: "Mars/Olympus".into()
            }
        );
    }

    #[test]
    fn slots_are_strictly_after_the_instant_given() {
        let c = CronTiming::parse("30 2 * * *", "UTC").unwrap();
        let slot = at(Tz::UTC, 2025, 1, 1, 2, 30);
        assert_eq!(
            c.next_after(slot - std::time::Duration::from_millis(1)),
            Some(slot)
        );
        assert_eq!(c.next_after(slot), Some(at(Tz::UTC, 2025, 1, 2, 2, 30)));
        let half = std::time::Duration::from_millis(500);
        assert_eq!(
            c.next_after(slot + half),
            Some(at(Tz::UTC, 2025, 1, 2, 2, 30))
        );
        let every_second = CronTiming::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(slot + half),
            Some(slot + std::time::Duration::from_secs(1))
        );
    }

    // Daylight saving time, as documented on `Schedule::cron`. Berlin
    // springs forward on 2025-03-30 (02:00 CET → 03:00 CEST) and falls
    // back on 2025-10-26 (03:00 CEST → 02:00 CET); New York on 2025-03-09
    // (02:00 EST → 03:00 EDT) and 2025-11-02 (02:00 EDT → 01:00 EST).

    #[test]
    fn a_daily_job_in_the_spring_forward_gap_runs_once_right_after_it() {
        assert_eq!(
            slots_on("30 2 * * *", "Europe/Berlin", 2025, 3, 29),
            ["02:30+01:00"]
        );
        assert_eq!(
            slots_on("30 2 * * *", "Europe/Berlin", 2025, 3, 30),
            ["03:00+02:00"]
        );
        assert_eq!(
            slots_on("30 2 * * *", "Europe/Berlin", 2025, 3, 31),
            ["02:30+02:00"]
        );
        assert_eq!(
            slots_on("30 2 * * *", "America/New_York", 2025, 3, 9),
            ["03:00-04:00"]
        );
    }

    #[test]
    fn a_daily_job_in_the_fall_back_overlap_runs_once_at_its_first_pass() {
        assert_eq!(
            slots_on("30 2 * * *", "Europe/Berlin", 2025, 10, 26),
            ["02:30+02:00"]
        );
        // 02:30 happens once in New York that day (after the repeated hour) ...
        assert_eq!(
            slots_on("30 2 * * *", "America/New_York", 2025, 11, 2),
            ["02:30-05:00"]
        );
        // ... 01:30 twice: the first pass only.
        assert_eq!(
            slots_on("30 1 * * *", "America/New_York", 2025, 11, 2),
            ["01:30-04:00"]
        );
    }

    #[test]
    fn an_hourly_job_runs_once_an_hour_of_real_time_across_both_changes() {
        for (zone, spring, fall) in [
            ("Europe/Berlin", (2025, 3, 30), (2025, 10, 26)),
            ("America/New_York", (2025, 3, 9), (2025, 11, 2)),
        ] {
            let spring_day = slots_on("0 * * * *", zone, spring.0, spring.1, spring.2);
            assert_eq!(spring_day.len(), 23, "{zone}: {spring_day:?}");
            assert!(
                !spring_day.iter().any(|s| s.starts_with("02:")),
                "{zone}: 02:00 does not exist"
            );
            let fall_day = slots_on("0 * * * *", zone, fall.0, fall.1, fall.2);
            assert_eq!(fall_day.len(), 25, "{zone}: {fall_day:?}");
            // One slot an hour of real time: consecutive slots 3600 s apart.
            let c = CronTiming::parse("0 * * * *", zone).unwrap();
            for (y, m, d) in [spring, fall] {
                let mut t = at(c.zone, y, m, d, 0, 0);
                for _ in 0..30 {
                    let next = c.next_after(t).unwrap();
                    assert_eq!(next.duration_since(t).unwrap().as_secs(), 3600, "{zone}");
                    t = next;
                }
            }
        }
        let berlin_fall = slots_on("0 * * * *", "Europe/Berlin", 2025, 10, 26);
        assert_eq!(
            &berlin_fall[1..4],
            ["01:00+02:00", "02:00+02:00", "02:00+01:00"]
        );
        let ny_fall = slots_on("0 * * * *", "America/New_York", 2025, 11, 2);
        assert_eq!(&ny_fall[..3], ["00:00-04:00", "01:00-04:00", "01:00-05:00"]);
    }
}
