//! Queues, priorities and autoscaling, measured.
//!
//! `cargo bench --bench queues` runs, in one process:
//!
//! - **priority dispatch**: 1,000,000 trivial jobs of random priorities
//!   (−100 to 100) submitted to workers held busy, then released: the
//!   submit rate, the rate they are dispatched and run at, and the order
//!   check — every job gets a start number from a counter shared by the
//!   workers; with one worker they must start in exact rank order, with two
//!   at most one job that outranks a job may start after it (the one
//!   handed to the other worker, not started yet). The same jobs all of
//!   priority 0, which dispatch by prefetch, run beside for comparison;
//! - **autoscale burst**: a queue of 1 to 8 workers gets 8 jobs of 500 ms
//!   at once; the time until the eighth has started (median of rounds,
//!   each on a fresh pool).
//!
//! `-- quick` runs 100,000 jobs and 3 rounds. The last line is JSON for
//! `benches/ab`.

use forkpool::{Pool, Queue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shared start counter and the release flag, mapped before the pool.
static SHARED: AtomicU64 = AtomicU64::new(0);

fn shared() -> &'static [AtomicU64; 2] {
    let p = SHARED.load(Ordering::Relaxed) as *const [AtomicU64; 2];
    assert!(!p.is_null());
    // SAFETY: SHARED holds the address of a shared mapping of two
    // counters, mapped before the pool and never unmapped.
    unsafe { &*p }
}

fn map_shared() {
    // SAFETY: a fresh anonymous shared mapping of one page; checked below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    SHARED.store(map as u64, Ordering::Relaxed);
}

/// Waits until the bench releases the workers.
fn hold(_: ()) {
    while shared()[1].load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A trivial job that takes the next start number.
fn numbered(_: u32) -> u64 {
    shared()[0].fetch_add(1, Ordering::Relaxed)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn started_at(ms: u64) -> u64 {
    let t = now_ns();
    std::thread::sleep(Duration::from_millis(ms));
    t
}

/// A small deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Dispatch {
    submit_per_s: f64,
    run_per_s: f64,
    /// The most jobs that outranked a job and started after it.
    worst_inversion: usize,
}

/// For each job, in the order they started, how many jobs that outrank it
/// started after it; the largest such count. Exact dispatch hands out work
/// in rank order and only to idle workers, so a job can be started after a
/// job it outranks only while it sits, handed out, in another worker that
/// has not started it yet: at most one per other worker.
fn worst_inversion(starts: &[u64], ideal_pos: &[usize]) -> usize {
    let n = starts.len();
    let mut by_start: Vec<usize> = (0..n).collect();
    by_start.sort_by_key(|&i| starts[i]);
    // A Fenwick tree over ideal positions of the jobs started so far.
    let mut tree = vec![0u32; n + 1];
    let mut worst = 0;
    for &i in &by_start {
        let pos = ideal_pos[i];
        let (mut k, mut before) = (pos, 0usize);
        while k > 0 {
            before += tree[k] as usize;
            k &= k - 1;
        }
        // `pos` jobs outrank it; `before` of them started before it.
        worst = worst.max(pos - before);
        let mut k = pos + 1;
        while k <= n {
            tree[k] += 1;
            k += k & k.wrapping_neg();
        }
    }
    worst
}

/// `n` trivial jobs submitted to `workers` workers held busy, then
/// released; with random priorities (exact dispatch) or all of priority 0.
fn dispatch(n: usize, workers: usize, ranked: bool) -> Dispatch {
    shared()[0].store(0, Ordering::SeqCst);
    shared()[1].store(0, Ordering::SeqCst);
    let pool = Pool::new(workers).unwrap();
    let hold_all: Vec<_> = (0..workers).map(|_| pool.submit(hold, ())).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut rng = Rng(0x5eed);
    let prios: Vec<i32> = (0..n)
        .map(|_| {
            if ranked {
                (rng.next() % 201) as i32 - 100
            } else {
                0
            }
        })
        .collect();
    let job = pool.job(numbered);
    let t = Instant::now();
    let handles: Vec<_> = prios
        .iter()
        .enumerate()
        .map(|(i, &p)| job.clone().priority(p).submit(i as u32))
        .collect();
    let submit = t.elapsed();
    // Release the workers once the supervisor has taken every job in:
    // only then do all of them wait. (Without priorities most of them are
    // already queued in the busy workers' rings.)
    if ranked {
        while pool.stats().queues[0].waiting < n as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let t = Instant::now();
    shared()[1].store(1, Ordering::Release);
    for h in hold_all {
        h.get().unwrap();
    }
    let starts: Vec<u64> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    let run = t.elapsed();
    let mut ideal: Vec<usize> = (0..n).collect();
    ideal.sort_by_key(|&i| (std::cmp::Reverse(prios[i]), i));
    let mut ideal_pos = vec![0usize; n];
    for (pos, &i) in ideal.iter().enumerate() {
        ideal_pos[i] = pos;
    }
    pool.join().unwrap();
    Dispatch {
        submit_per_s: n as f64 / submit.as_secs_f64(),
        run_per_s: n as f64 / run.as_secs_f64(),
        worst_inversion: worst_inversion(&starts, &ideal_pos),
    }
}

/// Milliseconds from submitting 8 jobs to a queue of 1 to 8 workers until
/// the eighth started.
fn autoscale_burst() -> f64 {
    let pool = Pool::builder()
        .workers(1)
        .queue("burst", Queue::new().autoscale(1, 8))
        .build()
        .unwrap();
    let q = pool.queue("burst").unwrap();
    assert!(q.apply(started_at, 0).unwrap() > 0);
    let t0 = now_ns();
    let handles: Vec<_> = (0..8).map(|_| q.submit(started_at, 500)).collect();
    let last = handles.into_iter().map(|h| h.get().unwrap()).max().unwrap();
    pool.join().unwrap();
    (last - t0) as f64 / 1e6
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (n, rounds) = if quick { (100_000, 3) } else { (1_000_000, 7) };
    map_shared();
    // First, while the process is small: forking costs grow with the
    // caller's memory, and the dispatch runs below leave it bigger.
    let mut bursts: Vec<f64> = (0..rounds).map(|_| autoscale_burst()).collect();
    let burst = median(&mut bursts);
    println!(
        "autoscale 1 -> 8 workers: the 8th job started {burst:.1} ms after the burst \
         (median of {rounds}; {:.1}..{:.1})",
        bursts[0],
        bursts[rounds - 1]
    );
    let report = |what: &str, workers: usize, d: &Dispatch| {
        println!(
            "{what}, {n} trivial jobs, {workers} worker(s): submitted at {:.0} k/s, run at \
             {:.0} k/s; at most {} job(s) outranked a job and started after it",
            d.submit_per_s / 1e3,
            d.run_per_s / 1e3,
            d.worst_inversion
        );
    };
    let exact1 = dispatch(n, 1, true);
    report("random priorities", 1, &exact1);
    assert_eq!(exact1.worst_inversion, 0, "one worker: the exact order");
    let exact2 = dispatch(n, 2, true);
    report("random priorities", 2, &exact2);
    assert!(
        exact2.worst_inversion <= 1,
        "two workers: at most one handed out ahead"
    );
    let plain = dispatch(n, 2, false);
    report("priority 0 (prefetch)", 2, &plain);
    println!(
        "{{\"value\": {:.0}, \"submit_per_s\": {:.0}, \"plain_per_s\": {:.0}, \"burst_ms\": {burst:.2}}}",
        exact2.run_per_s, exact2.submit_per_s, plain.run_per_s
    );
}
