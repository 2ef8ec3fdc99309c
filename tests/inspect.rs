//! Inspection: one call gives a consistent snapshot — jobs by where they
//! are (adding up), the running jobs with their worker, progress and
//! attempt, what waits in each queue in run order with priorities, what
//! is scheduled, every worker, and per-function and per-queue statistics
//! with wait and run-time distributions.

mod common;

use common::{temp_dir, wait_until};
use forkpool::{Pool, Queue, RetryPolicy, WorkerState};
use std::path::PathBuf;
use std::time::Duration;

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn quick(x: u32) -> u32 {
    x
}

fn boom(_: u32) -> u32 {
    panic!("boom")
}

fn crash(_: u32) -> u32 {
    std::process::abort()
}

/// Reports progress, then waits for `dir/go` to appear.
fn stepwise(dir: PathBuf) -> u32 {
    forkpool::report_progress(3, 10);
    let go = dir.join("go");
    for _ in 0..3000 {
        if go.exists() {
            return 7;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    0
}

/// Fails the first time (marks `dir/tried`), then waits for `dir/go`.
fn fails_once(dir: PathBuf) -> u32 {
    if !dir.join("tried").exists() {
        std::fs::write(dir.join("tried"), b"").unwrap();
        panic!("first attempt fails");
    }
    stepwise(dir)
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn totals_add_up_wherever_the_jobs_are() {
    let pool = Pool::builder()
        .workers(1)
        .queue("urgent", Queue::new().workers(1))
        .build()
        .unwrap();
    let urgent = pool.queue("urgent").unwrap();
    // Default queue: one running, some reserved behind it (prefetch).
    let dir = temp_dir("inspect-totals");
    let running = pool.submit(stepwise, dir.clone());
    let reserved: Vec<_> = (0..3).map(|i| pool.submit(quick, i)).collect();
    // Urgent queue: a priority job makes it exact, so jobs wait in it.
    let blocker = urgent.job(stepwise).priority(10).submit(dir.clone());
    let waiting: Vec<_> = (0..4)
        .map(|i| urgent.job(quick).priority(i as i32).submit(i))
        .collect();
    let scheduled = pool.job(quick).countdown(LONG).submit(99);
    // Both stepwise jobs running, and the quick ones handed to the default
    // queue's worker behind it (dispatch may take a step or two more).
    let settled = |snap: &forkpool::Inspection| {
        let reserved_ids: Vec<_> = snap
            .queue("default")
            .map(|d| d.reserved.iter().filter_map(|w| w.id).collect())
            .unwrap_or_default();
        snap.active.len() == 2 && reserved.iter().all(|h| reserved_ids.contains(&h.id()))
    };
    assert!(wait_until(LONG, || settled(&pool.inspect())));
    let snap = pool.inspect();
    let t = snap.totals;
    assert!(t.add_up(), "{t:?}");
    assert_eq!(t.running, 2, "{t:?}");
    assert_eq!(t.scheduled, 1, "{t:?}");
    assert_eq!(t.waiting + t.reserved, 7, "{t:?}");
    let u = snap.queue("urgent").unwrap();
    // Waiting in run order: priority 3, 2, 1, 0.
    let prios: Vec<i32> = u.waiting.iter().map(|w| w.priority).collect();
    assert_eq!(prios, [3, 2, 1, 0]);
    assert_eq!(u.waiting[0].id, Some(waiting[3].id()));
    assert!(
        u.waiting
            .iter()
            .all(|w| w.function.ends_with("quick") && w.items == 1)
    );
    let d = snap.queue("default").unwrap();
    assert_eq!(d.scheduled.len(), 1);
    assert_eq!(d.scheduled[0].id, Some(scheduled.id()));
    assert!(d.scheduled[0].due_in > Duration::from_secs(20));
    let reserved_ids: Vec<_> = d.reserved.iter().filter_map(|w| w.id).collect();
    for h in &reserved {
        assert!(reserved_ids.contains(&h.id()), "{d:?}");
    }
    // Let everything finish: the totals still add up, all finished.
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(running.get(), Ok(7));
    assert_eq!(blocker.get(), Ok(7));
    for h in reserved.into_iter().chain(waiting) {
        assert!(h.get().is_ok());
    }
    assert!(pool.revoke(scheduled.id(), false) != forkpool::Revoked::NotFound);
    assert!(wait_until(LONG, || {
        let t = pool.inspect().totals;
        t.finished == t.submitted
    }));
    let t = pool.inspect().totals;
    assert!(t.add_up(), "{t:?}");
    assert_eq!(t.submitted, 1 + 3 + 1 + 4 + 1, "{t:?}");
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}

#[test]
fn an_active_job_shows_its_worker_progress_and_attempt() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let dir = temp_dir("inspect-active");
    let h = pool
        .job(fails_once)
        .retry(RetryPolicy::new(2))
        .submit(dir.clone());
    assert!(wait_until(LONG, || pool
        .inspect()
        .active
        .iter()
        .any(|a| a.attempt == 2 && a.progress.is_some())));
    let snap = pool.inspect();
    let a = &snap.active[0];
    assert_eq!(a.id, Some(h.id()));
    assert!(a.function.ends_with("fails_once"), "{}", a.function);
    assert_eq!(a.queue, "default");
    assert_eq!(a.progress.map(|p| (p.done, p.total)), Some((3, 10)));
    assert_eq!(a.items_left, 1);
    assert!(a.running_for < LONG);
    let w = snap.workers.iter().find(|w| w.pid == a.worker_pid).unwrap();
    assert_eq!(w.state, WorkerState::Busy);
    assert!(w.rss_bytes.unwrap() > 100 << 10, "{w:?}");
    assert!(
        snap.workers
            .iter()
            .all(|w| w.queue == "default" && w.pid != 0)
    );
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(h.get(), Ok(7));
    // The worker that ran it counts the job (each attempt answered).
    let snap = pool.inspect();
    let answered: u64 = snap.workers.iter().map(|w| w.jobs_done).sum();
    assert_eq!(answered, 2, "{:?}", snap.workers);
    assert!(snap.active.is_empty());
    assert!(snap.workers.iter().all(|w| w.state == WorkerState::Idle));
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}

#[test]
fn statistics_by_function_and_queue_count_outcomes_and_time() {
    let pool = Pool::builder()
        .workers(2)
        .queue("slow", Queue::new().workers(1))
        .build()
        .unwrap();
    let slow = pool.queue("slow").unwrap();
    pool.map(quick, 0..1000).unwrap();
    let naps: Vec<_> = (0..3).map(|_| slow.submit(nap, 100)).collect();
    let _ = pool.apply(boom, 0);
    let _ = pool.apply(crash, 0);
    let _ = pool.job(quick).name("renamed").submit(1).get();
    for h in naps {
        h.get().unwrap();
    }
    let snap = pool.inspect();
    let quick_stats = snap.function(std::any::type_name_of_val(&quick)).unwrap();
    assert_eq!(quick_stats.outcomes.completed, 1000);
    assert_eq!(quick_stats.ran.count, 1000);
    let renamed = snap.function("renamed").unwrap();
    assert_eq!(
        renamed.outcomes.completed, 1,
        "a given name keeps its own tally"
    );
    let boom_stats = snap.function(std::any::type_name_of_val(&boom)).unwrap();
    assert_eq!(
        (boom_stats.outcomes.failed, boom_stats.outcomes.panicked),
        (1, 1)
    );
    let crash_stats = snap.function(std::any::type_name_of_val(&crash)).unwrap();
    assert_eq!(
        (crash_stats.outcomes.failed, crash_stats.outcomes.crashed),
        (1, 1)
    );
    let nap_stats = snap.function(std::any::type_name_of_val(&nap)).unwrap();
    assert_eq!(nap_stats.ran.count, 3);
    // Each nap ran 100 ms; with one worker the third waited for two
    // (queued in the worker's inbox: the wait counts until it started).
    assert!(
        nap_stats.ran.p50 >= Duration::from_millis(99),
        "{nap_stats:?}"
    );
    assert!(nap_stats.ran.max < Duration::from_secs(10), "{nap_stats:?}");
    assert!(
        nap_stats.waited.max >= Duration::from_millis(190),
        "{nap_stats:?}"
    );
    assert_eq!(nap_stats.waited.count, 3);
    let slow_q = &snap.queue("slow").unwrap().stats;
    assert_eq!(slow_q.outcomes.completed, 3);
    let default_q = &snap.queue("default").unwrap().stats;
    assert_eq!(default_q.outcomes.completed, 1001);
    assert_eq!(default_q.outcomes.failed, 2);
    assert_eq!(snap.totals.finished, 1000 + 3 + 2 + 1);
    assert!(snap.totals.add_up());
    pool.join().unwrap();
}

#[test]
fn ten_thousand_waiting_jobs_are_listed_in_run_order() {
    let pool = Pool::builder()
        .workers(1)
        .queue("q", Queue::new().workers(1))
        .build()
        .unwrap();
    let q = pool.queue("q").unwrap();
    let dir = temp_dir("inspect-many");
    let blocker = q.job(stepwise).priority(5).submit(dir.clone());
    let handles: Vec<_> = (0..10_000u32)
        .map(|i| q.job(quick).priority((i % 3) as i32).submit(i))
        .collect();
    let snap = pool.inspect();
    let view = snap.queue("q").unwrap();
    let listed = view.waiting.len() + view.reserved.len() + snap.active.len();
    assert_eq!(listed, 10_001, "{:?}", snap.totals);
    assert!(snap.totals.add_up());
    let prios: Vec<i32> = view.waiting.iter().map(|w| w.priority).collect();
    assert!(prios.windows(2).all(|w| w[0] >= w[1]), "run order");
    // Equal priorities in submission order.
    let twos: Vec<u64> = view
        .waiting
        .iter()
        .filter(|w| w.priority == 2)
        .map(|w| w.id.unwrap().as_u64())
        .collect();
    assert!(twos.windows(2).all(|w| w[0] < w[1]));
    for h in &handles {
        pool.revoke(h.id(), false);
    }
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(blocker.get(), Ok(7));
    assert!(
        handles
            .into_iter()
            .all(|h| h.get() == Err(forkpool::JobError::Revoked))
    );
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}
