//! Idle workers sleep: work for other workers of the pool never wakes
//! them. The supervisor publishes to every worker's ring at every step; a
//! worker asleep in a pool of 64 or 256 that was rung each time woke, spun
//! and slept again for nothing, and took the CPU from the workers that
//! had work (a `map` of tiny items over 256 workers ran at a third of the
//! 2-worker rate).

mod common;

use common::{status_number, worker_pid};
use forkpool::{Pool, Queue};
use std::time::Duration;

/// Voluntary context switches of process `pid` so far: each is a sleep.
fn sleeps(pid: u32) -> u64 {
    status_number(&pid.to_string(), "voluntary_ctxt_switches:")
}

#[test]
fn jobs_on_one_queue_do_not_wake_the_idle_workers_of_another() {
    let pool = Pool::builder()
        .workers(1)
        .queue("idle", Queue::new().workers(4))
        .build()
        .unwrap();
    let idle = pool.queue("idle").unwrap();
    for _ in 0..8 {
        idle.apply(worker_pid, ()).unwrap();
    }
    let pids: Vec<u32> = pool
        .inspect()
        .workers
        .iter()
        .filter(|w| w.queue == "idle")
        .map(|w| w.pid)
        .collect();
    assert_eq!(pids.len(), 4, "{pids:?}");
    // Let them finish spinning and fall asleep.
    std::thread::sleep(Duration::from_millis(200));
    let before: Vec<u64> = pids.iter().map(|&p| sleeps(p)).collect();
    let jobs = 3000;
    for _ in 0..jobs {
        pool.apply(worker_pid, ()).unwrap();
    }
    let woken: Vec<u64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, b)| sleeps(p) - b)
        .collect();
    // Asleep throughout, each would show 0; a few for whatever else a
    // loaded machine does to a process. Rung at every step, each woke
    // hundreds of times.
    assert!(
        woken.iter().all(|&n| n < 20),
        "idle workers woke {woken:?} times during {jobs} jobs of another queue"
    );
}
