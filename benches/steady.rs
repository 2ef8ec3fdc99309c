//! Steady-state `map` of tiny items, with the CPU each side spends.
//!
//! `cargo bench --bench steady` runs 30 maps of x*x over 1,000,000 `u64`s
//! on one pool of 2 workers and prints, per map, the rate and the calling
//! thread's CPU per item; the last line is JSON (median rate, 10th
//! percentile, median caller CPU per item, workers' CPU per item) for
//! `benches/ab`, which compares builds interleaved. Unlike
//! `benches/compare`, which measures fresh processes (where the first maps
//! pay for first-touch page faults), this shows the per-item cost.

use std::time::Instant;

mod common;
use common::square;

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `(ppid, utime + stime in clock ticks)` of a process, from /proc.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((fields.get(1)?.parse().ok()?, ticks))
}

/// CPU seconds used so far by the workers: grandchildren of this process
/// (children of the fork server).
fn workers_cpu() -> f64 {
    let me = std::process::id();
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|(ppid, t)| (pid, ppid, t)))
        .collect();
    let children: Vec<u32> = procs.iter().filter(|p| p.1 == me).map(|p| p.0).collect();
    let ticks: u64 = procs
        .iter()
        .filter(|p| children.contains(&p.1))
        .map(|p| p.2)
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn main() {
    let (maps, n) = (30, 1_000_000u64);
    let pool = forkpool::Pool::new(2).unwrap();
    let mut rates = Vec::new();
    let mut caller = Vec::new();
    let workers_before = workers_cpu();
    for _ in 0..maps {
        let (t, c) = (Instant::now(), thread_cpu());
        let out = pool.map(square, 0..n).unwrap();
        let (dt, dc) = (t.elapsed().as_secs_f64(), thread_cpu() - c);
        assert_eq!(out[n as usize - 1], (n - 1) * (n - 1));
        rates.push(n as f64 / dt);
        caller.push(dc / n as f64 * 1e9);
        eprintln!(
            "{:.1} M items/s, calling thread {:.1} ns/item",
            n as f64 / dt / 1e6,
            dc / n as f64 * 1e9
        );
    }
    let workers_ns = (workers_cpu() - workers_before) / (maps as f64 * n as f64) * 1e9;
    rates.sort_by(f64::total_cmp);
    caller.sort_by(f64::total_cmp);
    println!(
        "{{\"value\": {}, \"p10\": {}, \"caller_ns\": {}, \"worker_ns\": {}}}",
        rates[maps / 2],
        rates[maps / 10],
        caller[maps / 2],
        workers_ns
    );
}
