//! The standby worker: a spare forked ahead of need, promoted when the pool
//! loses a worker. (That it leaves nothing behind is in `leaks.rs`, which
//! must run alone.)

mod common;

use common::{descendants, wait_until, worker_pid};
use forkpool::{JobError, Pool};
use std::time::Duration;

const SLACK: Duration = Duration::from_secs(10);

fn kill_self(_: ()) -> u32 {
    // SAFETY: signalling our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

fn square(x: u64) -> u64 {
    x * x
}

fn settled(pool: &Pool, live: u64, standby: u64) -> bool {
    wait_until(SLACK, || {
        let s = pool.stats();
        s.live_workers == live && s.standby_workers == standby
    })
}

#[test]
fn the_standby_takes_the_next_job_after_a_crash() {
    let pool = Pool::builder()
        .workers(1)
        .standby_worker(true)
        .build()
        .unwrap();
    assert!(settled(&pool, 1, 1), "{:?}", pool.stats());
    let me = std::process::id() as i32;
    let before = descendants(me);
    let worker = pool.apply(worker_pid, ()).unwrap();
    for round in 1..=3u64 {
        assert!(matches!(
            pool.apply(kill_self, ()),
            Err(JobError::Crashed {
                signal: Some(libc::SIGKILL),
                ..
            })
        ));
        let next = pool.apply(worker_pid, ()).unwrap();
        assert_ne!(next, worker);
        if round == 1 {
            assert!(
                before.contains(&(next as i32)),
                "the job after the crash ran in pid {next}, not in a process forked before it \
                 ({before:?})"
            );
        }
        assert!(settled(&pool, 1, 1), "round {round}: {:?}", pool.stats());
        let s = pool.stats();
        assert_eq!((s.crashed, s.worker_restarts), (round, round), "{s:?}");
    }
}

#[test]
fn by_default_a_pool_keeps_a_standby_once_it_has_lost_a_worker() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, 0..1000).unwrap()[999], 999 * 999);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        pool.stats().standby_workers,
        0,
        "no standby before any loss"
    );
    assert!(pool.apply(kill_self, ()).is_err());
    assert!(settled(&pool, 2, 1), "{:?}", pool.stats());
    assert_eq!(pool.map(square, 0..1000).unwrap()[999], 999 * 999);
}

#[test]
fn retiring_workers_are_replaced_by_standbys() {
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..20)
        .map(|_| pool.apply(worker_pid, ()).unwrap())
        .collect();
    let mut unique = pids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), pids.len(), "a worker ran two jobs: {pids:?}");
    assert!(settled(&pool, 2, 1), "{:?}", pool.stats());
    assert_eq!(pool.stats().worker_restarts, 20);
}

#[test]
fn standby_false_keeps_none() {
    let pool = Pool::builder()
        .workers(1)
        .standby_worker(false)
        .build()
        .unwrap();
    assert!(pool.apply(kill_self, ()).is_err());
    assert_eq!(pool.apply(square, 3), Ok(9));
    std::thread::sleep(Duration::from_millis(100));
    let s = pool.stats();
    assert_eq!((s.live_workers, s.standby_workers), (1, 0), "{s:?}");
}
