//! Workflows under faults: workers killed in the middle of chains and
//! chords, steps timing out, members panicking past their retries,
//! cancellation mid-flight, and the pool terminated or dropped under a
//! workflow. Every handle resolves, once; nothing starts after a
//! cancellation; every chord body runs at most once; the stats add up.

mod common;

use common::{counters, fresh_counters, monotonic_ns, temp_dir, wait_until};
use forkpool::{JobError, Pool, RetryOn, RetryPolicy};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn pool(workers: usize) -> Pool {
    counters(); // mapped before the workers are forked
    Pool::builder()
        .workers(workers)
        .time_limit(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn assert_stats_add_up(pool: &Pool) {
    let ok = wait_until(Duration::from_secs(10), || {
        let s = pool.stats();
        s.submitted == s.completed + s.failed + s.cancelled
    });
    assert!(ok, "stats do not add up: {:?}", pool.stats());
}

fn inc(x: u64) -> u64 {
    x + 1
}

fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

/// Records when it started in counter `slot` (monotonic ns), then sleeps
/// `ms` and gives `ms`.
fn timed((slot, ms): (usize, u64)) -> u64 {
    counters()[slot].store(monotonic_ns(), Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A chord body that counts its runs in counter `slot`.
fn body((slot, _): (usize, u64)) -> u64 {
    counters()[slot].fetch_add(1, Ordering::SeqCst)
}

fn started(slot: usize) -> u64 {
    counters()[slot].load(Ordering::SeqCst)
}

/// Aborts its worker on its first attempt (a marker file per argument
/// says it ran), then gives `x`.
fn abort_once((dir, x): (String, u64)) -> u64 {
    let marker = std::path::Path::new(&dir).join(x.to_string());
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"").unwrap();
        std::process::abort();
    }
    x
}

fn abort_on_odd(x: u64) -> u64 {
    if x % 2 == 1 {
        std::process::abort();
    }
    x
}

#[test]
fn a_worker_killed_in_a_chain_or_a_chord_fails_that_step_or_is_retried() {
    let pool = pool(2);
    // Without retries: the chain names the step, the chord its members.
    let wf = pool
        .job(inc)
        .sig(0)
        .then(pool.job(abort_on_odd))
        .then(pool.job(inc));
    match wf.submit().get() {
        Err(JobError::StepFailed { step: 1, error }) => {
            assert!(
                matches!(
                    *error,
                    JobError::Crashed {
                        signal: Some(6),
                        ..
                    }
                ),
                "{error:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    let chord = pool.job(abort_on_odd).starmap(0..6).chord(pool.job(sum));
    match chord.submit().get() {
        Err(JobError::MembersFailed(f)) => {
            let failed: Vec<usize> = f.failed().iter().map(|(i, _)| *i).collect();
            assert_eq!(failed, [1, 3, 5]);
            assert!(
                f.failed()
                    .iter()
                    .all(|(_, e)| matches!(e, JobError::Crashed { .. }))
            );
            assert_eq!(f.succeeded::<u64>().unwrap(), [(0, 0), (2, 2), (4, 4)]);
        }
        other => panic!("{other:?}"),
    }
    // With retries on crashes: the chain and the chord complete.
    let dir = temp_dir("canvas-crash");
    let d = dir.display().to_string();
    let retried = pool
        .job(abort_once)
        .retry(RetryPolicy::new(1).on(RetryOn::CRASHED));
    let wf = retried.sig((d.clone(), 100)).then(pool.job(inc)).then(
        retried
            .starmap((0..8).map(|i| (d.clone(), i)))
            .chord(pool.job(sum)),
    );
    assert_eq!(wf.submit().get(), Ok(28));
    std::fs::remove_dir_all(dir).unwrap();
    assert_stats_add_up(&pool);
    let s = pool.stats();
    assert_eq!((s.crashed, s.retried), (4 + 9, 9), "{s:?}");
}

/// Records its worker's pid in counter `slot`, then sleeps `ms`.
fn pid_then_sleep((slot, ms): (usize, u64)) -> u64 {
    counters()[slot].store(u64::from(std::process::id()), Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Signals the worker running a step from outside: the step is charged.
#[test]
fn a_worker_killed_from_outside_mid_chain_is_charged_to_its_step() {
    let pool = pool(1);
    let slot = fresh_counters(1);
    let h = pool
        .job(pid_then_sleep)
        .sig((slot, 5_000))
        .then(pool.job(inc))
        .submit();
    assert!(wait_until(Duration::from_secs(10), || started(slot) > 0));
    let worker = started(slot) as i32;
    // SAFETY: signalling the worker of our own pool that runs the step
    // (it cannot have exited: the step sleeps for seconds).
    unsafe { libc::kill(worker, libc::SIGKILL) };
    match h.get() {
        Err(JobError::StepFailed { step: 0, error }) => {
            assert!(matches!(*error, JobError::Crashed { .. }), "{error:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_stats_add_up(&pool);
}

fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(5));
    x
}

fn panics(x: u64) -> u64 {
    panic!("member {x} always panics")
}

#[test]
fn members_that_time_out_or_panic_past_their_retries_are_named() {
    let pool = pool(2);
    let limited = pool.job(slow).time_limit(Duration::from_millis(200));
    let chord = pool
        .group([pool.job(inc).sig(1), limited.sig(2), pool.job(inc).sig(3)])
        .chord(pool.job(sum));
    match chord.submit().get() {
        Err(JobError::MembersFailed(f)) => {
            assert_eq!(f.failed().len(), 1);
            assert_eq!(f.failed()[0].0, 1);
            assert!(matches!(f.failed()[0].1, JobError::TimedOut { .. }));
        }
        other => panic!("{other:?}"),
    }
    let retried = pool.job(panics).retry(RetryPolicy::new(2));
    let h = retried.starmap(0..3).chord(pool.job(sum)).submit();
    match h.get() {
        Err(JobError::MembersFailed(f)) => {
            assert_eq!(f.failed().len(), 3);
            for (i, (index, e)) in f.failed().iter().enumerate() {
                assert_eq!(*index, i);
                assert!(matches!(e, JobError::Panicked { message } if message.contains("always")));
            }
        }
        other => panic!("{other:?}"),
    }
    // Collect-all: the body sees the failures after the retries.
    let h = retried
        .starmap(0..2)
        .collect_all()
        .chord(
            pool.job(|all: Vec<Result<u64, JobError>>| all.iter().filter(|r| r.is_err()).count()),
        )
        .submit();
    assert_eq!(h.get(), Ok(2));
    assert_stats_add_up(&pool);
    let s = pool.stats();
    assert_eq!((s.timed_out, s.panicked, s.retried), (1, 15, 10), "{s:?}");
}

#[test]
fn cancelling_a_chain_kills_its_running_step_and_starts_nothing_more() {
    let pool = pool(2);
    let (first, second, third) = (fresh_counters(1), fresh_counters(1), fresh_counters(1));
    let wf = pool
        .job(timed)
        .sig((first, 0))
        .then(pool.job(timed).sig((second, 10_000)))
        .then(pool.job(timed).sig((third, 0)));
    let h = wf.submit();
    assert!(wait_until(Duration::from_secs(10), || started(second) > 0));
    let asked = Instant::now();
    assert!(h.cancel());
    let cancelled_at = monotonic_ns();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel waited for the step"
    );
    assert!(!h.cancel(), "cancelled once");
    assert_eq!(h.get(), Err(JobError::Cancelled));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(started(third), 0, "a step started after the cancel");
    assert!(started(second) < cancelled_at);
    assert_stats_add_up(&pool);
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed, s.cancelled), (2, 1, 1), "{s:?}");
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .live_workers
        == 2));
}

#[test]
fn cancelling_a_group_takes_back_the_members_its_workers_hold_unstarted() {
    let pool = pool(2);
    // Forty members of one job travel in batches of several (as a `map`'s
    // items do), and each worker holds more than one batch.
    let n = 40;
    let first = fresh_counters(n);
    let h = pool
        .job(timed)
        .starmap((0..n).map(|i| (first + i, 50)))
        .submit();
    let ran = || (0..n).filter(|&i| started(first + i) > 0).count();
    assert!(wait_until(Duration::from_secs(10), || ran() >= 2));
    assert!(h.cancel());
    let cancelled_at = monotonic_ns();
    assert_eq!(h.get(), Err(JobError::Cancelled));
    std::thread::sleep(Duration::from_millis(500));
    // At most the item each worker had started as it saw the recall.
    let late: Vec<u64> = (0..n)
        .map(|i| started(first + i))
        .filter(|&at| at > cancelled_at)
        .collect();
    assert!(
        late.len() <= 2,
        "{} members started after the cancel returned ({} ran in all)",
        late.len(),
        ran()
    );
    assert!(ran() < n / 2, "{} of {n} members ran", ran());
    assert_stats_add_up(&pool);
    assert_eq!(pool.stats().live_workers, 2, "no worker was killed for it");
}

#[test]
fn cancelling_a_chord_withdraws_its_waiting_members_and_its_body_never_runs() {
    let pool = pool(2);
    let runs = fresh_counters(1);
    // Members wait for their countdown in the supervisor's timers.
    let later = pool.job(inc).countdown(Duration::from_secs(30));
    let chord = later
        .starmap(0..1000)
        .chord(pool.job(|xs: Vec<u64>| xs.len() as u64))
        .then(pool.job(body).sig((runs, 0)));
    let h = chord.submit();
    std::thread::sleep(Duration::from_millis(50));
    assert!(h.cancel());
    assert_eq!(h.get(), Err(JobError::Cancelled));
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .scheduled
        == 0));
    assert_stats_add_up(&pool);
    let s = pool.stats();
    assert_eq!(
        (s.submitted, s.cancelled, s.completed),
        (1000, 1000, 0),
        "{s:?}"
    );
    assert_eq!(started(runs), 0);

    // Members running in batches: those not yet handed to a worker are
    // withdrawn; the body never runs.
    let slots = fresh_counters(400);
    let chord = pool
        .job(timed)
        .starmap((0..400).map(|i| (slots + i, 5)))
        .chord(pool.job(|xs: Vec<u64>| xs.len() as u64))
        .then(pool.job(body).sig((runs, 0)));
    let h = chord.submit();
    assert!(wait_until(Duration::from_secs(10), || started(slots) > 0));
    assert!(h.cancel());
    assert_eq!(h.get(), Err(JobError::Cancelled));
    assert_stats_add_up(&pool);
    let ran = (0..400).filter(|i| started(slots + i) > 0).count();
    assert!(ran < 400, "every member ran: nothing was withdrawn");
    assert_eq!(started(runs), 0, "the body ran");
}

#[test]
fn terminating_or_dropping_the_pool_resolves_its_workflows_as_cancelled() {
    let pool1 = pool(2);
    let slot = fresh_counters(1);
    let chain = pool1
        .job(timed)
        .sig((slot, 10_000))
        .then(pool1.job(inc))
        .submit();
    let chord = pool1
        .job(timed)
        .starmap((0..50).map(|_| (fresh_counters(1), 100)))
        .chord(pool1.job(sum))
        .submit();
    assert!(wait_until(Duration::from_secs(10), || started(slot) > 0));
    pool1.terminate();
    assert_eq!(chain.get(), Err(JobError::Cancelled));
    assert_eq!(chord.get(), Err(JobError::Cancelled));

    let pool2 = pool(1);
    let slot = fresh_counters(1);
    let h = pool2
        .job(timed)
        .sig((slot, 10_000))
        .then(pool2.job(inc))
        .then(pool2.job(inc).starmap(0..10).chord(pool2.job(sum)))
        .submit();
    assert!(wait_until(Duration::from_secs(10), || started(slot) > 0));
    drop(pool2);
    let resolved = Instant::now();
    assert_eq!(h.get(), Err(JobError::Cancelled));
    assert!(resolved.elapsed() < Duration::from_secs(5));
}
