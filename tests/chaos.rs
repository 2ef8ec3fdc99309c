//! Chaos: 100,000 jobs submitted from four threads (two through `submit`,
//! two through `imap` in batches) while faults are injected — jobs that
//! panic, abort, segfault, exit, leak past the memory limit, or hang past
//! the hard limit — and, from outside, workers are SIGKILLed at random
//! moments and the fork server is killed a few times.
//!
//! Checked: every job resolves exactly once with the outcome its input
//! predicts (or `Crashed` when a kill from outside got it first, never more
//! of those than kills sent); no job runs twice (each job bumps its own
//! counter in memory shared by every process of the test) and every job
//! that answered ran exactly once; `stats()` agrees with the counts; the
//! pool ends at full strength; and once it is dropped no process and no
//! descriptor is left.
//!
//! `cargo test --test chaos` runs the CI size. The soak is the same with
//! more jobs: `FORKPOOL_SOAK_JOBS=1000000 cargo test --release --test chaos
//! -- --ignored soak --nocapture` (see RELIABILITY.md). This file counts
//! process-wide resources: run one of its tests at a time.

mod common;
#[path = "common/chaos.rs"]
mod run;

use run::{Layout, run_chaos};

#[test]
fn chaos_100k_jobs_resolve_exactly_once() {
    run_chaos(100_000, 0x5eed_f00d, Layout::OneQueue);
}

#[test]
#[ignore = "soak: FORKPOOL_SOAK_JOBS=1000000 cargo test --release --test chaos -- --ignored soak"]
fn soak() {
    run::soak_from_env(0x50a_c0ffee, Layout::OneQueue);
}
