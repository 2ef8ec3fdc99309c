//! Queues, priorities and autoscaling, in a small simulated service.
//!
//! ```sh
//! cargo run --release --example queues
//! ```
//!
//! The service has two queues:
//!
//! - `fast` (two workers) answers requests in a few milliseconds;
//! - `reports` (autoscaling 1 to 6 workers, 1 s keep-alive) builds slow
//!   reports, and a paying customer's report jumps the line.
//!
//! It shows that slow reports never hold up fast requests, that an urgent
//! report starts as soon as one report finishes, and that the report
//! queue's workers follow a burst up and back down. Everything it prints
//! is measured as it runs.

use forkpool::{Pool, Queue};
use std::time::{Duration, Instant};

/// A request answered in a few milliseconds.
fn lookup(key: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(3));
    key * 2
}

/// A slow report: returns its name and when it started (ms since the
/// epoch the caller gave).
fn report((name, epoch_ms, ms): (String, u64, u64)) -> (String, u64) {
    let started = now_ms() - epoch_ms;
    std::thread::sleep(Duration::from_millis(ms));
    (name, started)
}

/// Milliseconds on the system-wide monotonic clock, the same in every
/// process.
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn workers(pool: &Pool, queue: &str) -> u64 {
    pool.stats().queue(queue).map_or(0, |q| q.workers)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder()
        .workers(1)
        .queue("fast", Queue::new().workers(2))
        .queue(
            "reports",
            Queue::new()
                .autoscale(1, 6)
                .keep_alive(Duration::from_secs(1)),
        )
        .route(lookup, "fast")
        .route(report, "reports")
        .build()?;
    let reports = pool.queue("reports")?;
    let epoch = now_ms();

    // 1. A burst of reports: the queue grows to serve it.
    let t = Instant::now();
    while workers(&pool, "reports") < 1 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "reports queue: {} worker(s) before the burst",
        workers(&pool, "reports")
    );
    let burst: Vec<_> = (1..=12)
        .map(|i| reports.submit(report, (format!("monthly-{i}"), epoch, 400)))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    println!(
        "reports queue: {} worker(s) 50 ms into a burst of 12 reports (max 6)",
        workers(&pool, "reports")
    );

    // 2. Meanwhile the fast queue answers at once: its workers are its own.
    let t = Instant::now();
    let answers = pool.map(lookup, 0..20u32)?;
    println!(
        "fast queue: 20 lookups answered in {:.0?} while the reports run ({} answers)",
        t.elapsed(),
        answers.len()
    );

    // 3. A paying customer's report jumps the line.
    let submitted = now_ms() - epoch;
    let urgent = pool
        .job(report)
        .priority(10)
        .submit(("urgent-customer".into(), epoch, 100));
    let (name, started) = urgent.get()?;
    println!(
        "{name}: submitted at {submitted} ms behind {} waiting reports, started at {started} ms",
        12 - 6
    );
    let mut order: Vec<(String, u64)> = burst.into_iter().map(|h| h.get().unwrap()).collect();
    order.sort_by_key(|r| r.1);
    let first_done = order[0].1 + 400;
    let waited_behind = order.iter().filter(|r| r.1 >= first_done).count();
    println!(
        "  the first running report finished at about {first_done} ms: the urgent one took \
         that worker, ahead of {waited_behind} reports still waiting"
    );

    // 4. Idle again: the extra workers leave after the keep-alive.
    let s = pool.stats();
    let q = s.queue("reports").unwrap();
    println!(
        "reports queue: {} worker(s) right after the burst; grew {} time(s)",
        q.workers, q.grown
    );
    let t = Instant::now();
    while workers(&pool, "reports") > 1 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = pool.stats();
    let q = s.queue("reports").unwrap();
    println!(
        "reports queue: back to {} worker(s) {:.1?} later; {} left when idle, {} jobs crashed",
        q.workers,
        t.elapsed(),
        q.shrunk,
        s.crashed
    );
    pool.join()?;
    Ok(())
}
