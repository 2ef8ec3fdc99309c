//! One program, several hosts: run it as a worker host on any number of
//! machines, and submit jobs to them from any other process.
//!
//! ```sh
//! redis-server --port 6379 --appendonly yes --daemonize yes
//! cargo run --release --features redis --example broker -- worker &   # a worker host
//! cargo run --release --features redis --example broker -- submit 1024
//! cargo run --release --features redis --example broker -- detach 2048   # prints an id
//! cargo run --release --features redis --example broker -- result ID
//! cargo run --release --features redis --example broker -- dead
//! cargo run --release --features redis --example broker -- inspect     # every live host
//! cargo run --release --features redis --example broker -- revoke ID   # wherever it is
//! kill %1                                    # SIGTERM: the host finishes its jobs, exits
//! ```
//!
//! `FORKPOOL_REDIS` sets the Redis URL (default `redis://127.0.0.1:6379/`),
//! for example `redis://app:secret@10.0.0.5:6379/0`.

use forkpool::broker::Broker;
use forkpool::{JobId, JobStatus, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A thumbnail's size for an image of `px` pixels wide.
fn thumbnail(px: u32) -> Thumb {
    std::thread::sleep(Duration::from_millis(50)); // pretend to work
    Thumb {
        width: px / 8,
        host: forkpool_host(),
    }
}
forkpool::register!(thumbnail as "images.thumbnail");

#[derive(Debug, Serialize, Deserialize)]
struct Thumb {
    width: u32,
    /// Which machine made it.
    host: String,
}

fn forkpool_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
        + &format!(" (host pid {})", std::os::unix::process::parent_id())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the host reports (stopping, dead letters, lost connections)
    // goes through the `log` facade: print it (RUST_LOG overrides).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let url = std::env::var("FORKPOOL_REDIS").unwrap_or("redis://127.0.0.1:6379/".into());
    let broker = Broker::new(&url)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "worker" => {
            let host = broker.host().workers(4).queues(["default"]).build()?;
            eprintln!("worker host {}: Ctrl-C or SIGTERM to stop", host.consumer());
            let report = host.run()?;
            eprintln!("{report}");
        }
        "submit" => {
            let client = broker.client()?;
            let px: u32 = arg(1).parse()?;
            let handle = client
                .job(thumbnail)
                .time_limit(Duration::from_secs(10))
                .retry(RetryPolicy::new(2))
                .submit(px);
            println!("job {} -> {:?}", handle.id(), handle.get()?);
        }
        "detach" => {
            let client = broker.client()?;
            let id = client.job(thumbnail).detach(arg(1).parse()?);
            client.flush()?;
            println!("{}", id.as_u64());
        }
        "result" => {
            let client = broker.client()?;
            let id = JobId::from_u64(arg(1).parse()?);
            match client.status(id)? {
                JobStatus::Succeeded | JobStatus::Failed => {
                    let r: Option<Result<Thumb, _>> = client.take_result(id)?;
                    println!("{id}: {r:?}");
                }
                other => println!("{id}: {other:?}"),
            }
        }
        "inspect" => {
            let seen = broker.client()?.inspect()?;
            for h in &seen.hosts {
                let jobs: Vec<String> = h
                    .active
                    .iter()
                    .map(|j| format!("{:?} {}", j.id, j.name))
                    .collect();
                println!(
                    "{} pid {}: {} workers, running {jobs:?}, done {}",
                    h.consumer, h.pid, h.workers, h.jobs_done
                );
            }
            for s in &seen.streams {
                println!(
                    "queue {} priority {}: waiting {}, held {}",
                    s.queue, s.priority, s.waiting, s.held
                );
            }
            println!(
                "delayed {}, dead letters {}",
                seen.delayed, seen.dead_letters
            );
        }
        "revoke" => {
            let id = JobId::from_u64(arg(1).parse()?);
            println!("{id}: {:?}", broker.client()?.revoke(id, true)?);
        }
        "dead" => {
            for d in broker.client()?.dead_letters(20)? {
                println!("{} {:?}: {}", d.entry, d.job, d.reason);
            }
        }
        _ => eprintln!(
            "usage: broker worker | submit PX | detach PX | result ID | dead | inspect | revoke ID"
        ),
    }
    Ok(())
}
