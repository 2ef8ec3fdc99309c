//! Named queues: jobs go where they are told (a job option, a route, a
//! queue's own calls), a name the pool does not have is an error and never
//! the default queue, each queue has workers and settings of its own, slow
//! jobs in one queue never hold up another, and `stats()` shows each
//! queue.

mod common;

use common::wait_until;
use forkpool::{Error, JobError, Pool, Queue};
use std::time::{Duration, Instant};

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn routed_pid(_: u8) -> u32 {
    std::process::id()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn two_queues() -> Pool {
    Pool::builder()
        .workers(1)
        .queue("slow", Queue::new().workers(1))
        .route(routed_pid, "slow")
        .build()
        .unwrap()
}

#[test]
fn jobs_run_on_their_queues_workers() {
    let pool = two_queues();
    let slow = pool.queue("slow").unwrap();
    assert_eq!(slow.name(), "slow");
    let default_pid = pool.apply(pid, ()).unwrap();
    let slow_pid = slow.apply(pid, ()).unwrap();
    assert_ne!(default_pid, slow_pid, "each queue has its own worker");
    // A route, a job option, the queue's map and imap, submit and job.
    assert_eq!(pool.apply(routed_pid, 0).unwrap(), slow_pid);
    assert_eq!(pool.map(routed_pid, [1, 2]).unwrap(), [slow_pid, slow_pid]);
    assert_eq!(pool.job(pid).queue("slow").submit(()).get(), Ok(slow_pid));
    assert_eq!(
        pool.job(routed_pid).queue("default").submit(0).get(),
        Ok(default_pid)
    );
    assert_eq!(slow.map(pid, [(), ()]).unwrap(), [slow_pid, slow_pid]);
    let got: Vec<u32> = slow.imap(pid, [(), ()]).map(Result::unwrap).collect();
    assert_eq!(got, [slow_pid, slow_pid]);
    assert_eq!(slow.submit(pid, ()).get(), Ok(slow_pid));
    assert_eq!(slow.job(pid).submit(()).get(), Ok(slow_pid));
    assert_eq!(slow.try_submit(pid, ()).unwrap().get(), Ok(slow_pid));
    pool.join().unwrap();
}

#[test]
fn a_queue_the_pool_does_not_have_is_an_error_never_the_default() {
    let pool = two_queues();
    assert!(matches!(pool.queue("slwo"), Err(Error::NoSuchQueue(q)) if q == "slwo"));
    let h = pool.job(pid).queue("slwo").submit(());
    assert_eq!(
        h.get(),
        Err(JobError::NoSuchQueue {
            queue: "slwo".into()
        })
    );
    assert_eq!(pool.stats().failed, 1);
    let build = |b: forkpool::PoolBuilder| match b.build() {
        Err(Error::InvalidConfig(m)) => m,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    let m = build(Pool::builder().workers(1).route(pid, "nowhere"));
    assert!(m.contains("nowhere"), "{m}");
    let m = build(
        Pool::builder()
            .queue("a", Queue::new())
            .queue("a", Queue::new()),
    );
    assert!(m.contains("two queues"), "{m}");
    let m = build(Pool::builder().queue("default", Queue::new()));
    assert!(m.contains("default"), "{m}");
    let m = build(Pool::builder().queue("q", Queue::new().autoscale(3, 2)));
    assert!(m.contains("min_workers"), "{m}");
    let m = build(Pool::builder().queue("q", Queue::new().workers(0)));
    assert!(m.contains("at least 1"), "{m}");
    pool.join().unwrap();
}

#[test]
fn slow_jobs_in_one_queue_never_hold_up_another() {
    let pool = two_queues();
    let slow = pool.queue("slow").unwrap();
    let busy: Vec<_> = (0..3).map(|_| slow.submit(nap, 1500)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(pool.apply(nap, 0), Ok(0));
    }
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "the default queue waited for the slow one: {:?}",
        t.elapsed()
    );
    for h in busy {
        assert_eq!(h.get(), Ok(1500));
    }
    pool.join().unwrap();
}

#[test]
fn each_queue_has_its_own_limits() {
    let pool = Pool::builder()
        .workers(1)
        .queue(
            "strict",
            Queue::new()
                .workers(1)
                .time_limit(Duration::from_millis(300)),
        )
        .queue("fresh", Queue::new().workers(1).max_tasks_per_worker(1))
        .build()
        .unwrap();
    let strict = pool.queue("strict").unwrap();
    assert!(matches!(
        strict.apply(nap, 2000),
        Err(JobError::TimedOut { .. })
    ));
    assert_eq!(
        pool.apply(nap, 600),
        Ok(600),
        "the default queue has no limit"
    );
    let fresh = pool.queue("fresh").unwrap();
    let pids: Vec<u32> = (0..3).map(|_| fresh.apply(pid, ()).unwrap()).collect();
    assert!(
        pids[0] != pids[1] && pids[1] != pids[2],
        "a fresh worker per job: {pids:?}"
    );
    let default: Vec<u32> = (0..3).map(|_| pool.apply(pid, ()).unwrap()).collect();
    assert!(default.windows(2).all(|w| w[0] == w[1]), "{default:?}");
    // A job's own limit still wins over its queue's.
    let h = strict
        .job(nap)
        .time_limit(Duration::from_secs(5))
        .submit(500);
    assert_eq!(h.get(), Ok(500));
    pool.join().unwrap();
}

#[test]
fn stats_show_each_queue_and_a_resize() {
    let pool = Pool::builder()
        .workers(2)
        .queue("io", Queue::new().workers(1))
        .build()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let s = pool.stats();
        s.queue("default").unwrap().workers == 2 && s.queue("io").unwrap().workers == 1
    }));
    let s = pool.stats();
    assert_eq!(s.queues.len(), 2);
    assert_eq!(s.live_workers, 3);
    let io = pool.queue("io").unwrap();
    io.resize(3, 3).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .queue("io")
        .unwrap()
        .workers
        == 3));
    let q = pool.stats().queue("io").cloned().unwrap();
    assert_eq!((q.min_workers, q.max_workers), (3, 3));
    io.resize(1, 1).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || pool
            .stats()
            .queue("io")
            .unwrap()
            .workers
            == 1),
        "{:?}",
        pool.stats().queue("io")
    );
    assert!(io.resize(2, 1).is_err());
    assert!(io.resize(0, 0).is_err());
    assert!(
        io.resize(1, 100_000).is_err(),
        "beyond the fork server's table"
    );
    let s = pool.stats();
    assert_eq!((s.crashed, s.worker_restarts), (0, 0), "{s:?}");
    pool.join().unwrap();
}

#[test]
fn an_idle_queue_costs_no_worker_beyond_its_minimum() {
    let pool = Pool::builder()
        .workers(1)
        .queue(
            "rare",
            Queue::new()
                .autoscale(0, 2)
                .keep_alive(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    assert!(pool.apply(pid, ()).is_ok());
    let s = pool.stats();
    assert_eq!(s.queue("rare").unwrap().workers, 0, "{s:?}");
    let rare = pool.queue("rare").unwrap();
    assert_eq!(
        rare.apply(nap, 10),
        Ok(10),
        "a worker is forked for the job"
    );
    assert!(
        wait_until(Duration::from_secs(10), || pool
            .stats()
            .queue("rare")
            .unwrap()
            .workers
            == 0),
        "the idle worker leaves after the keep-alive: {:?}",
        pool.stats().queue("rare")
    );
    let s = pool.stats();
    let q = s.queue("rare").unwrap();
    assert_eq!((q.grown, q.shrunk), (1, 1), "{q:?}");
    assert_eq!(
        (s.crashed, s.cancelled, s.worker_restarts),
        (0, 0, 0),
        "{s:?}"
    );
    // And again.
    assert_eq!(rare.apply(nap, 1), Ok(1));
    pool.join().unwrap();
}
