//! Events: a subscriber sees each job's life in order — submitted,
//! started by a worker, progress, retried, and one end — and workers
//! forked and exited; a subscriber that does not keep up loses events,
//! counted and announced, and never holds the pool up.

mod common;

use common::{temp_dir, wait_until};
use forkpool::{Event, EventKind, Events, JobError, JobId, Pool, RetryPolicy, Revoked};
use std::path::PathBuf;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn quick(x: u32) -> u32 {
    x
}

/// Reports progress, then waits for `dir/go`.
fn stepwise(dir: PathBuf) -> u32 {
    forkpool::report_progress(1, 4);
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    forkpool::report_progress(4, 4);
    4
}

fn always_panics(_: u32) -> u32 {
    panic!("no luck")
}

fn abort(_: ()) -> u32 {
    std::process::abort()
}

/// Every event about job `id` until its end (or `LONG` passes).
fn life_of(events: &Events, id: JobId) -> Vec<EventKind> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        let Some(Event { kind, .. }) = events.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let (mine, end) = match &kind {
            EventKind::Submitted { id: i, .. }
            | EventKind::Started { id: i, .. }
            | EventKind::Progress { id: i, .. }
            | EventKind::Retried { id: i, .. } => (*i == id, false),
            EventKind::Succeeded { id: i, .. }
            | EventKind::Failed { id: i, .. }
            | EventKind::Revoked { id: i }
            | EventKind::Expired { id: i }
            | EventKind::Cancelled { id: i } => (*i == id, *i == id),
            _ => (false, false),
        };
        if mine {
            seen.push(kind);
        }
        if end {
            break;
        }
    }
    seen
}

#[test]
fn a_job_is_submitted_started_makes_progress_and_succeeds() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(|(): ()| std::process::id(), ()).unwrap();
    let events = pool.events(1024);
    let dir = temp_dir("events-life");
    let h = pool.submit(stepwise, dir.clone());
    let id = h.id();
    assert!(wait_until(LONG, || pool
        .inspect()
        .active
        .first()
        .is_some_and(|a| a.progress.is_some())));
    std::thread::sleep(Duration::from_millis(250)); // a look or two while it runs
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(h.get(), Ok(4));
    let life = life_of(&events, id);
    assert!(
        matches!(&life[0], EventKind::Submitted { function, queue, priority: 0, .. }
            if function.ends_with("stepwise") && &**queue == "default"),
        "{life:?}"
    );
    assert!(
        matches!(life[1], EventKind::Started { worker_pid, attempt: 1, .. } if worker_pid == pid),
        "{life:?}"
    );
    assert!(
        life.iter()
            .any(|k| matches!(k, EventKind::Progress { progress, .. } if progress.done == 1)),
        "{life:?}"
    );
    assert!(
        matches!(life.last(), Some(EventKind::Succeeded { .. })),
        "{life:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}

#[test]
fn retries_and_every_kind_of_end_are_told() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let events = pool.events(4096);
    let h = pool.job(always_panics).retry(RetryPolicy::new(1)).submit(0);
    let id = h.id();
    assert!(matches!(h.get(), Err(JobError::Panicked { .. })));
    let life = life_of(&events, id);
    let kinds: Vec<&str> = life.iter().map(kind_name).collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "started",
            "retried",
            "submitted",
            "started",
            "failed"
        ],
        "{life:?}"
    );
    assert!(matches!(
        life[2],
        EventKind::Retried {
            next_attempt: 2,
            error: Some(JobError::Panicked { .. }),
            ..
        }
    ));
    assert!(matches!(life[4], EventKind::Started { attempt: 2, .. }));
    // Revoked, expired.
    let later = pool.job(quick).countdown(LONG).submit(1);
    let later_id = later.id();
    assert_ne!(pool.revoke(later_id, false), Revoked::NotFound);
    assert_eq!(later.get(), Err(JobError::Revoked));
    let life = life_of(&events, later_id);
    assert_eq!(
        life.iter().map(kind_name).collect::<Vec<_>>(),
        ["submitted", "revoked"]
    );
    let expired = pool
        .job(quick)
        .countdown(Duration::from_millis(300))
        .expires(Duration::from_millis(100))
        .submit(2);
    let expired_id = expired.id();
    assert_eq!(expired.get(), Err(JobError::Expired));
    let life = life_of(&events, expired_id);
    assert_eq!(life.last().map(kind_name), Some("expired"), "{life:?}");
    pool.join().unwrap();
}

#[test]
fn workers_forked_and_exited_are_told_with_their_status() {
    let pool = Pool::new(1).unwrap();
    let first = pool.apply(|(): ()| std::process::id(), ()).unwrap();
    let events = pool.events(1024);
    assert!(matches!(
        pool.apply(abort, ()),
        Err(JobError::Crashed { .. })
    ));
    let second = pool.apply(|(): ()| std::process::id(), ()).unwrap();
    pool.join().unwrap();
    let workers: Vec<EventKind> = events
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::WorkerForked { .. } | EventKind::WorkerExited { .. }
            )
        })
        .map(|e| e.kind)
        .collect();
    // The crash (its status may be learned after the replacement is
    // forked), the replacement (a spare may be forked beside it), and the
    // replacement's exit at the pool's join.
    assert!(
        workers.iter().any(
            |k| matches!(k, EventKind::WorkerExited { pid, signal: Some(6), by_the_pool: false, .. }
            if *pid == first)
        ),
        "{workers:?}"
    );
    assert!(
        workers.iter().any(
            |k| matches!(k, EventKind::WorkerForked { pid, replacing: true, .. } if *pid == second)
        ),
        "{workers:?}"
    );
    assert!(
        workers.iter().any(|k| matches!(k, EventKind::WorkerExited { pid, exit_code: Some(0), by_the_pool: true, .. } if *pid == second)),
        "{workers:?}"
    );
}

#[test]
fn a_subscriber_that_does_not_read_loses_events_and_is_told() {
    let pool = Pool::new(2).unwrap();
    let slow = pool.events(8);
    let handles: Vec<_> = (0..500).map(|i| pool.submit(quick, i)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get(), Ok(i as u32));
    }
    assert!(slow.lost() > 1000, "lost {}", slow.lost());
    let first: Vec<EventKind> = std::iter::from_fn(|| slow.try_recv())
        .map(|e| e.kind)
        .collect();
    assert_eq!(first.len(), 8, "what fitted");
    pool.apply(quick, 0).unwrap();
    let next = slow.recv_timeout(LONG).unwrap();
    assert!(
        matches!(next.kind, EventKind::Lost { count } if count == slow.lost()),
        "{next:?} after {} lost",
        slow.lost()
    );
    // Dropping the subscription unsubscribes.
    drop(slow);
    assert_eq!(pool.map(quick, 0..100).unwrap().len(), 100);
    pool.join().unwrap();
}

fn kind_name(k: &EventKind) -> &'static str {
    match k {
        EventKind::Submitted { .. } => "submitted",
        EventKind::Started { .. } => "started",
        EventKind::Progress { .. } => "progress",
        EventKind::Retried { .. } => "retried",
        EventKind::Succeeded { .. } => "succeeded",
        EventKind::Failed { .. } => "failed",
        EventKind::Revoked { .. } => "revoked",
        EventKind::Expired { .. } => "expired",
        EventKind::Cancelled { .. } => "cancelled",
        _ => "other",
    }
}
