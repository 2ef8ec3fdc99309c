//! Cost as work grows (issue 15): what the caller pays per waiting and per
//! scheduled job, how long submitting takes, and `map`'s rate as pools grow
//! past the machine — each at several sizes, so that anything growing
//! faster than linearly shows.
//!
//! `cargo bench --bench growth` runs every measurement in a fresh process
//! (this binary again, with arguments), so that memory figures start from
//! the same heap:
//!
//! - **waiting N**: one worker held busy, N jobs `submit`ted behind it
//!   (handles kept); the caller's resident memory grown per job, and the
//!   time to submit them; then the worker is released and every handle is
//!   read (the time to run them all);
//! - **scheduled N**: N jobs submitted with a one-hour `countdown`; memory
//!   per job and the time to submit; then the pool is terminated (every
//!   handle resolves `Cancelled`);
//! - **submit N**: N jobs submitted to two free workers: the time of the
//!   submit loop, then of reading every result;
//! - **map W**: a pool of W workers, built and every worker past one job
//!   (each naps 20 ms, so all are needed; the build time is without the
//!   nap), then 64 warm-up items; the first `map` of `x*x` over 1,000,000
//!   ints, then the median of the three maps after it.
//!
//! `-- quick` uses smaller sizes, `-- rounds=N` runs N interleaved rounds
//! (3 by default). Each measurement prints one JSON line to stderr; the
//! summary is Markdown tables of medians with their spread.

use forkpool::{JobError, Pool};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::square;

/// Holds its worker until `flag` exists.
fn hold(flag: PathBuf) {
    while !flag.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sleeps `ms` milliseconds.
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The caller's resident memory, in bytes.
fn rss() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096.0
}

fn flag_path() -> PathBuf {
    std::env::temp_dir().join(format!("forkpool-growth-{}", std::process::id()))
}

/// One worker held, `n` jobs waiting behind it.
fn waiting(n: u64) -> String {
    let pool = Pool::new(1).expect("pool");
    let _ = pool.map(square, 0..4).expect("warm");
    let flag = flag_path();
    let _ = std::fs::remove_file(&flag);
    let blocker = pool.submit(hold, flag.clone());
    std::thread::sleep(Duration::from_millis(50));
    let before = rss();
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.submit(square, i)).collect();
    let submit = t.elapsed().as_secs_f64();
    let per_job = (rss() - before) / n as f64;
    std::fs::write(&flag, b"").expect("flag");
    let t = Instant::now();
    blocker.get().expect("blocker");
    let sum = handles
        .into_iter()
        .map(|h| h.get().expect("job"))
        .fold(0u64, u64::wrapping_add);
    let run = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&flag);
    std::hint::black_box(sum);
    format!(
        r#"{{"kind":"waiting","n":{n},"bytes_per_job":{per_job:.0},"submit_s":{submit:.4},"run_s":{run:.4}}}"#
    )
}

/// `n` jobs due in an hour.
fn scheduled(n: u64) -> String {
    let pool = Pool::new(1).expect("pool");
    let _ = pool.map(square, 0..4).expect("warm");
    let job = pool.job(square).countdown(Duration::from_secs(3600));
    let before = rss();
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| job.submit(i)).collect();
    let submit = t.elapsed().as_secs_f64();
    let per_job = (rss() - before) / n as f64;
    drop(job);
    pool.terminate();
    let cancelled = handles
        .into_iter()
        .map(|h| h.get())
        .filter(|r| matches!(r, Err(JobError::Cancelled)))
        .count();
    assert_eq!(
        cancelled as u64, n,
        "every scheduled job resolves Cancelled"
    );
    format!(r#"{{"kind":"scheduled","n":{n},"bytes_per_job":{per_job:.0},"submit_s":{submit:.4}}}"#)
}

/// `n` jobs submitted to two free workers.
fn submit(n: u64) -> String {
    let pool = Pool::new(2).expect("pool");
    let _ = pool.map(square, 0..8).expect("warm");
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.submit(square, i)).collect();
    let submit = t.elapsed().as_secs_f64();
    let sum = handles
        .into_iter()
        .map(|h| h.get().expect("job"))
        .fold(0u64, u64::wrapping_add);
    let total = t.elapsed().as_secs_f64();
    std::hint::black_box(sum);
    format!(r#"{{"kind":"submit","n":{n},"submit_s":{submit:.4},"total_s":{total:.4}}}"#)
}

/// The first and the steady `map` rate of a pool of `workers`.
fn map(workers: usize) -> String {
    const N: u64 = 1_000_000;
    let t = Instant::now();
    let pool = Pool::new(workers).expect("pool");
    // Every worker up and past a job (each naps, so all are needed).
    let naps: Vec<_> = (0..workers).map(|_| pool.submit(nap, 20)).collect();
    for h in naps {
        h.get().expect("nap");
    }
    let build_ms = t.elapsed().as_secs_f64() * 1e3 - 20.0;
    let _ = pool.map(square, 0..64).expect("warm");
    let rate = || {
        let t = Instant::now();
        let out = pool.map(square, 0..N).expect("map");
        assert_eq!(out.len() as u64, N);
        N as f64 / t.elapsed().as_secs_f64()
    };
    let first = rate();
    let mut steady: Vec<f64> = (0..3).map(|_| rate()).collect();
    steady.sort_by(f64::total_cmp);
    format!(
        r#"{{"kind":"map","workers":{workers},"first":{first:.0},"steady":{:.0},"build_ms":{build_ms:.2}}}"#,
        steady[1]
    )
}

fn run_child(args: &[String]) -> String {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(args)
        .output()
        .expect("run a measurement");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("utf-8");
    line.trim().lines().last().expect("one line").to_string()
}

fn field(line: &str, key: &str) -> f64 {
    let at = line.find(&format!("\"{key}\":")).expect("field") + key.len() + 3;
    let rest = &line[at..];
    let end = rest.find([',', '}']).expect("end");
    rest[..end].parse().expect("number")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench" && a != "--")
        .collect();
    if let [kind, size] = &args[..]
        && let Ok(n) = size.parse::<u64>()
    {
        let line = match kind.as_str() {
            "waiting" => waiting(n),
            "scheduled" => scheduled(n),
            "submit" => submit(n),
            "map" => map(n as usize),
            other => panic!("unknown measurement {other}"),
        };
        println!("{line}");
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let rounds: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("rounds="))
        .map_or(3, |r| r.parse().expect("rounds=N"));
    let sizes: &[u64] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let workers: &[u64] = if quick { &[2, 64] } else { &[2, 16, 64, 256] };
    let mut configs: Vec<(&str, u64)> = Vec::new();
    for kind in ["waiting", "scheduled", "submit"] {
        configs.extend(sizes.iter().map(|&n| (kind, n)));
    }
    configs.extend(workers.iter().map(|&w| ("map", w)));
    // Rounds interleave the configurations, so that a slow spell of a
    // shared machine hits them all alike.
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); configs.len()];
    for _ in 0..rounds {
        for (i, (kind, n)) in configs.iter().enumerate() {
            let line = run_child(&[kind.to_string(), n.to_string()]);
            eprintln!("{line}");
            lines[i].push(line);
        }
    }
    // Median and spread of a field over the rounds.
    let stat = |i: usize, key: &str, scale: f64| {
        let mut v: Vec<f64> = lines[i].iter().map(|l| field(l, key) * scale).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!("{rounds} rounds; medians (min..max)\n");
    println!(
        "| measurement | size | caller bytes per job | submit, ns per job | submit and run, ns per job |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.0} ({lo:.0}..{hi:.0})");
    for (i, (kind, n)) in configs.iter().enumerate() {
        let per = 1e9 / *n as f64;
        match *kind {
            "waiting" => println!(
                "| waiting | {n} | {} | {} | {} |",
                show(stat(i, "bytes_per_job", 1.0)),
                show(stat(i, "submit_s", per)),
                show(stat(i, "run_s", per))
            ),
            "scheduled" => println!(
                "| scheduled | {n} | {} | {} | |",
                show(stat(i, "bytes_per_job", 1.0)),
                show(stat(i, "submit_s", per))
            ),
            "submit" => println!(
                "| submit | {n} | | {} | {} |",
                show(stat(i, "submit_s", per)),
                show(stat(i, "total_s", per))
            ),
            _ => {}
        }
    }
    println!("\n| workers | build + first jobs | first map of 1M | steady map |");
    println!("| ---: | ---: | ---: | ---: |");
    for (i, (kind, w)) in configs.iter().enumerate() {
        if *kind == "map" {
            let (b, ..) = stat(i, "build_ms", 1.0);
            let (f, flo, fhi) = stat(i, "first", 1e-6);
            let (st, slo, shi) = stat(i, "steady", 1e-6);
            println!(
                "| {w} | {b:.1} ms | {f:.1} M/s ({flo:.1}..{fhi:.1}) | {st:.1} M/s ({slo:.1}..{shi:.1}) |"
            );
        }
    }
}
