//! Retry policies: which failures retry, backoff, attempts, typed errors of
//! fallible jobs, and how retries meet cancellation, expiry and defaults.

mod common;

use common::{temp_dir, wait_until, worker_pid};
use forkpool::{JobError, Pool, RetryOn, RetryPolicy};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// How the attempt numbered `n` (1-based) of a flaky job fails.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
enum Fail {
    Panic,
    Abort,
    Hang,
    Error,
}

/// A job that fails its first `fails` attempts as `how`, then returns the
/// attempt number. Attempts are counted in files under `dir`, one per
/// attempt, named by start time, so the test can see when each started.
fn flaky((dir, fails, how): (String, u32, Fail)) -> Result<u32, String> {
    let n = std::fs::read_dir(&dir).unwrap().count() as u32 + 1;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(Path::new(&dir).join(format!("{now:030}")), b"").unwrap();
    if n > fails {
        return Ok(n);
    }
    match how {
        Fail::Panic => panic!("attempt {n} panics"),
        Fail::Abort => std::process::abort(),
        Fail::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Fail::Error => Err(format!("attempt {n} failed")),
    }
}

/// The infallible face of `flaky` (its errors become panics).
fn flaky_plain(args: (String, u32, Fail)) -> u32 {
    flaky(args).unwrap()
}

/// Start times (ns since the epoch) of the attempts recorded in `dir`.
fn attempt_times(dir: &Path) -> Vec<u128> {
    let mut t: Vec<u128> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    t.sort();
    t
}

fn args(dir: &Path, fails: u32, how: Fail) -> (String, u32, Fail) {
    (dir.display().to_string(), fails, how)
}

#[test]
fn crashes_timeouts_and_panics_are_retried_until_success() {
    let pool = Pool::builder()
        .workers(2)
        .time_limit(Duration::from_millis(500))
        .build()
        .unwrap();
    let policy = RetryPolicy::new(3);
    let cases = [(Fail::Abort, 1), (Fail::Hang, 1), (Fail::Panic, 2)];
    let runs: Vec<_> = cases
        .iter()
        .map(|&(how, fails)| {
            let dir = temp_dir("retry-kinds");
            let h = pool
                .job(flaky_plain)
                .retry(policy.clone())
                .submit(args(&dir, fails, how));
            (dir, h, fails)
        })
        .collect();
    for (dir, h, fails) in runs {
        assert!(h.wait_timeout(Duration::from_secs(30)));
        assert_eq!(h.attempts(), fails + 1, "{dir:?}");
        assert_eq!(h.get(), Ok(fails + 1));
        std::fs::remove_dir_all(dir).unwrap();
    }
    let s = pool.stats();
    assert_eq!(
        (s.crashed, s.timed_out, s.panicked, s.retried, s.completed),
        (1, 1, 2, 4, 3),
        "{s:?}"
    );
    // Every attempt counts: 3 jobs + 4 retries submitted.
    assert_eq!(s.submitted, 7);
    assert_eq!(s.submitted, s.completed + s.failed + s.cancelled);
}

#[test]
fn exponential_backoff_spaces_attempts_and_waits_outside_the_workers() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.apply(worker_pid, ()).unwrap();
    let dir = temp_dir("retry-backoff");
    let policy = RetryPolicy::new(5)
        .backoff(Duration::from_millis(300))
        .backoff_max(Duration::from_millis(500));
    let h = pool
        .job(flaky_plain)
        .retry(policy)
        .submit(args(&dir, 3, Fail::Panic));
    // While it waits for its retry, it is scheduled, and the worker is free.
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        == 1));
    assert_eq!(pool.apply(worker_pid, ()), Ok(worker));
    assert_eq!(h.get(), Ok(4));
    let t = attempt_times(&dir);
    let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    // 300 ms, 600 ms capped to 500 ms, then 500 ms.
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    for (gap, want) in gaps.iter().zip([300, 500, 500]) {
        assert!(
            *gap >= want,
            "retry after {gap} ms, before its {want} ms backoff"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_fallible_jobs_error_is_retried_then_returned_typed() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("retry-error");
    let h = pool
        .try_job(flaky)
        .retry(RetryPolicy::new(2).delay(Duration::from_millis(50)))
        .submit(args(&dir, 10, Fail::Error));
    assert!(h.wait_timeout(Duration::from_secs(30)));
    assert_eq!(h.attempts(), 3, "1 attempt and 2 retries");
    assert_eq!(h.get(), Ok(Err("attempt 3 failed".to_string())));
    let s = pool.stats();
    assert_eq!((s.errored, s.failed, s.retried), (3, 3, 2), "{s:?}");
    std::fs::remove_dir_all(&dir).unwrap();

    // Recovering before the retries run out gives the value.
    let dir = temp_dir("retry-error-ok");
    let h = pool
        .try_job(flaky)
        .retry(RetryPolicy::new(2))
        .submit(args(&dir, 1, Fail::Error));
    assert_eq!(h.get(), Ok(Ok(2)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn only_the_failures_the_policy_names_are_retried() {
    let pool = Pool::new(1).unwrap();
    let crashes_only = RetryPolicy::new(3).on(RetryOn::CRASHED | RetryOn::TIMED_OUT);
    let dir = temp_dir("retry-only");
    let h = pool
        .job(flaky_plain)
        .retry(crashes_only.clone())
        .submit(args(&dir, 1, Fail::Panic));
    assert!(h.wait_timeout(Duration::from_secs(30)));
    assert_eq!(h.attempts(), 1);
    assert!(matches!(h.get(), Err(JobError::Panicked { .. })));
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = temp_dir("retry-only-err");
    let h = pool
        .try_job(flaky)
        .retry(crashes_only)
        .submit(args(&dir, 1, Fail::Error));
    assert_eq!(h.get(), Ok(Err("attempt 1 failed".to_string())));
    assert_eq!(pool.stats().retried, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cancelling_during_backoff_stops_the_retries() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("retry-cancel");
    let h = pool
        .job(flaky_plain)
        .retry(RetryPolicy::new(5).delay(Duration::from_secs(3600)))
        .submit(args(&dir, 5, Fail::Panic));
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        == 1));
    assert!(h.cancel());
    assert_eq!(h.attempts(), 2);
    assert_eq!(h.get(), Err(JobError::Cancelled));
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        == 0));
    assert_eq!(attempt_times(&dir).len(), 1, "only the first attempt ran");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn no_retry_is_made_past_the_jobs_expiry() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("retry-expiry");
    let h = pool
        .job(flaky_plain)
        .expires(Duration::from_secs(1))
        .retry(RetryPolicy::new(5).delay(Duration::from_secs(20)))
        .submit(args(&dir, 5, Fail::Panic));
    let started = Instant::now();
    match h.get() {
        Err(JobError::Panicked { message }) => assert!(message.contains("attempt 1"), "{message}"),
        other => panic!("the last failure stands, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it waited for a retry"
    );
    assert_eq!(pool.stats().retried, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_pools_default_policy_applies_to_submit_and_can_be_overridden() {
    let pool = Pool::builder()
        .workers(1)
        .retry(RetryPolicy::new(2))
        .build()
        .unwrap();
    let dir = temp_dir("retry-default");
    let h = pool.submit(flaky_plain, args(&dir, 1, Fail::Abort));
    assert_eq!(h.get(), Ok(2));
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = temp_dir("retry-default-off");
    let h = pool
        .job(flaky_plain)
        .retry(RetryPolicy::new(0))
        .submit(args(&dir, 1, Fail::Abort));
    assert!(matches!(h.get(), Err(JobError::Crashed { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn join_waits_for_retries() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("retry-join");
    let quick = pool
        .job(flaky_plain)
        .retry(RetryPolicy::new(2))
        .submit(args(&dir, 1, Fail::Abort));
    let dir2 = temp_dir("retry-join-delay");
    let delayed = pool
        .job(flaky_plain)
        .retry(RetryPolicy::new(2).delay(Duration::from_millis(300)))
        .submit(args(&dir2, 1, Fail::Panic));
    pool.join().unwrap();
    assert!(
        quick.is_ready() && delayed.is_ready(),
        "joined before a retry ran"
    );
    assert_eq!((quick.get(), delayed.get()), (Ok(2), Ok(2)));
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(dir2).unwrap();
}

fn double(x: u64) -> u64 {
    2 * x
}

#[test]
fn a_default_policy_works_with_a_bounded_queue() {
    // The places try_submit takes travel with the job into the retry path.
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1)
        .retry(RetryPolicy::new(1))
        .build()
        .unwrap();
    let h = pool.try_submit(double, 21).unwrap();
    assert_eq!(h.get(), Ok(42));
    assert_eq!(pool.apply(double, 2), Ok(4));
    let dir = temp_dir("retry-bounded");
    let h = pool.submit(flaky_plain, args(&dir, 1, Fail::Panic));
    assert_eq!(h.get(), Ok(2));
    std::fs::remove_dir_all(dir).unwrap();
}
