//! What `map`'s and `imap`'s automatic chunk sizes buy, against fixed sizes
//! and against Python's rule (four chunks per worker).
//!
//! `cargo bench --bench chunks` prints a table. Every setting runs in the
//! same process, round after round in rotating order; medians over rounds.
//! Workloads: a million tiny items, where chunks amortise per-batch costs;
//! uneven items (cost growing with the index), where chunks that are too
//! large leave one worker finishing alone; and `imap`, where what matters
//! is also how soon the first result comes back.

use forkpool::Pool;
use std::time::Instant;

mod common;
use common::square;

/// Work that grows with `x`: about `x` rounds of a cheap hash.
fn uneven(x: u64) -> u64 {
    let mut h = x;
    for _ in 0..x {
        h = h.rotate_left(5).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 1;
    }
    h
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One setting: a label and a chunk size (None = automatic).
type Setting = (&'static str, Option<usize>);

fn run(
    pool_for: &dyn Fn(Option<usize>) -> Pool,
    settings: &[Setting],
    rounds: usize,
    once: &dyn Fn(&Pool) -> Vec<f64>,
) -> Vec<Vec<f64>> {
    let pools: Vec<Pool> = settings.iter().map(|s| pool_for(s.1)).collect();
    for p in &pools {
        once(p);
    }
    let mut samples = vec![Vec::new(); settings.len()];
    for r in 0..rounds {
        for k in 0..settings.len() {
            let i = (k + r) % settings.len();
            samples[i].push(once(&pools[i]));
        }
    }
    // Medians per measured quantity.
    samples
        .into_iter()
        .map(|s| {
            (0..s[0].len())
                .map(|q| median(&mut s.iter().map(|m| m[q]).collect::<Vec<_>>()))
                .collect()
        })
        .collect()
}

fn main() {
    let workers = 2;
    let pool_for = |chunk: Option<usize>| {
        let b = Pool::builder().workers(workers);
        match chunk {
            Some(c) => b.chunk_size(c),
            None => b,
        }
        .build()
        .unwrap()
    };
    let python = |n: usize| n.div_ceil(4 * workers);

    let n = 1_000_000u64;
    let tiny: Vec<Setting> = vec![
        ("automatic", None),
        ("Python's rule", Some(python(n as usize))),
        ("256", Some(256)),
        ("4096", Some(4096)),
        ("65536", Some(65536)),
    ];
    let res = run(&pool_for, &tiny, 7, &|p| {
        let t = Instant::now();
        let out = p.map(square, 0..n).unwrap();
        assert_eq!(out.len(), n as usize);
        vec![n as f64 / t.elapsed().as_secs_f64() / 1e6]
    });
    println!("map of {n} tiny items (M items/s, median of 7)\n");
    println!("| chunk size | M items/s |\n| --- | --- |");
    for (s, r) in tiny.iter().zip(&res) {
        println!(
            "| {} ({}) | {:.1} |",
            s.0,
            s.1.map_or("≤16384".into(), |c| c.to_string()),
            r[0]
        );
    }

    let m = 20_000u64;
    let uneven_settings: Vec<Setting> = vec![
        ("automatic", None),
        ("Python's rule", Some(python(m as usize))),
        ("64", Some(64)),
        ("1024", Some(1024)),
    ];
    let res = run(&pool_for, &uneven_settings, 5, &|p| {
        let t = Instant::now();
        p.map(uneven, 0..m).unwrap();
        vec![t.elapsed().as_secs_f64() * 1e3]
    });
    println!("\nmap of {m} uneven items, item i costing ~i hash rounds (ms, median of 5)\n");
    println!("| chunk size | ms |\n| --- | --- |");
    for (s, r) in uneven_settings.iter().zip(&res) {
        println!(
            "| {} ({}) | {:.1} |",
            s.0,
            s.1.map_or("auto".into(), |c| c.to_string()),
            r[0]
        );
    }

    let imap_settings: Vec<Setting> = vec![
        ("automatic", None),
        ("1 (Python's imap default)", Some(1)),
        ("Python's map rule", Some(python(n as usize))),
    ];
    let res = run(&pool_for, &imap_settings, 5, &|p| {
        let t = Instant::now();
        let mut it = p.imap(square, 0..n);
        it.next().unwrap().unwrap();
        let first = t.elapsed().as_secs_f64() * 1e6;
        let rest = it.count() + 1;
        assert_eq!(rest, n as usize);
        vec![first, n as f64 / t.elapsed().as_secs_f64() / 1e6]
    });
    println!("\nimap over {n} tiny items (median of 5)\n");
    println!("| chunk size | first result (µs) | M items/s |\n| --- | --- | --- |");
    for (s, r) in imap_settings.iter().zip(&res) {
        println!("| {} | {:.0} | {:.2} |", s.0, r[0], r[1]);
    }
}
