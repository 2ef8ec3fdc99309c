//! What a schedule does with the slots that came due: the overlap policy
//! ([`Overlap`]) and the missed-slot policy ([`Missed`]), as types, and
//! [`Policy::decide`], a pure function of them (like the supervisor's
//! `autoscale.rs`): the runner acts on its [`Decision`], the tests call
//! it with made-up situations.
//!
//! The rules, in the order they apply when `n` slots came due at once:
//!
//! 1. **Missed slots.** The newest of the `n` is the slot of now; the
//!    `n - 1` before it were missed (their successor came before they
//!    ran), and the newest itself is missed too if it is seen more than
//!    the grace after its time. The missed policy says how many runs the
//!    `n` slots are worth: [`Missed::RunOnce`] one, [`Missed::Skip`] one
//!    if the newest is on time and none otherwise,
//!    [`Missed::RunUpTo`]`(k)` up to `k`. Slots worth no run count as
//!    misses.
//! 2. **Overlap.** With [`Overlap::Allow`] every run starts now. With
//!    [`Overlap::Replace`] one run starts now (the others would only
//!    replace each other: they count as misses) and the schedule's
//!    unfinished runs are cancelled. With [`Overlap::Forbid`] a run
//!    starts only when none of the schedule's runs is unfinished:
//!    otherwise the slots' runs are skipped and counted as skips;
//!    catch-up runs beyond the first (`RunUpTo`) are *owed* and start one
//!    at a time, each when the one before has finished.
//!
//! So at most one run starts per slot, a run is never started for a slot
//! that was not due, and every due slot is counted exactly once: as a
//! run, a skip, or a miss (`runs + skips + misses` over a schedule's life
//! is the number of slots that came due; owed runs count as runs when
//! they start, as misses if the schedule is paused first).

use crate::control::schedules::{Missed, Overlap};
use std::time::Duration;

/// A schedule's policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) overlap: Overlap,
    pub(crate) missed: Missed,
    /// How late the newest due slot may be and still be on time.
    pub(crate) grace: Duration,
}

/// Slots that came due at one look at the clock (see `timeline.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    /// How many (at least 1).
    pub(crate) count: u64,
    /// How late the newest of them is seen.
    pub(crate) newest_late: Duration,
}

/// What to do for one schedule now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Decision {
    /// Runs to start now.
    pub(crate) start: u32,
    /// Cancel the schedule's unfinished runs first ([`Overlap::Replace`]).
    pub(crate) cancel_running: bool,
    /// Slots skipped because a run was unfinished ([`Overlap::Forbid`]).
    pub(crate) skipped: u64,
    /// Slots missed and worth no run.
    pub(crate) missed: u64,
}

impl Policy {
    /// The most catch-up runs one batch of due slots is worth.
    fn most_runs(&self) -> u32 {
        match self.missed {
            Missed::RunOnce | Missed::Skip => 1,
            Missed::RunUpTo(k) => k.max(1),
        }
    }

    /// What to do now: `due` is the slots that came due since the last
    /// look (`None`: none — the look is for a finished run), `running`
    /// the schedule's runs not finished, `owed` the catch-up runs owed
    /// ([`Overlap::Forbid`] only), which this updates.
    pub(crate) fn decide(&self, due: Option<Due>, running: usize, owed: &mut u32) -> Decision {
        let mut d = Decision::default();
        if let Some(due) = due {
            debug_assert!(due.count >= 1);
            let on_time = due.newest_late <= self.grace;
            let worth = match self.missed {
                Missed::RunOnce => 1,
                Missed::Skip => u64::from(on_time),
                Missed::RunUpTo(k) => due.count.min(u64::from(k.max(1))),
            };
            d.missed = due.count - worth;
            match self.overlap {
                Overlap::Allow => d.start = worth as u32,
                Overlap::Replace => {
                    let runs = worth.min(1);
                    d.missed += worth - runs;
                    d.start = runs as u32;
                    d.cancel_running = runs > 0 && running > 0;
                }
                Overlap::Forbid if running > 0 => d.skipped = worth,
                Overlap::Forbid => {
                    // Owed runs are capped at what one batch is worth;
                    // beyond that they are misses.
                    let total = u64::from(*owed) + worth;
                    let cap = u64::from(self.most_runs());
                    d.missed += total.saturating_sub(cap);
                    *owed = total.min(cap) as u32;
                }
            }
        }
        if self.overlap == Overlap::Forbid && running == 0 && *owed > 0 {
            d.start = 1;
            *owed -= 1;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn policy(overlap: Overlap, missed: Missed) -> Policy {
        Policy {
            overlap,
            missed,
            grace: GRACE,
        }
    }

    fn due(count: u64, late_ms: u64) -> Option<Due> {
        Some(Due {
            count,
            newest_late: Duration::from_millis(late_ms),
        })
    }

    fn decision(start: u32, cancel_running: bool, skipped: u64, missed: u64) -> Decision {
        Decision {
            start,
            cancel_running,
            skipped,
            missed,
        }
    }

    #[test]
    fn one_slot_on_time_starts_one_run_under_every_policy() {
        for overlap in [Overlap::Forbid, Overlap::Allow, Overlap::Replace] {
            for missed in [Missed::RunOnce, Missed::Skip, Missed::RunUpTo(3)] {
                let mut owed = 0;
                let d = policy(overlap, missed).decide(due(1, 3), 0, &mut owed);
                assert_eq!(d, decision(1, false, 0, 0), "{overlap:?} {missed:?}");
                assert_eq!(owed, 0);
            }
        }
    }

    #[test]
    fn nothing_due_does_nothing() {
        for overlap in [Overlap::Forbid, Overlap::Allow, Overlap::Replace] {
            let mut owed = 0;
            let d = policy(overlap, Missed::RunOnce).decide(None, 1, &mut owed);
            assert_eq!(d, Decision::default());
        }
    }

    #[test]
    fn a_stall_is_worth_what_the_missed_policy_says() {
        let mut owed = 0;
        let allow = |m| policy(Overlap::Allow, m);
        // Ten slots came due at once; the newest is 30 s late.
        assert_eq!(
            allow(Missed::RunOnce).decide(due(10, 30_000), 0, &mut owed),
            decision(1, false, 0, 9)
        );
        assert_eq!(
            allow(Missed::Skip).decide(due(10, 30_000), 0, &mut owed),
            decision(0, false, 0, 10)
        );
        assert_eq!(
            allow(Missed::RunUpTo(3)).decide(due(10, 30_000), 0, &mut owed),
            decision(3, false, 0, 7)
        );
        assert_eq!(
            allow(Missed::RunUpTo(30)).decide(due(10, 30_000), 0, &mut owed),
            decision(10, false, 0, 0)
        );
        // With Skip, the newest slot still runs when it is within the grace.
        assert_eq!(
            allow(Missed::Skip).decide(due(10, 200), 0, &mut owed),
            decision(1, false, 0, 9)
        );
        // One slot seen late: RunOnce runs it, Skip does not.
        assert_eq!(
            allow(Missed::RunOnce).decide(due(1, 60_000), 0, &mut owed),
            decision(1, false, 0, 0)
        );
        assert_eq!(
            allow(Missed::Skip).decide(due(1, 60_000), 0, &mut owed),
            decision(0, false, 0, 1)
        );
        assert_eq!(owed, 0, "only Forbid owes runs");
    }

    #[test]
    fn forbid_skips_while_a_run_is_unfinished_and_counts_it() {
        let p = policy(Overlap::Forbid, Missed::RunOnce);
        let mut owed = 0;
        assert_eq!(p.decide(due(1, 0), 1, &mut owed), decision(0, false, 1, 0));
        // A stall while a run is unfinished: one skip, the rest misses.
        assert_eq!(
            p.decide(due(5, 9_000), 1, &mut owed),
            decision(0, false, 1, 4)
        );
        assert_eq!(owed, 0);
    }

    #[test]
    fn forbid_runs_catch_up_runs_one_after_another() {
        let p = policy(Overlap::Forbid, Missed::RunUpTo(3));
        let mut owed = 0;
        // Ten slots missed: 3 runs are worth it, 7 are misses; one starts.
        assert_eq!(
            p.decide(due(10, 9_000), 0, &mut owed),
            decision(1, false, 0, 7)
        );
        assert_eq!(owed, 2);
        // While it runs nothing more starts.
        assert_eq!(p.decide(None, 1, &mut owed), Decision::default());
        // A slot that comes meanwhile is skipped; the owed runs stay owed.
        assert_eq!(p.decide(due(1, 0), 1, &mut owed), decision(0, false, 1, 0));
        assert_eq!(owed, 2);
        // It finished: the next owed run starts, then the last.
        assert_eq!(p.decide(None, 0, &mut owed), decision(1, false, 0, 0));
        assert_eq!(p.decide(None, 0, &mut owed), decision(1, false, 0, 0));
        assert_eq!(owed, 0);
        assert_eq!(p.decide(None, 0, &mut owed), Decision::default());
    }

    #[test]
    fn forbid_never_owes_more_than_one_batch_is_worth() {
        let p = policy(Overlap::Forbid, Missed::RunUpTo(3));
        let mut owed = 2;
        // Nothing runs, two are owed, and 3 more slots came: 5 wanted, the
        // cap is 3, so 2 are misses; one starts.
        assert_eq!(
            p.decide(due(3, 9_000), 0, &mut owed),
            decision(1, false, 0, 2)
        );
        assert_eq!(owed, 2);
    }

    #[test]
    fn replace_cancels_the_unfinished_run_and_starts_one() {
        let p = policy(Overlap::Replace, Missed::RunUpTo(5));
        let mut owed = 0;
        assert_eq!(p.decide(due(1, 0), 1, &mut owed), decision(1, true, 0, 0));
        assert_eq!(p.decide(due(1, 0), 0, &mut owed), decision(1, false, 0, 0));
        // Catch-up runs would replace each other: one run, the rest missed.
        assert_eq!(
            p.decide(due(4, 9_000), 2, &mut owed),
            decision(1, true, 0, 3)
        );
        // Nothing worth running: nothing is cancelled.
        let skip = policy(Overlap::Replace, Missed::Skip);
        assert_eq!(
            skip.decide(due(4, 9_000), 1, &mut owed),
            decision(0, false, 0, 4)
        );
        assert_eq!(owed, 0);
    }

    #[test]
    fn every_due_slot_is_counted_once() {
        // runs + skips + misses == slots, for every policy and situation.
        for overlap in [Overlap::Forbid, Overlap::Allow, Overlap::Replace] {
            for missed in [
                Missed::RunOnce,
                Missed::Skip,
                Missed::RunUpTo(1),
                Missed::RunUpTo(4),
            ] {
                for running in [0, 1, 3] {
                    for count in [1, 2, 7, 1000] {
                        for late in [0, 900, 1001, 50_000] {
                            let p = policy(overlap, missed);
                            let mut owed = 0;
                            let mut d = p.decide(due(count, late), running, &mut owed);
                            let mut total = u64::from(d.start) + d.skipped + d.missed;
                            // The owed runs start as earlier ones finish.
                            while owed > 0 {
                                d = p.decide(None, 0, &mut owed);
                                assert_eq!(d.start, 1);
                                total += 1;
                            }
                            assert_eq!(
                                total, count,
                                "{overlap:?} {missed:?} running {running} count {count} late {late}"
                            );
                        }
                    }
                }
            }
        }
    }
}
