//! Hard and soft time limits, max tasks and max memory per worker, and the
//! per-worker initializer.

mod common;

use common::{wait_until, worker_pid};
use forkpool::{JobError, Pool};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn sleep_forever(_: ()) -> u32 {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_job_past_its_hard_limit_times_out_and_its_worker_is_replaced() {
    let limit = Duration::from_millis(800);
    let pool = Pool::builder()
        .workers(2)
        .time_limit(limit)
        .build()
        .unwrap();
    let victim_pid = {
        // Find a worker pid, then hang a job; the worker that hangs is killed.
        let hang = pool.submit(sleep_forever, ());
        let others: Vec<_> = (0..20).map(|i| pool.submit(nap_ms, i)).collect();
        let started = Instant::now();
        assert_eq!(hang.get(), Err(JobError::TimedOut { limit }));
        let took = started.elapsed();
        assert!(took >= limit, "killed after {took:?}, before the limit");
        assert!(
            took < limit + Duration::from_secs(5),
            "killed only after {took:?}"
        );
        for (i, h) in others.into_iter().enumerate() {
            assert_eq!(h.get(), Ok(i as u64), "other jobs are unaffected");
        }
        pool.stats()
    };
    assert_eq!(victim_pid.timed_out, 1);
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .live_workers
        == 2));
    assert_eq!(pool.stats().worker_restarts, 1);
    assert_eq!(pool.apply(nap_ms, 1), Ok(1));
}

fn polite(_: ()) -> &'static str {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if forkpool::soft_time_limit_exceeded() {
            return "stopped early";
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    "ran to the end"
}

fn polite_string(x: ()) -> String {
    polite(x).to_string()
}

#[test]
fn a_job_that_polls_its_soft_limit_stops_cleanly() {
    let pool = Pool::builder()
        .workers(1)
        .soft_time_limit(Duration::from_millis(300))
        .time_limit(Duration::from_secs(20))
        .build()
        .unwrap();
    let before = pool.apply(worker_pid, ()).unwrap();
    let started = Instant::now();
    assert_eq!(
        pool.apply(polite_string, ()).as_deref(),
        Ok("stopped early")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "soft limit told after only {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "soft limit told after {took:?}"
    );
    // The flag belongs to that job only; the worker lives on.
    assert!(!forkpool::soft_time_limit_exceeded(), "false outside a job");
    assert_eq!(pool.apply(worker_pid, ()).unwrap(), before);
    assert_eq!(pool.stats().timed_out, 0);
}

#[test]
fn max_tasks_per_worker_one_runs_each_job_in_a_new_process() {
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..12)
        .map(|_| pool.submit(worker_pid, ()))
        .map(|h| h.get().unwrap())
        .collect();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 12, "{pids:?}");
    // map items count one task each, too.
    let pids = pool.map(|_: u32| std::process::id(), 0..10u32).unwrap();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 10, "{pids:?}");
    assert!(pool.stats().worker_restarts >= 20);
}

fn leak(mb: usize) -> usize {
    let v = vec![1u8; mb << 20];
    let n = v.iter().map(|&b| b as usize).sum();
    std::mem::forget(v);
    n
}

#[test]
fn a_worker_left_above_its_memory_limit_is_replaced_after_its_result() {
    let pool = Pool::builder()
        .workers(1)
        .max_memory_per_worker(150 << 20)
        .build()
        .unwrap();
    let first = pool.apply(worker_pid, ()).unwrap();
    assert_eq!(
        pool.apply(leak, 1),
        Ok(1 << 20),
        "a small job does not trigger it"
    );
    assert_eq!(pool.apply(worker_pid, ()).unwrap(), first);
    assert_eq!(
        pool.apply(leak, 200),
        Ok(200 << 20),
        "the job over the limit gets its result"
    );
    let next = pool.apply(worker_pid, ()).unwrap();
    assert_ne!(next, first, "then its worker is replaced");
    assert_eq!(pool.stats().crashed, 0);
    assert_eq!(pool.stats().worker_restarts, 1);
}

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);

fn init() {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
}

fn init_runs(_: ()) -> (u32, u32) {
    (std::process::id(), INIT_RUNS.load(Ordering::SeqCst))
}

fn crash(_: ()) -> (u32, u32) {
    std::process::abort()
}

#[test]
fn the_initializer_runs_once_in_every_worker_replacements_included() {
    let pool = Pool::builder()
        .workers(2)
        .initializer(init)
        .build()
        .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..3 {
        for (pid, runs) in pool.map(init_runs, vec![(); 40]).unwrap() {
            assert_eq!(runs, 1, "worker {pid} ran the initializer {runs} times");
            seen.insert(pid);
        }
        assert!(matches!(
            pool.apply(crash, ()),
            Err(JobError::Crashed { .. })
        ));
    }
    assert!(seen.len() >= 3, "replacements served too: {seen:?}");
    assert_eq!(INIT_RUNS.load(Ordering::SeqCst), 0, "never in the caller");
}

fn bad_init() {
    panic!("no database");
}

#[test]
fn a_failing_initializer_fails_jobs_instead_of_hanging() {
    let pool = Pool::builder()
        .workers(1)
        .initializer(bad_init)
        .build()
        .unwrap();
    match pool.apply(worker_pid, ()) {
        Err(JobError::WorkerStart { message }) => {
            assert!(message.contains("no database"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_settings_are_refused() {
    use forkpool::Error::InvalidConfig;
    assert!(matches!(Pool::new(0), Err(InvalidConfig(_))));
    let soft_above_hard = Pool::builder()
        .soft_time_limit(Duration::from_secs(2))
        .time_limit(Duration::from_secs(1))
        .build();
    match soft_above_hard {
        Err(InvalidConfig(m)) => assert!(m.contains("soft_time_limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Pool::builder().chunk_size(0).build(),
        Err(InvalidConfig(_))
    ));
    assert!(matches!(
        Pool::builder().max_tasks_per_worker(0).build(),
        Err(InvalidConfig(_))
    ));
    assert!(matches!(
        Pool::builder().time_limit(Duration::ZERO).build(),
        Err(InvalidConfig(_))
    ));
}

/// Echoes a payload; one starting with 3 never returns.
fn echo_or_hang(b: serde_bytes::ByteBuf) -> usize {
    if b.first() == Some(&3) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    b.len()
}

#[test]
fn a_big_item_past_its_hard_limit_times_out_while_map_waits() {
    // Big items leave their ring copies to the supervisor thread and the
    // caller waits without helping: the time limit must still be enforced.
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .time_limit(Duration::from_millis(500))
        .build()
        .unwrap();
    let items = (0..8u8).map(|i| {
        let n = if i < 4 { 1 << 20 } else { 16 };
        serde_bytes::ByteBuf::from(vec![i; n])
    });
    let t = Instant::now();
    match pool.map(echo_or_hang, items) {
        Err(forkpool::Error::Job {
            index: 3,
            error: JobError::TimedOut { .. },
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(
        pool.map(
            echo_or_hang,
            vec![serde_bytes::ByteBuf::from(vec![9u8; 1 << 20])]
        )
        .unwrap(),
        vec![1 << 20]
    );
}

/// A job that returns 3 MiB at once: more than a result ring holds.
fn three_mib(i: u32) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![i as u8; 3 << 20])
}

#[test]
fn a_result_waiting_for_room_is_not_timed_out() {
    // map steps the supervisor itself between items; while the input is
    // slow, a worker whose result does not fit waits for the ring to be
    // emptied. That wait is the pool's, not the job's: a 200 ms limit must
    // not kill a job that took microseconds (it did before).
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .time_limit(Duration::from_millis(200))
        .build()
        .unwrap();
    let slow = (0..4u32).inspect(|_| std::thread::sleep(Duration::from_millis(300)));
    let out = pool.map(three_mib, slow).expect("no item may time out");
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, b)| b.len() == 3 << 20 && b[0] == i as u8)
    );
    assert_eq!(pool.stats().timed_out, 0);
}
