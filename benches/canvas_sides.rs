//! Workflows side by side with what they are compared to, interleaved
//! (issue 11's targets; BENCHMARKS.md, "Workflows").
//!
//! `cargo bench --bench canvas_sides` prints a table. Criterion
//! (`benches/canvas.rs`) runs one benchmark after another, minutes apart;
//! on a shared or drifting machine their ratios mean little. Here every
//! round runs each side once, in rotating order, and the ratio is taken
//! per round, then its median over rounds:
//!
//! - a chord over 100,000 trivial members (`starmap`, body: their sum),
//!   with `apply()` and with `submit().get()`, against `map` over the same
//!   items;
//! - a chain of 1,000 trivial steps against 1,000 sequential
//!   `Pool::apply` calls (the same round trips).
//!
//! The last line is JSON, for `benches/ab`.

use forkpool::Pool;
use std::time::Instant;

fn inc(x: u64) -> u64 {
    x + 1
}

fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs every side once per round, in an order that rotates; returns each
/// side's times (ms) by round.
fn rounds(rounds: usize, sides: &[&dyn Fn()]) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(rounds); sides.len()];
    for r in 0..rounds {
        for k in 0..sides.len() {
            let i = (r + k) % sides.len();
            let t = Instant::now();
            sides[i]();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times
}

/// The median over rounds of `a / b`, and its 25th and 75th percentiles.
fn ratio(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    r.sort_by(f64::total_cmp);
    let at = |q: f64| r[((r.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.25), at(0.75))
}

fn main() {
    const N: u64 = 100_000;
    const ROUNDS: usize = 60;
    let pool = Pool::new(2).unwrap();
    pool.map(inc, 0..N).unwrap(); // warm up
    let job = pool.job(inc);

    let chord = || job.starmap(0..N).chord(pool.job(sum));
    let chord_apply = || assert_eq!(chord().apply(), Ok(N * (N + 1) / 2));
    let chord_submit = || assert_eq!(chord().submit().get(), Ok(N * (N + 1) / 2));
    let map = || assert_eq!(pool.map(inc, 0..N).unwrap().len() as u64, N);
    let t = rounds(ROUNDS, &[&chord_apply, &chord_submit, &map]);
    let (mut apply, mut submit, mut mapped) = (t[0].clone(), t[1].clone(), t[2].clone());
    let (ra, ra25, ra75) = ratio(&t[0], &t[2]);
    let (rs, rs25, rs75) = ratio(&t[1], &t[2]);

    let chain = || {
        let mut wf = pool.job(inc).sig(0).then(pool.job(inc));
        for _ in 0..998 {
            wf = wf.then(pool.job(inc));
        }
        assert_eq!(wf.apply(), Ok(1000));
    };
    let applies = || {
        let mut x = 0;
        for _ in 0..1000 {
            x = pool.apply(inc, x).unwrap();
        }
        assert_eq!(x, 1000);
    };
    let t = rounds(ROUNDS / 2, &[&chain, &applies]);
    let (mut chained, mut applied) = (t[0].clone(), t[1].clone());
    let (rc, rc25, rc75) = ratio(&t[0], &t[1]);

    println!("{ROUNDS} interleaved rounds, 2 workers; medians over rounds:");
    println!(
        "chord over {N} members, apply()        {:>7.3} ms  {ra:.3}x map (p25 {ra25:.3}, p75 {ra75:.3})",
        median(&mut apply)
    );
    println!(
        "chord over {N} members, submit().get() {:>7.3} ms  {rs:.3}x map (p25 {rs25:.3}, p75 {rs75:.3})",
        median(&mut submit)
    );
    println!(
        "map over {N} items                   {:>7.3} ms",
        median(&mut mapped)
    );
    println!(
        "chain of 1,000 steps, apply()           {:>7.3} ms  {rc:.3}x the applies (p25 {rc25:.3}, p75 {rc75:.3})",
        median(&mut chained)
    );
    println!(
        "1,000 sequential Pool::apply           {:>7.3} ms",
        median(&mut applied)
    );
    println!(
        "{{\"value\": {ra:.4}, \"chord_submit_over_map\": {rs:.4}, \"chain_ms\": {:.4}, \"chain_over_applies\": {rc:.4}}}",
        median(&mut chained)
    );
}
