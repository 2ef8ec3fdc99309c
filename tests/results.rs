//! Results by id (detach, status, take_result, result_expires) and ignored
//! results (ignore_result, spawn).

mod common;

use common::wait_until;
use forkpool::{JobError, JobStatus, Pool, RetryPolicy};
use std::sync::mpsc;
use std::time::Duration;

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn boom(_: ()) -> u32 {
    panic!("boom")
}

fn parse(s: String) -> Result<u32, String> {
    s.parse().map_err(|_| format!("bad number {s:?}"))
}

fn finished(pool: &Pool, id: forkpool::JobId) -> bool {
    matches!(pool.status(id), JobStatus::Succeeded | JobStatus::Failed)
}

#[test]
fn a_detached_job_goes_from_scheduled_to_pending_to_running_to_succeeded() {
    let pool = Pool::new(1).unwrap();
    let busy = pool.submit(nap_ms, 1500);
    let id = pool
        .job(nap_ms)
        .countdown(Duration::from_millis(500))
        .detach(800);
    assert_eq!(pool.status(id), JobStatus::Scheduled);
    assert!(wait_until(Duration::from_secs(10), || pool.status(id)
        == JobStatus::Pending));
    assert_eq!(pool.take_result::<u64>(id), None, "not finished");
    assert_eq!(busy.get(), Ok(1500));
    assert!(wait_until(Duration::from_secs(10), || pool.status(id)
        == JobStatus::Running { progress: None }));
    assert!(wait_until(Duration::from_secs(10), || finished(&pool, id)));
    assert_eq!(pool.status(id), JobStatus::Succeeded);
    assert_eq!(pool.take_result::<u64>(id), Some(Ok(800)));
    assert_eq!(
        pool.status(id),
        JobStatus::Unknown,
        "a result is taken once"
    );
    assert_eq!(pool.take_result::<u64>(id), None);
}

#[test]
fn failures_are_kept_and_a_wrong_type_loses_nothing() {
    let pool = Pool::new(2).unwrap();
    let crashed = pool.job(boom).detach(());
    let words = pool.job(shout).detach("hello".into());
    let bad = pool.try_job(parse).detach("x".into());
    let good = pool.try_job(parse).detach("12".into());
    for id in [crashed, words, bad, good] {
        assert!(wait_until(Duration::from_secs(20), || finished(&pool, id)));
    }
    assert_eq!(pool.status(crashed), JobStatus::Failed);
    assert!(matches!(
        pool.take_result::<u32>(crashed),
        Some(Err(JobError::Panicked { .. }))
    ));
    assert!(matches!(
        pool.take_result::<u64>(words),
        Some(Err(JobError::Codec(_)))
    ));
    assert_eq!(pool.status(words), JobStatus::Succeeded, "still there");
    assert_eq!(pool.take_result::<String>(words), Some(Ok("HELLO".into())));
    assert_eq!(pool.status(bad), JobStatus::Failed);
    assert_eq!(
        pool.take_result::<Result<u32, String>>(bad),
        Some(Ok(Err("bad number \"x\"".into())))
    );
    assert_eq!(pool.status(good), JobStatus::Succeeded);
    assert_eq!(
        pool.take_result::<Result<u32, String>>(good),
        Some(Ok(Ok(12)))
    );
}

#[test]
fn unknown_ids_and_ids_of_jobs_with_handles_are_unknown() {
    let pool = Pool::new(1).unwrap();
    let h = pool.submit(nap_ms, 1);
    let id = h.id();
    assert_eq!(h.get(), Ok(1));
    assert_eq!(pool.status(id), JobStatus::Unknown);
    assert_eq!(pool.take_result::<u64>(id), None);
}

#[test]
fn finished_results_expire() {
    let pool = Pool::builder()
        .workers(2)
        .result_expires(Duration::from_secs(1))
        .build()
        .unwrap();
    let slow = pool.job(nap_ms).detach(2500);
    let quick = pool.job(nap_ms).detach(1);
    assert!(wait_until(Duration::from_secs(10), || finished(
        &pool, quick
    ) || pool
        .status(quick)
        == JobStatus::Unknown));
    assert!(wait_until(Duration::from_secs(10), || pool.status(quick)
        == JobStatus::Unknown));
    assert_eq!(pool.take_result::<u64>(quick), None, "expired");
    // Expiry counts from when a job finished, not from submission.
    assert!(wait_until(Duration::from_secs(10), || finished(
        &pool, slow
    )));
    assert_eq!(pool.take_result::<u64>(slow), Some(Ok(2500)));
    assert!(matches!(
        Pool::builder().result_expires(Duration::ZERO).build(),
        Err(forkpool::Error::InvalidConfig(_))
    ));
}

#[test]
fn a_detached_job_may_retry_and_call_back() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let id = pool
        .job(boom)
        .retry(RetryPolicy::new(1))
        .on_error(move |e| tx.send(e.clone()).unwrap())
        .detach(());
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(20)).unwrap(),
        JobError::Panicked { .. }
    ));
    assert!(wait_until(Duration::from_secs(10), || finished(&pool, id)));
    assert_eq!(pool.stats().retried, 1);
    assert!(matches!(
        pool.take_result::<u32>(id),
        Some(Err(JobError::Panicked { .. }))
    ));
}

fn big(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn maybe_big(n: usize) -> Result<Vec<u8>, String> {
    if n == 0 {
        Err("empty".into())
    } else {
        Ok(vec![7; n])
    }
}

#[test]
fn ignored_results_are_not_sent_back() {
    // A result this size would fail with TooLarge if it travelled.
    let pool = Pool::builder()
        .workers(1)
        .max_message_size(4096)
        .build()
        .unwrap();
    assert!(matches!(
        pool.apply(big, 1 << 20),
        Err(JobError::TooLarge { .. })
    ));
    assert_eq!(pool.job(big).ignore_result().submit(1 << 20).get(), Ok(()));
    let ignoring = pool.try_job(maybe_big).ignore_result();
    assert_eq!(ignoring.submit(1 << 20).get(), Ok(Ok(())));
    assert_eq!(
        ignoring.submit(0).get(),
        Ok(Err("empty".to_string())),
        "a fallible job's error still comes back"
    );
    // Detached: the store keeps `()`.
    let id = pool.job(big).ignore_result().detach(1 << 20);
    assert!(wait_until(Duration::from_secs(10), || finished(&pool, id)));
    assert_eq!(pool.take_result::<()>(id), Some(Ok(())));
    // A success callback set before ignore_result still gets the value;
    // the handle still gets `()`.
    let (tx, rx) = mpsc::channel();
    let h = pool
        .job(shout)
        .on_success(move |s: &String| tx.send(s.clone()).unwrap())
        .ignore_result()
        .submit("abc".into());
    assert_eq!(h.get(), Ok(()));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "ABC");
}

#[test]
fn fire_and_forget_jobs_are_counted_and_call_back() {
    let pool = Pool::builder()
        .workers(1)
        .max_message_size(4096)
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let job = pool.job(big).on_error(move |e| tx.send(e.clone()).unwrap());
    let ids: Vec<_> = (0..5).map(|_| job.spawn(1 << 20)).collect();
    assert_eq!(ids.len(), 5);
    pool.job(boom).on_error(move |_| ()).spawn(());
    assert!(wait_until(Duration::from_secs(20), || {
        let s = pool.stats();
        s.completed == 5 && s.failed == 1
    }));
    assert!(rx.try_recv().is_err(), "no error: nothing large was sent");
    assert_eq!(pool.status(ids[0]), JobStatus::Unknown, "nothing is kept");
}
