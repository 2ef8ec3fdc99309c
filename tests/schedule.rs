//! Delayed jobs (countdown, ETA), expiry, and per-job time limits.

mod common;

use common::{temp_dir, wait_until, worker_pid};
use forkpool::{JobError, Pool};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Wall-clock time the job started, in ns since the epoch.
fn started_at(_: ()) -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn epoch_ns(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
}

/// Writes a marker file: proof that the job ran.
fn touch(path: String) -> bool {
    std::fs::write(path, b"ran").is_ok()
}

#[test]
fn a_countdown_job_starts_no_sooner_and_waits_outside_the_workers() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.apply(worker_pid, ()).unwrap();
    let submitted = SystemTime::now();
    let delayed = pool
        .job(started_at)
        .countdown(Duration::from_millis(1500))
        .submit(());
    // It shows as scheduled, and the only worker is free meanwhile.
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        == 1));
    assert_eq!(pool.apply(worker_pid, ()), Ok(worker));
    assert!(!delayed.is_ready(), "started before its countdown");
    let started = delayed.get().unwrap();
    assert!(
        started >= epoch_ns(submitted) + 1_500_000_000,
        "started {} ms after submission",
        (started - epoch_ns(submitted)) / 1_000_000
    );
    assert_eq!(pool.stats().scheduled, 0);
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn monotonic_ns(_: ()) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn no_countdown_fires_early() {
    // The supervisor's timers run on the coarse clock, which trails the
    // real time by up to a tick: every deadline must add it, or a short
    // countdown can fire a few milliseconds early.
    let pool = Pool::new(2).unwrap();
    for round in 0..3 {
        for ms in [1u64, 2, 3, 5, 7, 11, 13] {
            let submitted = monotonic_ns(());
            let h = pool
                .job(monotonic_ns)
                .countdown(Duration::from_millis(ms))
                .submit(());
            let started = h.get().unwrap();
            assert!(
                started - submitted >= ms * 1_000_000,
                "round {round}: a {ms} ms countdown started after {} us",
                (started - submitted) / 1000
            );
        }
    }
    pool.join().unwrap();
}

#[test]
fn an_eta_job_starts_at_its_time_and_one_in_the_past_starts_now() {
    let pool = Pool::new(2).unwrap();
    let at = SystemTime::now() + Duration::from_millis(800);
    let later = pool.job(started_at).eta(at).submit(());
    let past = pool
        .job(started_at)
        .eta(SystemTime::now() - Duration::from_secs(3600))
        .submit(());
    let past_started = past.get().unwrap();
    assert!(past_started < epoch_ns(at), "an ETA in the past waits");
    assert!(later.get().unwrap() >= epoch_ns(at));
}

#[test]
fn scheduled_jobs_leave_in_time_order_and_can_be_cancelled() {
    let pool = Pool::new(1).unwrap();
    let dir = temp_dir("sched-cancel");
    let marker = dir.join("ran");
    let second = pool
        .job(started_at)
        .countdown(Duration::from_millis(900))
        .submit(());
    let first = pool
        .job(started_at)
        .countdown(Duration::from_millis(300))
        .submit(());
    let cancelled = pool
        .job(touch)
        .countdown(Duration::from_millis(600))
        .submit(marker.display().to_string());
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        == 3));
    assert!(cancelled.cancel());
    assert_eq!(cancelled.get(), Err(JobError::Cancelled));
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        <= 2));
    let (a, b) = (first.get().unwrap(), second.get().unwrap());
    assert!(a < b, "the earlier countdown ran first");
    assert!(!marker.exists(), "a cancelled scheduled job ran");
    assert_eq!(pool.stats().cancelled, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn join_waits_for_scheduled_jobs_and_terminate_cancels_them() {
    let pool = Pool::new(1).unwrap();
    let h = pool
        .job(nap_ms)
        .countdown(Duration::from_millis(400))
        .submit(1);
    pool.join().unwrap();
    assert!(h.is_ready(), "joined before a scheduled job ran");
    assert_eq!(h.get(), Ok(1));

    let pool = Pool::new(1).unwrap();
    let h = pool
        .job(nap_ms)
        .countdown(Duration::from_secs(3600))
        .submit(1);
    let view = pool.clone();
    assert!(wait_until(Duration::from_secs(10), || view
        .stats()
        .scheduled
        == 1));
    pool.terminate();
    assert_eq!(h.get(), Err(JobError::Cancelled));
    let s = view.stats();
    assert_eq!((s.cancelled, s.scheduled), (1, 0), "{s:?}");
}

fn marker(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let s = p.display().to_string();
    (p, s)
}

#[test]
fn a_job_not_started_by_its_expiry_never_runs() {
    let dir = temp_dir("expiry");
    let pool = Pool::new(1).unwrap();
    let (queued_path, queued_arg) = marker(&dir, "queued");
    let (delayed_path, delayed_arg) = marker(&dir, "delayed");
    let busy = pool.submit(nap_ms, 3000);
    std::thread::sleep(Duration::from_millis(200));
    // Sent to the busy worker's inbox behind the long job.
    let queued = pool
        .job(touch)
        .expires(Duration::from_millis(300))
        .submit(queued_arg);
    // Its countdown is past its expiry: it can never start.
    let delayed = pool
        .job(touch)
        .countdown(Duration::from_secs(60))
        .expires(SystemTime::now() + Duration::from_millis(300))
        .submit(delayed_arg);
    let waited = Instant::now();
    assert_eq!(delayed.get(), Err(JobError::Expired));
    assert_eq!(queued.get(), Err(JobError::Expired));
    assert!(
        !busy.is_ready(),
        "expired jobs resolve at their expiry, not when a worker frees up \
         (took {:?})",
        waited.elapsed()
    );
    assert_eq!(busy.get(), Ok(3000));
    assert_eq!(pool.apply(nap_ms, 1), Ok(1));
    assert!(
        !queued_path.exists() && !delayed_path.exists(),
        "an expired job ran"
    );
    let s = pool.stats();
    assert_eq!((s.expired, s.failed, s.scheduled), (2, 2, 0), "{s:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_started_job_is_not_stopped_by_its_expiry() {
    let pool = Pool::new(1).unwrap();
    let h = pool
        .job(nap_ms)
        .expires(Duration::from_millis(200))
        .submit(800);
    assert_eq!(h.get(), Ok(800));
    assert_eq!(pool.stats().expired, 0);
}

fn hang(_: ()) -> u32 {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn polite(_: ()) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if forkpool::soft_time_limit_exceeded() {
            return "stopped early".into();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    "ran to the end".into()
}

#[test]
fn per_job_time_limits_override_the_pools() {
    let pool = Pool::builder()
        .workers(2)
        .time_limit(Duration::from_millis(400))
        .build()
        .unwrap();
    // A longer limit for one job lets it finish past the pool's.
    let long = pool
        .job(nap_ms)
        .time_limit(Duration::from_secs(20))
        .submit(1000);
    // A shorter one kills a hang sooner than the pool's would.
    let short = Duration::from_millis(200);
    let hung = pool.job(hang).time_limit(short).submit(());
    assert_eq!(hung.get(), Err(JobError::TimedOut { limit: short }));
    assert_eq!(long.get(), Ok(1000));
    // The pool's own limit still holds for the rest.
    let limit = Duration::from_millis(400);
    assert_eq!(pool.apply(hang, ()), Err(JobError::TimedOut { limit }));
    // A per-job soft limit.
    let soft = pool
        .job(polite)
        .soft_time_limit(Duration::from_millis(100))
        .time_limit(Duration::from_secs(20))
        .submit(());
    assert_eq!(soft.get().as_deref(), Ok("stopped early"));
}

#[test]
fn contradictory_job_options_are_refused_alone() {
    let pool = Pool::builder()
        .workers(1)
        .time_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let soft_above_pool_hard = pool
        .job(nap_ms)
        .soft_time_limit(Duration::from_secs(2))
        .submit(1);
    match soft_above_pool_hard.get() {
        Err(JobError::InvalidOptions { message }) => {
            assert!(message.contains("soft_time_limit"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let zero = pool.job(nap_ms).time_limit(Duration::ZERO).submit(1);
    assert!(matches!(zero.get(), Err(JobError::InvalidOptions { .. })));
    assert_eq!(pool.apply(nap_ms, 1), Ok(1), "nothing else is affected");
    let s = pool.stats();
    assert_eq!((s.submitted, s.failed, s.completed), (3, 2, 1), "{s:?}");
}
