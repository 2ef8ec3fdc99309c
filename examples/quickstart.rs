//! forkpool in one minute: `cargo run --release --example quickstart`
//!
//! Maps a function over a million numbers in worker processes, then shows
//! that a job which crashes its worker, or hangs past its time limit, costs
//! only that job: the pool replaces the worker and keeps serving.
//!
//! With `-- --long` it ends with a long `map` to try Ctrl-C on: the handler
//! terminates the pool (no worker is left behind), the program reports how
//! every job ended — each exactly once: completed, failed or cancelled — and
//! exits with status 130.

use forkpool::{JobError, Pool};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn crash(_: ()) -> u64 {
    // A bug in native code, say: the worker process dies with SIGABRT.
    std::process::abort()
}

fn hang(_: ()) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(50));
    x
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Set while the long map runs: then `main` reports and exits after Ctrl-C.
static LONG_MAP: AtomicBool = AtomicBool::new(false);

fn main() -> Result<(), forkpool::Error> {
    let pool = Pool::builder().time_limit(Duration::from_secs(2)).build()?;

    // Ctrl-C: kill the workers now, then leave with the conventional status.
    let on_ctrl_c = pool.clone();
    ctrlc::set_handler(move || {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: terminating the pool");
        // Every job not finished resolves to Cancelled; nothing waits.
        on_ctrl_c.clone().terminate();
        if !LONG_MAP.load(Ordering::SeqCst) {
            std::process::exit(130);
        }
        // The long map returns now; `main` reports and exits.
    })
    .expect("install the Ctrl-C handler");

    println!("forkpool quickstart: {} worker processes", pool.workers());

    let started = Instant::now();
    let squares = pool.map(square, 0..1_000_000u64)?;
    let sum: u64 = squares.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    println!(
        "map:   squared 1,000,000 numbers in {:.1?} (checksum {sum:#x})",
        started.elapsed()
    );

    match pool.apply(crash, ()) {
        Err(e @ JobError::Crashed { .. }) => println!("crash: {e}"),
        other => println!("crash: unexpected {other:?}"),
    }
    println!(
        "       the pool still serves: 12 squared is {}",
        pool.apply(square, 12).unwrap()
    );

    let started = Instant::now();
    match pool.apply(hang, ()) {
        Err(e @ JobError::TimedOut { .. }) => {
            println!("hang:  {e}; killed after {:.1?}", started.elapsed())
        }
        other => println!("hang:  unexpected {other:?}"),
    }
    println!(
        "       the pool still serves: 13 squared is {}",
        pool.apply(square, 13).unwrap()
    );

    let s = pool.stats();
    println!(
        "stats: {} jobs, {} completed, {} crashed, {} timed out, {} workers restarted",
        s.submitted, s.completed, s.crashed, s.timed_out, s.worker_restarts
    );

    if std::env::args().any(|a| a == "--long") {
        LONG_MAP.store(true, Ordering::SeqCst);
        println!("long map running: press Ctrl-C to stop it");
        std::io::stdout().flush().ok();
        let done = pool.map(slow, 0..100_000u64).map(|v| v.len());
        if INTERRUPTED.load(Ordering::SeqCst) {
            // Terminated: every job has resolved, and exactly once.
            let s = pool.stats();
            println!(
                "interrupted: {} jobs: {} completed, {} failed, {} cancelled",
                s.submitted, s.completed, s.failed, s.cancelled
            );
            std::process::exit(130);
        }
        println!("long map finished: {done:?}");
    }
    pool.join()
}
