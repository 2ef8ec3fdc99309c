//! Criterion benchmarks of workflows (issue 11, BENCHMARKS.md "Workflows").
//! `cargo bench --bench canvas`.
//!
//! - `chain_1000/{apply,submit_get}`: a chain of 1,000 trivial steps,
//!   built, run and waited for — with `apply()`, or `submit().get()`;
//!   `chain_1000/baseline_1000_applies`: the same 1,000 round trips as
//!   plain `Pool::apply` calls, the floor of a chain.
//! - `chord_100k/{apply,submit_get}` and `map_100k`, side by side: a chord
//!   over 100,000 trivial members (`starmap`, body: their sum), built, run
//!   and waited for; and `map` over the same items. This VM's speed
//!   drifts, so each timed run has an untimed run of the other (`map`, or
//!   the chord with `apply`) beside it, first or last in turn: both see
//!   the same machine.
//! - `chord_body_latency/{100,10k,100k}`: from the moment the last member
//!   returns (its own clock reading, in the worker) to the moment the body
//!   starts (in a worker), for chords of that many members giving a `u64`
//!   each; reported as the time per iteration. It includes handing the
//!   body its argument (`8 × members` bytes, decoded in the worker before
//!   the body's first line).
//! - `chord_body_dispatch/{100,10k,100k}`: the same for members giving
//!   `()`, whose results the body receives as 8 bytes whatever their
//!   number (they note when they return in memory shared with the test):
//!   the coordinator's own delay, from the last result to the body
//!   running.
//! - `group_10k_signatures`: 10,000 signatures made, grouped and submitted
//!   (not waited for).

use criterion::{Criterion, criterion_group, criterion_main};
use forkpool::Pool;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn inc(x: u64) -> u64 {
    x + 1
}

fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A member: when it returns.
fn finish_time(_: u64) -> u64 {
    monotonic_ns()
}

/// A body: how long after the last member returned it started.
fn body_delay(ends: Vec<u64>) -> u64 {
    let now = monotonic_ns();
    now.saturating_sub(ends.into_iter().max().unwrap_or(now))
}

/// When the last member of `chord_body_dispatch` returned: memory shared
/// with the workers (mapped before the pool is built).
fn last_end() -> &'static AtomicU64 {
    static MAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let at = *MAP.get_or_init(|| {
        // SAFETY: a fresh anonymous shared mapping, checked below.
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
        map as usize
    });
    // SAFETY: the mapping lives as long as the process; zeroed, aligned.
    unsafe { &*(at as *const AtomicU64) }
}

/// A member giving `()`: notes when it returns.
fn note_end(_: u64) {
    last_end().fetch_max(monotonic_ns(), Ordering::SeqCst);
}

/// A body: how long after the last member returned it started.
fn delay_since_last(_: Vec<()>) -> u64 {
    monotonic_ns().saturating_sub(last_end().load(Ordering::SeqCst))
}

fn pool() -> Pool {
    last_end();
    let pool = Pool::new(2).unwrap();
    pool.map(inc, 0..10_000u64).unwrap(); // warm up
    pool
}

fn chain(c: &mut Criterion) {
    let pool = pool();
    let build = || {
        let mut wf = pool.job(inc).sig(0).then(pool.job(inc));
        for _ in 0..998 {
            wf = wf.then(pool.job(inc));
        }
        wf
    };
    let mut g = c.benchmark_group("canvas");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    g.bench_function("chain_1000/apply", |b| {
        b.iter(|| assert_eq!(build().apply(), Ok(1000)))
    });
    g.bench_function("chain_1000/submit_get", |b| {
        b.iter(|| assert_eq!(build().submit().get(), Ok(1000)))
    });
    // The floor: the same 1,000 round trips as plain `apply` calls.
    g.bench_function("chain_1000/baseline_1000_applies", |b| {
        b.iter(|| {
            let mut x = 0;
            for _ in 0..1000 {
                x = pool.apply(inc, x).unwrap();
            }
            assert_eq!(x, 1000);
        })
    });
    g.finish();
}

fn chord_vs_map(c: &mut Criterion) {
    const N: u64 = 100_000;
    let pool = pool();
    let chord = || pool.job(inc).starmap(0..N).chord(pool.job(sum));
    let chord_apply = || assert_eq!(chord().apply(), Ok(N * (N + 1) / 2));
    let chord_submit = || assert_eq!(chord().submit().get(), Ok(N * (N + 1) / 2));
    let map = || {
        let got = pool.map(inc, 0..N).unwrap();
        assert_eq!(got.len() as u64, N);
    };
    let mut g = c.benchmark_group("canvas");
    g.sample_size(40).measurement_time(Duration::from_secs(8));
    // Each timed run has an untimed run of the other beside it, before or
    // after in turn.
    let paired = |timed: &dyn Fn(), other: &dyn Fn(), iters: u64| {
        let mut total = Duration::ZERO;
        for i in 0..iters {
            if i % 2 == 0 {
                other();
            }
            let t = Instant::now();
            timed();
            total += t.elapsed();
            if i % 2 == 1 {
                other();
            }
        }
        total
    };
    g.bench_function("chord_100k/apply", |b| {
        b.iter_custom(|n| paired(&chord_apply, &map, n))
    });
    g.bench_function("chord_100k/submit_get", |b| {
        b.iter_custom(|n| paired(&chord_submit, &map, n))
    });
    g.bench_function("map_100k", |b| {
        b.iter_custom(|n| paired(&map, &chord_apply, n))
    });
    g.finish();
}

fn body_latency(c: &mut Criterion) {
    let pool = pool();
    let mut g = c.benchmark_group("canvas/chord_body_latency");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    for (name, n) in [("100", 100u64), ("10k", 10_000), ("100k", 100_000)] {
        let chord = pool
            .job(finish_time)
            .starmap(0..n)
            .chord(pool.job(body_delay));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += Duration::from_nanos(chord.apply().unwrap());
                }
                total
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("canvas/chord_body_dispatch");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    for (name, n) in [("100", 100u64), ("10k", 10_000), ("100k", 100_000)] {
        let chord = pool
            .job(note_end)
            .starmap(0..n)
            .chord(pool.job(delay_since_last));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += Duration::from_nanos(chord.apply().unwrap());
                }
                total
            })
        });
    }
    g.finish();
}

fn group_submit(c: &mut Criterion) {
    let pool = pool();
    let job = pool.job(inc);
    let mut g = c.benchmark_group("canvas");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    g.bench_function("group_10k_signatures", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let handle = pool.group((0..10_000u64).map(|i| job.sig(i))).submit();
                total += t.elapsed();
                black_box(handle.get().unwrap());
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, chain, chord_vs_map, body_latency, group_submit);
criterion_main!(benches);
