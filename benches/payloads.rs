//! `map` of 1 MiB payloads: the first map of a fresh pool and the steady
//! state, with the page faults the calling process takes.
//!
//! `cargo bench --bench payloads` echoes 64 payloads of 1 MiB through a
//! pool of 2 workers (chunk size 1, payloads made as the map reads them, as
//! in `benches/compare`), 20 times on one pool, and prints per map the rate
//! and the minor faults the calling process (caller, supervisor and
//! prefault threads) took per MiB. The last line is JSON for `benches/ab`:
//! `value` is the median rate of the steady maps (all but the first),
//! `first` the first map's rate. `benches/ab ... -- 1` runs a single map:
//! then `value` is that fresh pool's first map, as `benches/compare`
//! measures it. `benches/ab ... -- fat` times instead a map of 4,000 small
//! items whose results are 300 KiB each (default chunking: several big
//! answers per batch); `value` is then its time in seconds.

use std::time::Instant;

mod common;
use common::echo;
use serde_bytes::ByteBuf;

/// Minor page faults of this process so far (all its threads).
fn faults() -> i64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the rusage we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

/// A small argument, a big result.
fn fat(i: u32) -> ByteBuf {
    ByteBuf::from(vec![i as u8; 300 << 10])
}

fn fat_results() {
    let pool = forkpool::Pool::new(2).unwrap();
    pool.map(fat, 0..100).unwrap();
    let t = Instant::now();
    let out = pool.map(fat, 0..4000).unwrap();
    let dt = t.elapsed().as_secs_f64();
    assert!(out.iter().all(|b| b.len() == 300 << 10));
    println!("4000 results of 300 KiB: {dt:.3} s");
    println!("{{\"value\": {dt:.4}}}");
}

fn main() {
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("fat") {
        return fat_results();
    }
    let maps: usize = arg.and_then(|a| a.parse().ok()).unwrap_or(20);
    let (n, size) = (64usize, 1usize << 20);
    let pool = forkpool::Pool::builder()
        .workers(2)
        .chunk_size(1)
        .build()
        .unwrap();
    let make = move |i: usize| ByteBuf::from(vec![i as u8; size]);
    // Warm as benches/compare does: the rings and the workers' heaps.
    pool.map(echo, (0..4).map(make)).unwrap();
    let mut rates = Vec::new();
    for m in 0..maps {
        let f0 = faults();
        let t = Instant::now();
        let out = pool.map(echo, (0..n).map(make)).unwrap();
        let dt = t.elapsed().as_secs_f64();
        let f1 = faults();
        assert!(out.iter().all(|b| b.len() == size));
        let rate = (n * size) as f64 / dt / 1e9;
        println!(
            "map {m:2}: {rate:.2} GB/s, {:.0} faults per MiB in the calling process",
            (f1 - f0) as f64 / n as f64
        );
        rates.push(rate);
    }
    let first = rates[0];
    let mut steady = if rates.len() > 1 {
        rates[1..].to_vec()
    } else {
        rates.clone()
    };
    steady.sort_by(f64::total_cmp);
    println!(
        "{{\"value\": {:.4}, \"first\": {first:.4}}}",
        steady[steady.len() / 2]
    );
}
