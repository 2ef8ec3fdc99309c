//! Chaos across queues: the run of `tests/chaos.rs` (jobs that panic,
//! abort, segfault, exit, leak past the memory limit or hang past the hard
//! limit; workers SIGKILLed from outside at random moments; the fork server
//! killed three times) on a pool of three queues — a fixed one, one that
//! autoscales between 1 and 3 workers, and one whose jobs carry random
//! priorities.
//!
//! Checked, on top of what `chaos.rs` checks (every job resolves exactly
//! once with its predicted outcome, none runs twice, the counts add up, no
//! process or descriptor is left): the jobs of the ranked queue start in
//! priority order, first-in-first-out among equals, whatever the faults;
//! and once idle, every queue is back to its own strength — the
//! autoscaling one to its minimum.
//!
//! `FORKPOOL_SOAK_JOBS=1000000 cargo test --release --test chaos_queues --
//! --ignored soak --nocapture` is the soak. This file counts process-wide
//! resources: run one of its tests at a time.

mod common;
#[path = "common/chaos.rs"]
mod run;

use run::{Layout, run_chaos};

#[test]
fn chaos_across_queues_priorities_and_autoscaling() {
    run_chaos(30_000, 0x0b5e_55ed, Layout::Queues);
}

#[test]
#[ignore = "soak: FORKPOOL_SOAK_JOBS=1000000 cargo test --release --test chaos_queues -- --ignored soak"]
fn soak() {
    run::soak_from_env(0x5eed_5eed, Layout::Queues);
}
