//! Progress reports from inside jobs, seen through handles and status.

mod common;

use common::wait_until;
use forkpool::{JobStatus, Pool, Progress};
use std::time::Duration;

/// Counts to `n`, reporting every step, and pauses at the halfway mark
/// for `pause_ms` so the caller can look.
fn count((n, pause_ms): (u64, u64)) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(i);
        forkpool::report_progress(i + 1, n);
        if i + 1 == n / 2 {
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
    }
    acc
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_handle_sees_the_latest_report_of_a_tight_loop() {
    let pool = Pool::new(1).unwrap();
    let n = 2_000_000;
    let h = pool.submit(count, (n, 1500));
    assert!(
        wait_until(Duration::from_secs(20), || h.progress()
            == Some(Progress {
                done: n / 2,
                total: n
            })),
        "last seen: {:?}",
        h.progress()
    );
    assert_eq!(h.progress().unwrap().fraction(), Some(0.5));
    assert_eq!(h.get(), Ok((0..n).fold(0u64, |a, i| a.wrapping_add(i))));
}

#[test]
fn no_progress_before_a_job_starts_or_reports_or_after_it_ends() {
    let pool = Pool::new(1).unwrap();
    let busy = pool.submit(nap_ms, 800);
    let queued = pool.submit(count, (10, 0));
    assert!(wait_until(Duration::from_secs(10), || busy
        .progress()
        .is_none()
        && !busy.is_ready()));
    assert_eq!(queued.progress(), None, "queued behind another job");
    assert_eq!(busy.progress(), None, "running, but it never reports");
    assert!(queued.wait_timeout(Duration::from_secs(20)));
    assert_eq!(queued.progress(), None, "finished");
    // A report belongs to its job: the next job on that worker starts clean.
    let next = pool.submit(nap_ms, 600);
    assert!(wait_until(Duration::from_secs(10), || {
        pool.stats().completed == 2 && !next.is_ready()
    }));
    assert_eq!(next.progress(), None);
    assert_eq!(next.get(), Ok(600));
}

#[test]
fn a_detached_jobs_status_shows_its_progress() {
    let pool = Pool::new(1).unwrap();
    let n = 1000;
    let id = pool.job(count).detach((n, 1500));
    let half = Some(Progress {
        done: n / 2,
        total: n,
    });
    assert!(wait_until(Duration::from_secs(20), || pool.status(id)
        == JobStatus::Running { progress: half }));
    assert!(wait_until(Duration::from_secs(20), || pool.status(id)
        == JobStatus::Succeeded));
    assert_eq!(pool.take_result::<u64>(id), Some(Ok(n * (n - 1) / 2)));
}
