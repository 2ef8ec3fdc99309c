//! Memory: one million tiny jobs through `imap` keep the caller's resident
//! memory flat. This file holds a single test because it measures the whole
//! process.

mod common;

use forkpool::Pool;

fn resident_kib() -> u64 {
    common::status_number("self", "VmRSS:")
}

fn triple(x: u64) -> u64 {
    3 * x
}

/// Growth allowed after the first 100,000 items (allocator arenas and
/// buffers settling). Measured: see RELIABILITY.md.
const SETTLE_KIB: u64 = 16 * 1024;
/// Growth allowed over the second half: flat, give or take a page or two
/// of allocator noise.
const FLAT_KIB: u64 = 2 * 1024;

#[test]
fn a_million_tiny_jobs_through_imap_keep_the_callers_memory_flat() {
    let n = 1_000_000u64;
    let pool = Pool::new(2).unwrap();
    let mut baseline = 0;
    let mut half = 0;
    let mut peak = 0;
    let mut samples = Vec::new();
    for (i, r) in pool.imap(triple, 0..n).enumerate() {
        assert_eq!(r, Ok(3 * i as u64));
        if i == 100_000 {
            baseline = resident_kib();
        }
        if i == 500_000 {
            half = resident_kib();
        }
        if i > 100_000 && i % 50_000 == 0 {
            let now = resident_kib();
            peak = peak.max(now);
            samples.push(now);
        }
    }
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed), (n, n));
    eprintln!(
        "imap of {n}: resident {baseline} KiB after 100k items, {half} KiB after 500k, \
         peak {peak} KiB (+{} KiB; +{} KiB over the second half); samples {samples:?}",
        peak.saturating_sub(baseline),
        peak.saturating_sub(half)
    );
    assert!(
        peak <= baseline + SETTLE_KIB,
        "resident memory grew from {baseline} KiB to {peak} KiB: {samples:?}"
    );
    assert!(
        peak <= half + FLAT_KIB,
        "resident memory still grew after 500k items ({half} KiB to {peak} KiB): {samples:?}"
    );
}
