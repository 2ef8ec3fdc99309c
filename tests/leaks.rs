//! Nothing outlives a pool: no child process, no zombie, no descriptor, no
//! thread (the scheduler's included).
//! This file holds a single test because it counts process-wide resources.

mod common;

use common::{children_of, descendants, open_fds, wait_until};
use forkpool::{JobError, Pool, Schedule};
use std::time::Duration;

fn double(x: u64) -> u64 {
    2 * x
}

fn abort(_: ()) -> u64 {
    std::process::abort()
}

fn echo(b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    b
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn fifty_pools_leave_no_process_and_no_descriptor_behind() {
    let me = std::process::id() as i32;
    // Warm up lazily-opened descriptors of the runtime.
    Pool::new(1).unwrap().join().unwrap();
    let fds_before = open_fds();
    let threads_before = threads();
    assert!(
        children_of(me).is_empty(),
        "test process starts with children"
    );
    for i in 0..50u64 {
        // Every other pool keeps a standby worker from the start (the
        // others get one after their first crash).
        let pool = Pool::builder()
            .workers(2)
            .standby_worker(i % 2 == 1)
            .build()
            .unwrap();
        assert_eq!(pool.apply(double, i), Ok(2 * i));
        if i % 2 == 1 {
            assert!(
                wait_until(Duration::from_secs(10), || pool.stats().standby_workers
                    == 1),
                "cycle {i}: no standby: {:?}",
                pool.stats()
            );
        }
        if i % 5 == 0 {
            assert!(matches!(
                pool.apply(abort, ()),
                Err(JobError::Crashed { .. })
            ));
        }
        if i % 10 == 0 {
            // Big results start the pool's thread that faults buffers in.
            let big = || (0..4).map(|_| serde_bytes::ByteBuf::from(vec![1u8; 300 << 10]));
            assert_eq!(pool.map(echo, big()).unwrap().len(), 4);
            assert_eq!(pool.map(echo, big()).unwrap().len(), 4);
        }
        if i % 4 == 3 {
            // A schedule starts the scheduler's thread and its timers.
            let every = Schedule::every(Duration::from_millis(5));
            pool.schedule(every, pool.job(double), i).unwrap();
        }
        let _busy = pool.submit(double, 1);
        assert!(
            descendants(me).len() >= 2,
            "zygote and workers exist while the pool does"
        );
        match i % 3 {
            0 => drop(pool),
            1 => pool.terminate(),
            _ => pool.join().unwrap(),
        }
        let left = descendants(me);
        assert!(
            left.is_empty(),
            "cycle {i}: processes left behind: {left:?}"
        );
        assert_eq!(open_fds(), fds_before, "cycle {i}: descriptors leaked");
        // A joined thread leaves the task list a moment after `join`.
        assert!(
            wait_until(Duration::from_secs(10), || threads() == threads_before),
            "cycle {i}: {} threads left behind",
            threads() - threads_before
        );
    }
}
