//! forkpool and procspawn on the comparison workloads.
//!
//! `cargo bench --bench compare -- <pool> <workload>` runs one workload once
//! and prints one JSON object. `benches/compare/run` calls it interleaved
//! with `mp_bench.py` (Python's pools) over several rounds and prints the
//! table of medians; see BENCHMARKS.md.

use forkpool::{JobError, Pool};
use serde_bytes::ByteBuf;
use std::hint::black_box;
use std::time::{Duration, Instant};

const WORKERS: usize = 2;

#[path = "../common/mod.rs"]
mod common;
use common::{echo, spin, square};

fn pool(workers: usize) -> Pool {
    let pool = Pool::new(workers).expect("build pool");
    warm(&pool);
    pool
}

fn warm(pool: &Pool) {
    // Workers up and past their first job.
    let _ = pool.map(square, 0..(pool.workers() as u64 * 4)).unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// CPU seconds used by this process (all its threads, not its children).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into a local struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Minor page faults of this process so far (all its threads).
fn faults() -> i64 {
    // SAFETY: getrusage writes into a local struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_minflt
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1 << 20) as f64
}

type Fields = Vec<(&'static str, f64)>;

/// The tiny `map` as a user meets it: a fresh pool of `workers` (in a
/// fresh process), a warm-up, then one `map` of x*x over a million `u64`s.
/// `value` is that first map's rate; `steady` the median of the three
/// maps after it on the same pool; `first_faults` the minor page faults
/// the calling process (all its threads) took during the first map.
///
/// Warm-up: with 2 workers, 64 jobs (a `map` of 64 items), as in issue 15.
/// With more workers, `n` jobs of 20 ms submitted one by one, which the
/// pool spreads one per worker: they end once every worker is up, so
/// `build_ms` (their end, less the 20 ms) is the time to build the pool
/// and have every worker answer. Python's side does the same.
fn map_tiny(workers: usize) -> Fields {
    let n = 1_000_000u64;
    let t = Instant::now();
    let pool = Pool::new(workers).expect("build pool");
    let mut fields = Vec::new();
    if workers <= WORKERS {
        let _ = pool.map(square, 0..64u64).unwrap();
    } else {
        let handles: Vec<_> = (0..workers).map(|_| pool.submit(nap, 20)).collect();
        for h in handles {
            h.get().unwrap();
        }
        fields.push(("build_ms", t.elapsed().as_secs_f64() * 1e3 - 20.0));
    }
    let one = || {
        let t = Instant::now();
        let out = pool.map(square, 0..n).unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(out[n as usize - 1], (n - 1) * (n - 1));
        n as f64 / dt
    };
    let f0 = faults();
    let first = one();
    let first_faults = (faults() - f0) as f64;
    let mut steady: Vec<f64> = (0..3).map(|_| one()).collect();
    fields.extend([
        ("value", first),
        ("steady", median(&mut steady)),
        ("first_faults", first_faults),
    ]);
    fields
}

/// Sleeps `ms` milliseconds (the build probe's job).
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn map_chunk1() -> Fields {
    let n = 20_000u64;
    let pool = Pool::builder()
        .workers(WORKERS)
        .chunk_size(1)
        .build()
        .unwrap();
    warm(&pool);
    let t = Instant::now();
    let out = pool.map(square, 0..n).unwrap();
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(out[n as usize - 1], (n - 1) * (n - 1));
    vec![("value", n as f64 / dt)]
}

fn apply() -> Fields {
    let pool = pool(WORKERS);
    let mut lat: Vec<f64> = (0..2000u64)
        .map(|i| {
            let t = Instant::now();
            assert_eq!(pool.apply(square, i), Ok(i * i));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let p99 = percentile(&mut lat, 0.99);
    vec![("value", median(&mut lat)), ("p99", p99)]
}

/// 200 payloads of 1 MiB echoed through the pool. They are made as the map
/// reads them (inside the timed map, as on the Python side): with payloads
/// built in advance, see BENCHMARKS.md.
fn payload() -> Fields {
    let (n, size) = (200usize, 1usize << 20);
    let pool = Pool::builder()
        .workers(WORKERS)
        .chunk_size(1)
        .build()
        .unwrap();
    // Warm with a few payloads, as mp_bench.py does: the first ones touch
    // the pool's rings and the workers' heaps for the first time.
    let make = move |i: usize| ByteBuf::from(vec![i as u8; size]);
    pool.map(echo, (0..4).map(make)).unwrap();
    let t = Instant::now();
    let out = pool.map(echo, (0..n).map(make)).unwrap();
    let dt = t.elapsed().as_secs_f64();
    assert!(out.iter().all(|b| b.len() == size));
    vec![("value", (n * size) as f64 / dt / 1e9)]
}

fn cpu_time(workers: usize) -> f64 {
    let pool = pool(workers);
    let t = Instant::now();
    pool.map(spin, vec![6_000_000u64; 16]).unwrap();
    t.elapsed().as_secs_f64()
}

fn cpu_2v1() -> Fields {
    let one = cpu_time(1);
    let two = cpu_time(2);
    vec![("value", one / two)]
}

fn startup() -> Fields {
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let pool = Pool::new(WORKERS).unwrap();
            assert_eq!(pool.apply(square, 3), Ok(9));
            pool.join().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    vec![("value", median(&mut times))]
}

/// Duration of one `fork()` call in a process of this size (the zygote is a
/// copy of it): what the kernel charges to duplicate its address space.
/// Each fork comes `gap` after the last, as the crashes it is compared with.
fn fork_ms(gap: Duration) -> f64 {
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            std::thread::sleep(gap);
            let t = Instant::now();
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe { libc::_exit(0) };
            }
            let dt = t.elapsed().as_secs_f64() * 1e3;
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            dt
        })
        .collect();
    median(&mut times)
}

fn kill_self(_: ()) -> u64 {
    // SAFETY: signalling our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

/// Milliseconds from submitting a job that kills its worker to the answer
/// of the next job.
fn crash_then_next(pool: &Pool) -> f64 {
    let t = Instant::now();
    assert!(matches!(
        pool.apply(kill_self, ()),
        Err(JobError::Crashed { .. })
    ));
    assert_eq!(pool.apply(square, 4), Ok(16));
    t.elapsed().as_secs_f64() * 1e3
}

/// From a job killing its worker to a replacement's answer to the next
/// job, against one fork of a process this size (50 MB touched, as in the
/// issue): detection, replacement, start-up and the job itself. The pool
/// has default settings, so it keeps a standby worker from its first crash
/// on: that first crash is reported apart (`first_ms`), and `value` is the
/// median of the 20 after it, each 5 ms after the last (a crash, not a
/// storm of them), against forks 5 ms apart. `b2b_ms` is the same with
/// crashes back to back, against forks back to back (`b2b_fork_ms`).
fn replace() -> Fields {
    let ballast: Vec<u8> = vec![1; 50 << 20];
    black_box(&ballast);
    let gap = Duration::from_millis(5);
    let pool = pool(1);
    assert_eq!(pool.apply(square, 4), Ok(16));
    let first = crash_then_next(&pool);
    let mut spaced: Vec<f64> = (0..20)
        .map(|_| {
            std::thread::sleep(gap);
            crash_then_next(&pool)
        })
        .collect();
    let mut b2b: Vec<f64> = (0..20).map(|_| crash_then_next(&pool)).collect();
    let fork = fork_ms(gap);
    let b2b_fork = fork_ms(Duration::ZERO);
    let r = median(&mut spaced);
    let b = median(&mut b2b);
    vec![
        ("value", r),
        ("fork_ms", fork),
        ("ratio", r / fork),
        ("first_ms", first),
        ("b2b_ms", b),
        ("b2b_fork_ms", b2b_fork),
        ("b2b_ratio", b / b2b_fork),
    ]
}

/// The caller's own CPU time per job: supervisor and calling thread.
fn caller_cpu() -> Fields {
    let pool = pool(WORKERS);
    let n = 1_000_000u64;
    let c = cpu_seconds();
    pool.map(square, 0..n).unwrap();
    let per_item = (cpu_seconds() - c) / n as f64 * 1e9;
    let m = 100_000u64;
    let c = cpu_seconds();
    let handles: Vec<_> = (0..m).map(|i| pool.submit(square, i)).collect();
    for h in handles {
        h.get().unwrap();
    }
    let per_job = (cpu_seconds() - c) / m as f64 * 1e9;
    vec![("value", per_job), ("map_item_ns", per_item)]
}

/// Caller memory over ten million jobs through `imap`: after warm-up (the
/// first million, while buffers reach their steady size), it must not grow.
fn memory() -> Fields {
    let pool = pool(WORKERS);
    let (mut at_1m, mut at_2m) = (0.0, 0.0);
    let mut sum = 0u64;
    for (i, r) in pool.imap(square, 0..10_000_000u64).enumerate() {
        sum = sum.wrapping_add(r.unwrap());
        if i == 1_000_000 {
            at_1m = rss_mib();
        } else if i == 2_000_000 {
            at_2m = rss_mib();
        }
    }
    black_box(sum);
    vec![
        ("value", rss_mib()),
        ("rss_at_1m_mib", at_1m),
        ("rss_at_2m_mib", at_2m),
    ]
}

fn procspawn_pool() -> procspawn::Pool {
    let pool = procspawn::Pool::new(WORKERS).unwrap();
    for i in 0..(WORKERS as u64 * 4) {
        pool.spawn(i, square).join().unwrap();
    }
    pool
}

fn procspawn_chunk1() -> Fields {
    let n = 20_000u64;
    let pool = procspawn_pool();
    let t = Instant::now();
    // Every handle holds descriptors: keep at most 512 outstanding.
    let mut window = std::collections::VecDeque::new();
    for i in 0..n {
        if window.len() == 512 {
            let h: procspawn::JoinHandle<u64> = window.pop_front().unwrap();
            h.join().unwrap();
        }
        window.push_back(pool.spawn(i, square));
    }
    for h in window {
        h.join().unwrap();
    }
    let dt = t.elapsed().as_secs_f64();
    pool.shutdown();
    vec![("value", n as f64 / dt)]
}

fn procspawn_apply() -> Fields {
    let pool = procspawn_pool();
    let mut lat: Vec<f64> = (0..2000u64)
        .map(|i| {
            let t = Instant::now();
            assert_eq!(pool.spawn(i, square).join().unwrap(), i * i);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    pool.shutdown();
    let p99 = percentile(&mut lat, 0.99);
    vec![("value", median(&mut lat)), ("p99", p99)]
}

fn procspawn_startup() -> Fields {
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let pool = procspawn::Pool::new(WORKERS).unwrap();
            assert_eq!(pool.spawn(3u64, square).join().unwrap(), 9);
            pool.shutdown();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    vec![("value", median(&mut times))]
}

fn main() {
    procspawn::init();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [kind, workload] = [&args[0], &args[1]].map(String::as_str);
    let fields = match (kind, workload) {
        ("forkpool", "map_tiny") => map_tiny(WORKERS),
        ("forkpool", "map_tiny_64") => map_tiny(64),
        ("forkpool", "map_tiny_256") => map_tiny(256),
        ("forkpool", "map_chunk1") => map_chunk1(),
        ("forkpool", "apply") => apply(),
        ("forkpool", "payload_1mib") => payload(),
        ("forkpool", "cpu_2v1") => cpu_2v1(),
        ("forkpool", "startup") => startup(),
        ("forkpool", "replace") => replace(),
        ("forkpool", "caller_cpu") => caller_cpu(),
        ("forkpool", "memory") => memory(),
        ("procspawn", "map_chunk1") => procspawn_chunk1(),
        ("procspawn", "apply") => procspawn_apply(),
        ("procspawn", "startup") => procspawn_startup(),
        _ => {
            println!(
                "{{\"pool\": \"{kind}\", \"workload\": \"{workload}\", \"unsupported\": true}}"
            );
            return;
        }
    };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!(
        "{{\"pool\": \"{kind}\", \"workload\": \"{workload}\", {}}}",
        body.join(", ")
    );
}
