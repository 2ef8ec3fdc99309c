//! Revoke by id: a job that has not started — scheduled, waiting in its
//! queue, reserved by a busy worker — never runs; a running job finishes
//! unless `terminate`, which kills its worker only while it is on that
//! job; a revoked job is never retried; an unknown or finished id is a
//! typed no-op; and a revoke racing a retry is never lost.

mod common;

use common::{temp_dir, wait_until};
use forkpool::{JobError, Pool, Queue, RetryPolicy, Revoked, Stage};
use std::path::PathBuf;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// Leaves a mark that it ran, then returns its argument's name.
fn mark(file: PathBuf) -> String {
    std::fs::write(&file, b"ran").unwrap();
    file.file_name().unwrap().to_string_lossy().into_owned()
}

/// Waits for `dir/go`; marks `dir/started` first.
fn hold(dir: PathBuf) -> u32 {
    std::fs::write(dir.join("started"), b"").unwrap();
    for _ in 0..3000 {
        if dir.join("go").exists() {
            return 7;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    0
}

/// Counts its attempts in `dir/attempts`, waits for `dir/go`, then fails.
fn fail_after_go(dir: PathBuf) -> u32 {
    let n = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(dir.join(format!("attempt-{n}")), b"").unwrap();
    hold(dir);
    panic!("fails every time")
}

fn always_fails(_: u32) -> u32 {
    panic!("fails")
}

fn worker_pid(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn a_job_that_has_not_started_never_runs() {
    let pool = Pool::builder()
        .workers(1)
        .queue("exact", Queue::new().workers(1))
        .build()
        .unwrap();
    let dir = temp_dir("revoke-unstarted");
    // Scheduled.
    let scheduled = pool.job(mark).countdown(LONG).submit(dir.join("scheduled"));
    assert_eq!(
        pool.revoke(scheduled.id(), false),
        Revoked::BeforeStart(Stage::Scheduled)
    );
    assert_eq!(scheduled.get(), Err(JobError::Revoked));
    // Reserved: prefetched behind a running job in the default queue.
    let running = pool.submit(hold, dir.clone());
    let reserved = pool.submit(mark, dir.join("reserved"));
    assert!(wait_until(LONG, || dir.join("started").exists()));
    // Handed to the worker behind it: the supervisor takes the job in and
    // dispatches it in a step or two, which a loaded machine may delay.
    assert!(wait_until(LONG, || {
        pool.inspect()
            .queue("default")
            .is_some_and(|d| d.reserved.iter().any(|w| w.id == Some(reserved.id())))
    }));
    assert_eq!(
        pool.revoke(reserved.id(), false),
        Revoked::BeforeStart(Stage::Reserved)
    );
    // Waiting: a queue with priorities hands work only to idle workers.
    let exact = pool.queue("exact").unwrap();
    let busy = exact.job(hold).priority(1).submit(dir.clone());
    let waiting = exact.job(mark).priority(1).submit(dir.join("waiting"));
    assert!(wait_until(LONG, || pool.inspect().active.len() == 2));
    assert_eq!(
        pool.revoke(waiting.id(), false),
        Revoked::BeforeStart(Stage::Waiting)
    );
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(running.get(), Ok(7));
    assert_eq!(busy.get(), Ok(7));
    assert_eq!(reserved.get(), Err(JobError::Revoked));
    assert_eq!(waiting.get(), Err(JobError::Revoked));
    // Nothing revoked ran; the pool goes on.
    for f in ["scheduled", "reserved", "waiting"] {
        assert!(!dir.join(f).exists(), "{f} ran");
    }
    assert_eq!(pool.apply(mark, dir.join("after")).unwrap(), "after");
    let s = pool.stats();
    assert_eq!(s.cancelled, 3, "{s:?}");
    assert_eq!(s.submitted, s.completed + s.failed + s.cancelled);
    assert!(pool.inspect().totals.add_up());
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}

#[test]
fn a_running_job_finishes_unless_terminated() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("revoke-running");
    let first_pid = pool.apply(worker_pid, ()).unwrap();
    // Left running: its own result stands.
    let h = pool.submit(hold, dir.clone());
    assert!(wait_until(LONG, || dir.join("started").exists()));
    assert_eq!(pool.revoke(h.id(), false), Revoked::LeftRunning);
    std::fs::write(dir.join("go"), b"").unwrap();
    assert_eq!(h.get(), Ok(7));
    assert_eq!(pool.apply(worker_pid, ()).unwrap(), first_pid, "not killed");
    // Terminated: the worker on it is killed and replaced.
    std::fs::remove_file(dir.join("go")).unwrap();
    std::fs::remove_file(dir.join("started")).unwrap();
    let h = pool.submit(hold, dir.clone());
    let id = h.id();
    assert!(wait_until(LONG, || dir.join("started").exists()));
    assert_eq!(pool.revoke(id, true), Revoked::Terminated);
    assert_eq!(h.get(), Err(JobError::Revoked));
    let second_pid = pool.apply(worker_pid, ()).unwrap();
    assert_ne!(second_pid, first_pid, "replaced");
    assert_eq!(pool.stats().worker_restarts, 1);
    // Over, or never was: nothing changes.
    assert_eq!(pool.revoke(id, true), Revoked::NotFound);
    let done = pool.submit(worker_pid, ());
    let id = done.id();
    assert_eq!(done.get(), Ok(second_pid));
    assert_eq!(pool.revoke(id, true), Revoked::NotFound);
    assert_eq!(pool.apply(worker_pid, ()).unwrap(), second_pid);
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}

#[test]
fn a_revoked_job_is_never_retried() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("revoke-retry");
    let h = pool
        .job(fail_after_go)
        .retry(RetryPolicy::new(5))
        .submit(dir.clone());
    assert!(wait_until(LONG, || dir.join("started").exists()));
    assert_eq!(pool.revoke(h.id(), false), Revoked::LeftRunning);
    std::fs::write(dir.join("go"), b"").unwrap();
    assert!(matches!(h.get(), Err(JobError::Panicked { .. })));
    let attempts = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("attempt")
        })
        .count();
    assert_eq!(attempts, 1, "no retry after the revoke");
    assert_eq!(pool.stats().retried, 0);
    std::fs::remove_dir_all(dir).unwrap();
    pool.join().unwrap();
}

/// A job retried as fast as it fails, revoked at varying moments: whether
/// the revoke meets an attempt running, one waiting, or a retry on its way
/// to the supervisor, the job ends and no attempt starts after it.
#[test]
fn a_revoke_racing_retries_is_never_lost() {
    let pool = Pool::builder().workers(2).build().unwrap();
    for round in 0..100u32 {
        let h = pool
            .job(always_fails)
            .retry(RetryPolicy::new(1_000_000))
            .submit(round);
        std::thread::sleep(Duration::from_micros(u64::from(round % 8) * 250));
        let outcome = pool.revoke(h.id(), round % 2 == 0);
        assert_ne!(
            outcome,
            Revoked::NotFound,
            "round {round}: a live job is found"
        );
        assert!(h.wait_timeout(LONG), "round {round}: the job ended");
        let attempts = h.attempts();
        let err = h.get().unwrap_err();
        assert!(
            matches!(err, JobError::Revoked | JobError::Panicked { .. }),
            "round {round}: {err:?}"
        );
        // No attempt is started after the revoke: the count stays.
        let before = pool.stats().submitted;
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            pool.stats().submitted,
            before,
            "round {round}: {attempts} attempts"
        );
    }
    let t = pool.inspect().totals;
    assert!(t.add_up() && t.finished == t.submitted, "{t:?}");
    pool.join().unwrap();
}
