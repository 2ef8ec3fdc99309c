//! Threads in the caller: a program that already runs 16 busy threads —
//! half of them taking a `Mutex` and printing while they hold it, half
//! allocating — builds a pool 200 times and runs jobs that print and
//! allocate. No worker may deadlock (a time limit turns one into a
//! failure, and a watchdog bounds the whole run).
//!
//! This is the fork-with-threads hazard: the fork server is forked from a
//! multi-threaded process. forkpool holds the stdio locks across that fork
//! and the C allocator makes itself consistent around it, so printing and
//! allocating in a job are safe; a job taking the caller's own `Mutex`
//! would not be (see README, "What a job must not do").
//!
//! The program runs as a separate process (the ignored helper test below)
//! with its output sent to /dev/null, so that it prints for real instead of
//! into the test harness's capture.

use forkpool::Pool;
use std::hint::black_box;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static SHARED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static STOP: AtomicBool = AtomicBool::new(false);
static LINES: AtomicU64 = AtomicU64::new(0);

const BUILDS: usize = 200;

fn job(x: u64) -> usize {
    println!("job {x} in worker {}", std::process::id());
    let v: Vec<String> = (0..200).map(|i| format!("{x}-{i}")).collect();
    eprintln!("job {x}: {} strings", v.len());
    v.iter().map(String::len).sum()
}

fn expected(x: u64) -> usize {
    (0..200).map(|i| format!("{x}-{i}").len()).sum()
}

fn printer(i: usize) {
    let mut n = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        {
            let mut held = SHARED.lock().unwrap();
            held.push(n);
            if held.len() > 1000 {
                held.clear();
            }
            // Prints while holding the lock: at any fork, some thread is
            // likely inside the stdout lock or this Mutex.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "thread {i} holds the lock: line {n}");
            if n.is_multiple_of(16) {
                let _ = writeln!(std::io::stderr().lock(), "thread {i}: {n}");
            }
        }
        n += 1;
        LINES.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn allocator(i: usize) {
    let mut n = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        let v: Vec<Box<[u8]>> = (0..64).map(|k| vec![i as u8; 16 + k * 97].into()).collect();
        black_box(&v);
        let s = format!("{i} {n} {}", v.len());
        black_box(s);
        n += 1;
        if n.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
}

/// The program: 16 busy threads, then 200 pools.
#[test]
#[ignore = "helper: run by the test below as a separate process"]
fn busy_caller_process() {
    if std::env::var("FORKPOOL_THREADS_HELPER").is_err() {
        return;
    }
    let threads: Vec<_> = (0..16)
        .map(|i| std::thread::spawn(move || if i % 2 == 0 { printer(i) } else { allocator(i) }))
        .collect();
    while LINES.load(Ordering::Relaxed) < 100 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    for build in 0..BUILDS {
        let pool = Pool::builder()
            .workers(2)
            .time_limit(Duration::from_secs(30))
            .build()
            .unwrap();
        let base = build as u64 * 8;
        let got = pool.map(job, base..base + 8).unwrap();
        let want: Vec<usize> = (base..base + 8).map(expected).collect();
        assert_eq!(got, want, "build {build}");
        if build % 2 == 0 {
            pool.join().unwrap();
        }
    }
    STOP.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!(
        "DONE {BUILDS} pools in {:.1?} beside 16 busy threads",
        started.elapsed()
    );
}

#[test]
fn two_hundred_pools_beside_sixteen_busy_threads_never_deadlock() {
    let log = std::env::temp_dir().join(format!("forkpool-threads-{}.log", std::process::id()));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "busy_caller_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FORKPOOL_THREADS_HELPER", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // A deadlock shows as a hang: give it far more than it needs.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let tail: String = text
        .lines()
        .filter(|l| !l.starts_with("thread ") && !l.starts_with("job "))
        .collect::<Vec<_>>()
        .join("\n");
    let status = status.unwrap_or_else(|| panic!("the busy caller hung: {tail}"));
    assert!(
        status.success(),
        "the busy caller failed ({status}): {tail}"
    );
    assert!(tail.contains("DONE 200 pools"), "{tail}");
    eprintln!("{}", tail.lines().find(|l| l.starts_with("DONE")).unwrap());
}
