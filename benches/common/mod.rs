//! Job functions shared by the benchmark binaries.

// Each binary uses some of them.
#![allow(dead_code)]

use serde_bytes::ByteBuf;
use std::hint::black_box;

/// The tiny job.
pub fn square(x: u64) -> u64 {
    x * x
}

/// The payload job.
pub fn echo(b: ByteBuf) -> ByteBuf {
    b
}

/// The CPU-bound job: the same loop as `spin` in compare/mp_bench.py
/// (Rust needs more iterations for a job of similar length).
pub fn spin(n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = (acc + black_box(i) * i) % 1_000_003;
    }
    acc
}
