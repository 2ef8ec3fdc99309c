//! Seeing a running pool, measured: what `Pool::inspect` costs with many
//! jobs waiting, and what a listener (`Pool::events`) costs the jobs.
//!
//! `cargo bench --bench inspect` runs, in one process:
//!
//! - **inspect**: a queue whose one worker is held busy, with N = 0, 1,000
//!   and 10,000 jobs waiting (three priorities, so they wait in rank
//!   order); the time of `inspect()` — the first call, then the median and
//!   p99 of 200 — including its round trip to the supervisor thread and
//!   every waiting job listed;
//! - **events**: `apply` of a trivial job, 20,000 times, with nobody
//!   listening and with one subscriber draining events on a thread of its
//!   own — µs per job, median of rounds.
//!
//! `-- quick` runs fewer rounds. The last line is JSON for `benches/ab`.

use forkpool::{Pool, Queue};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn quick(x: u32) -> u32 {
    x
}

/// Holds its worker until `flag` exists.
fn hold(flag: PathBuf) {
    while !flag.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// µs of `inspect()` with `n` jobs waiting: (first, median, p99).
fn inspect_with(n: u32, calls: usize) -> (f64, f64, f64) {
    let pool = Pool::builder()
        .workers(1)
        .queue("q", Queue::new().workers(1))
        .build()
        .unwrap();
    let q = pool.queue("q").unwrap();
    let flag = std::env::temp_dir().join(format!("forkpool-bench-inspect-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let blocker = q.job(hold).priority(100).submit(flag.clone());
    let handles: Vec<_> = (0..n)
        .map(|i| q.job(quick).priority((i % 3) as i32).submit(i))
        .collect();
    while pool.inspect().active.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    let snap = pool.inspect();
    let first = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(snap.queue("q").unwrap().waiting.len(), n as usize);
    let mut times: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            let s = pool.inspect();
            let us = t.elapsed().as_secs_f64() * 1e6;
            assert!(s.totals.add_up());
            us
        })
        .collect();
    times.sort_by(f64::total_cmp);
    std::fs::write(&flag, b"").unwrap();
    blocker.get().unwrap();
    for h in handles {
        h.get().unwrap();
    }
    let _ = std::fs::remove_file(&flag);
    pool.join().unwrap();
    (first, pct(&times, 0.5), pct(&times, 0.99))
}

/// How a listener reads.
#[derive(Clone, Copy, PartialEq)]
enum Listener {
    None,
    /// Blocks for each event.
    Blocking,
    /// Takes what is there every millisecond.
    Polling,
}

/// µs per `apply`, with or without a listener.
fn apply_us(listen: Listener, jobs: u32) -> f64 {
    let pool = Pool::new(1).unwrap();
    pool.map(quick, 0..1000).unwrap();
    let reader = (listen != Listener::None).then(|| {
        let events = pool.events(1 << 16);
        std::thread::spawn(move || {
            if listen == Listener::Blocking {
                return events.count();
            }
            let mut n = 0;
            while n < 3 * jobs as usize {
                std::thread::sleep(Duration::from_millis(1));
                n += std::iter::from_fn(|| events.try_recv()).count();
            }
            n
        })
    });
    let t = Instant::now();
    for i in 0..jobs {
        pool.apply(quick, i).unwrap();
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(jobs);
    pool.join().unwrap();
    if let Some(r) = reader {
        assert!(r.join().unwrap() >= 2 * jobs as usize);
    }
    us
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick_run = std::env::args().any(|a| a == "quick");
    let (calls, rounds) = if quick_run { (50, 3) } else { (200, 7) };
    let mut json = Vec::new();
    for n in [0u32, 1_000, 10_000] {
        let (first, p50, p99) = inspect_with(n, calls);
        println!(
            "inspect, {n:>6} waiting: first {first:8.1} µs, median {p50:8.1} µs, p99 {p99:8.1} µs"
        );
        json.push(format!(
            "\"inspect_{n}_p50_us\": {p50:.1}, \"inspect_{n}_p99_us\": {p99:.1}"
        ));
    }
    let modes = [Listener::None, Listener::Blocking, Listener::Polling];
    let mut runs: [Vec<f64>; 3] = Default::default();
    for r in 0..rounds {
        // Interleaved, reversing every other round.
        for k in 0..3 {
            let k = if r % 2 == 0 { k } else { 2 - k };
            runs[k].push(apply_us(modes[k], 20_000));
        }
    }
    let [off, blocking, polling] = runs.map(median);
    println!(
        "apply, nobody listening: {off:.2} µs/job; a listener blocking per event: \
         {blocking:.2} µs/job; one reading every ms: {polling:.2} µs/job"
    );
    println!(
        "{{{}, \"apply_us\": {off:.3}, \"apply_listened_us\": {blocking:.3}, \
         \"apply_polled_us\": {polling:.3}, \"value\": {blocking:.3}}}",
        json.join(", ")
    );
}
