//! A 500 MiB result is delivered intact — or, over a configured cap,
//! refused with a clear error — never truncated. One test, because it
//! reports the caller's peak memory.

mod common;

use forkpool::{JobError, Pool};

const MIB: usize = 1 << 20;

/// Block `k` of the result: its index, then the alphabet from letter
/// `k % 26` on, 1 MiB in all (built with copies only: fast in debug builds).
fn block(k: usize) -> Vec<u8> {
    let mut b = format!("block {k:08} ").into_bytes();
    let letters = b"abcdefghijklmnopqrstuvwxyz".repeat(MIB / 26 + 2);
    let from = k % 26;
    b.extend_from_slice(&letters[from..from + MIB - b.len()]);
    b
}

/// A string of `mib` MiB made of consecutive blocks.
fn big_string(mib: usize) -> String {
    let mut s = Vec::with_capacity(mib * MIB);
    for k in 0..mib {
        s.extend_from_slice(&block(k));
    }
    assert_eq!(s.len(), mib * MIB);
    String::from_utf8(s).unwrap()
}

fn kib(field: &str) -> u64 {
    common::status_number("self", field)
}

#[test]
fn a_500_mib_result_arrives_intact_or_is_refused_over_the_cap() {
    let mib = 500;
    let pool = Pool::new(1).unwrap();
    let before = kib("VmHWM:");
    let got = pool.apply(big_string, mib).unwrap();
    let peak = kib("VmHWM:");
    assert_eq!(got.len(), mib * MIB, "not truncated");
    for k in 0..mib {
        assert!(
            got.as_bytes()[k * MIB..(k + 1) * MIB] == block(k)[..],
            "block {k} corrupted"
        );
    }
    eprintln!(
        "500 MiB result: caller peak resident {} MiB before, {} MiB after (+{} MiB)",
        before / 1024,
        peak / 1024,
        (peak - before) / 1024
    );
    drop(got);
    let after = kib("VmRSS:");
    eprintln!("after dropping it: resident {} MiB", after / 1024);
    assert!(
        after < before + 64 * 1024,
        "the pool keeps {} MiB after the result was dropped",
        (after - before) / 1024
    );
    // The pool serves on, small results included.
    assert_eq!(pool.apply(big_string, 1).unwrap().len(), MIB);

    // Over a configured cap: a clear error, the worker lives on.
    let capped = Pool::builder()
        .workers(1)
        .max_message_size(256 * MIB as u64)
        .build()
        .unwrap();
    match capped.apply(big_string, mib) {
        Err(JobError::TooLarge { size, limit }) => {
            assert_eq!(limit, 256 * MIB as u64);
            assert!(size >= (mib * MIB) as u64, "{size}");
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|s| s.len())),
    }
    assert_eq!(capped.apply(big_string, 2).unwrap().len(), 2 * MIB);
    assert_eq!(capped.stats().worker_restarts, 0);
}
