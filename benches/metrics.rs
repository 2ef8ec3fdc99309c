//! What a Prometheus scrape costs (feature `prometheus`).
//!
//! `cargo bench --features prometheus --bench metrics` builds a pool of 3
//! queues and 5 workers, runs jobs of 20 functions, then times, 200 times
//! each: `Pool::inspect` (the supervisor's snapshot), `Pool::metrics_text`
//! (the snapshot rendered), and a whole scrape of `Pool::serve_metrics`
//! over 127.0.0.1; and how long dropping the server takes, idle and with
//! a silent client connected. The last line is JSON for `benches/ab`.

use forkpool::{Pool, Queue};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

macro_rules! functions {
    ($($f:ident),*) => { $(fn $f(x: u32) -> u32 { x })* };
}
functions!(
    f00, f01, f02, f03, f04, f05, f06, f07, f08, f09, f10, f11, f12, f13, f14, f15, f16, f17, f18,
    f19
);

const N: usize = 200;

/// Median and 90th percentile of `N` runs of `f`, in µs.
fn time(mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<f64> = (0..N)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[N / 2], t[N * 9 / 10])
}

fn main() {
    let pool = Pool::builder()
        .workers(2)
        .queue("reports", Queue::new().workers(2))
        .queue("mail", Queue::new().workers(1))
        .build()
        .unwrap();
    macro_rules! run {
        ($($f:ident),*) => { $(pool.map($f, 0..1000).unwrap();)* };
    }
    run!(
        f00, f01, f02, f03, f04, f05, f06, f07, f08, f09, f10, f11, f12, f13, f14, f15, f16, f17,
        f18, f19
    );

    let text = pool.metrics_text();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "20 functions, 3 queues, 5 workers: {} bytes, {series} series",
        text.len()
    );
    let (inspect, inspect90) = time(|| drop(pool.inspect()));
    println!("inspect:       median {inspect:7.1} µs, p90 {inspect90:7.1} µs");
    let (render, render90) = time(|| drop(pool.metrics_text()));
    println!("metrics_text:  median {render:7.1} µs, p90 {render90:7.1} µs");

    let server = pool.serve_metrics("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let (scrape, scrape90) = time(|| {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    });
    println!("HTTP scrape:   median {scrape:7.1} µs, p90 {scrape90:7.1} µs");
    let start = Instant::now();
    drop(server);
    let stop_idle = start.elapsed().as_secs_f64() * 1e6;
    let server = pool.serve_metrics("127.0.0.1:0").unwrap();
    let _silent = TcpStream::connect(server.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    drop(server);
    let stop_busy = start.elapsed().as_secs_f64() * 1e6;
    println!("drop(server):  {stop_idle:.1} µs idle, {stop_busy:.1} µs with a silent client");
    println!(
        "{{\"value\": {render:.1}, \"inspect_us\": {inspect:.1}, \"render_us\": {render:.1}, \
         \"scrape_us\": {scrape:.1}, \"bytes\": {}, \"series\": {series}}}",
        text.len()
    );
}
