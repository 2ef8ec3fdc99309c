//! Criterion benchmarks of forkpool's public API, one per workload of
//! BENCHMARKS.md. `cargo bench --bench pool`; for the side-by-side
//! comparison with Python's pools see `benches/compare/run`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use forkpool::{JobError, Pool};
use serde_bytes::ByteBuf;
use std::hint::black_box;
use std::time::Duration;

mod common;
use common::{echo, spin, square};

fn crash(_: ()) -> u64 {
    std::process::abort()
}

fn warm(pool: &Pool) {
    pool.map(square, 0..64u64).unwrap();
}

fn map(c: &mut Criterion) {
    let mut g = c.benchmark_group("map");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let pool = Pool::new(2).unwrap();
    warm(&pool);
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("tiny_1m_default_chunks", |b| {
        b.iter(|| pool.map(square, 0..1_000_000u64).unwrap())
    });
    let one = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    warm(&one);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("tiny_10k_chunk_size_1", |b| {
        b.iter(|| one.map(square, 0..10_000u64).unwrap())
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let pool = Pool::new(2).unwrap();
    warm(&pool);
    c.bench_function("apply_round_trip", |b| {
        b.iter(|| pool.apply(square, black_box(7)).unwrap())
    });
}

fn payload(c: &mut Criterion) {
    let mut g = c.benchmark_group("payload");
    g.sample_size(10);
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    warm(&pool);
    let items: Vec<ByteBuf> = (0..16)
        .map(|i| ByteBuf::from(vec![i as u8; 1 << 20]))
        .collect();
    g.throughput(Throughput::Bytes(16 << 20));
    g.bench_function("echo_16x1mib", |b| {
        b.iter_batched(
            || items.clone(),
            |items| pool.map(echo, items).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn cpu_bound(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_bound");
    g.sample_size(10);
    for workers in [1, 2] {
        let pool = Pool::new(workers).unwrap();
        warm(&pool);
        g.bench_function(format!("16_jobs_{workers}_workers"), |b| {
            b.iter(|| pool.map(spin, vec![2_000_000u64; 16]).unwrap())
        });
    }
    g.finish();
}

fn lifecycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("lifecycle");
    g.sample_size(30);
    g.bench_function("build_one_job_join", |b| {
        b.iter(|| {
            let pool = Pool::new(2).unwrap();
            assert_eq!(pool.apply(square, 3), Ok(9));
            pool.join().unwrap();
        })
    });
    let pool = Pool::new(1).unwrap();
    warm(&pool);
    g.bench_function("crash_then_next_job", |b| {
        b.iter(|| {
            assert!(matches!(
                pool.apply(crash, ()),
                Err(JobError::Crashed { .. })
            ));
            pool.apply(square, 4).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, map, apply, payload, cpu_bound, lifecycle);
criterion_main!(benches);
