//! How fast jobs drain through Redis: starts H worker hosts (processes),
//! submits N trivial jobs that store their results, waits for every
//! result, and prints a JSON line with the rate.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo run --release --features redis --example redis_drain -- \
//!     --redis redis://127.0.0.1:6390/ --jobs 100000 --hosts 2
//! ```
//!
//! Options: `--workers W` per host (default 2), `--codec NAME` (default
//! bincode). Each run uses keys of its own (`{drain-<pid>}:…`), deleted at
//! the end. The last line of the output is the JSON object
//! `{"jobs", "hosts", "workers", "seconds", "jobs_per_s", ...}` that
//! `benches/ab` and `benches/celery/run` read.

use forkpool::Codec;
use forkpool::broker::Broker;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The job: trivial, so the broker's own cost is what is measured.
fn inc(x: u64) -> u64 {
    x + 1
}
forkpool::register!(inc as "drain.inc");

struct Args {
    redis: String,
    jobs: u64,
    hosts: usize,
    workers: usize,
    codec: Codec,
    prefix: String,
    host: bool,
}

fn args() -> Args {
    let mut a = Args {
        redis: "redis://127.0.0.1:6379/".into(),
        jobs: 100_000,
        hosts: 2,
        workers: 2,
        codec: Codec::Bincode,
        prefix: format!("drain-{}", std::process::id()),
        host: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--redis" => a.redis = value(),
            "--jobs" => a.jobs = value().parse().expect("--jobs N"),
            "--hosts" => a.hosts = value().parse().expect("--hosts H"),
            "--workers" => a.workers = value().parse().expect("--workers W"),
            "--codec" => a.codec = value().parse().expect("--codec"),
            "--prefix" => a.prefix = value(),
            "--host" => a.host = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn broker(a: &Args) -> Broker {
    Broker::new(&a.redis)
        .expect("--redis URL")
        .prefix(a.prefix.clone())
        .codec(a.codec)
        .result_expires(Duration::from_secs(600))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Hosts report trouble (lost connections, dead letters) through `log`.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let a = args();
    if a.host {
        // A worker host, until SIGTERM.
        let report = broker(&a).host().workers(a.workers).build()?.run()?;
        eprintln!("{report}");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut hosts: Vec<Child> = (0..a.hosts)
        .map(|_| {
            Command::new(&exe)
                .args(["--host", "--redis", &a.redis, "--prefix", &a.prefix])
                .args([
                    "--workers",
                    &a.workers.to_string(),
                    "--codec",
                    a.codec.name(),
                ])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let client = broker(&a).client()?;
    // Every host up and reading before the clock starts.
    let warm: Vec<_> = (0..(a.hosts * a.workers * 4) as u64)
        .map(|i| client.submit(inc, i))
        .collect();
    for h in warm {
        h.get()?;
    }
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let handles: Vec<_> = (0..a.jobs).map(|i| client.submit(inc, i)).collect();
    let submitted = start.elapsed();
    let mut wrong = 0u64;
    for (i, h) in handles.into_iter().enumerate() {
        if h.get() != Ok(i as u64 + 1) {
            wrong += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();

    for h in &hosts {
        // SAFETY: kill(2) on our own children, not yet reaped.
        unsafe { libc::kill(h.id() as i32, libc::SIGTERM) };
    }
    for h in &mut hosts {
        h.wait()?;
    }
    // Leave nothing behind in Redis.
    let mut con = redis::Client::open(a.redis.as_str())?.get_connection()?;
    let pattern = format!("{{{}}}:*", a.prefix);
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut con)?;
    for chunk in keys.chunks(1000) {
        redis::cmd("UNLINK").arg(chunk).exec(&mut con)?;
    }
    drop(client);
    assert_eq!(wrong, 0, "{wrong} jobs came back wrong");
    println!(
        "{{\"jobs\": {}, \"hosts\": {}, \"workers\": {}, \"codec\": \"{}\", \"submit_seconds\": {:.3}, \
         \"seconds\": {:.3}, \"jobs_per_s\": {:.0}}}",
        a.jobs,
        a.hosts,
        a.workers,
        a.codec,
        submitted.as_secs_f64(),
        seconds,
        a.jobs as f64 / seconds
    );
    Ok(())
}
