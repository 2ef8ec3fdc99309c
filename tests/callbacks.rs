//! Success and error callbacks: once per job after retries, on the pool's
//! callback thread, never holding up dispatch, and never keeping the pool
//! alive.

mod common;

use common::{temp_dir, wait_until};
use forkpool::{Failure, JobError, Pool, RetryPolicy};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Panics until its directory holds `fails` marks, then returns their count.
fn flaky((dir, fails): (String, u32)) -> u32 {
    let n = std::fs::read_dir(&dir).unwrap().count() as u32 + 1;
    std::fs::write(format!("{dir}/{n}"), b"").unwrap();
    if n <= fails {
        panic!("attempt {n}");
    }
    n
}

#[test]
fn each_job_gets_one_callback_on_the_callback_thread_after_its_retries() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let (ok_tx, err_tx) = (tx.clone(), tx);
    let dir = temp_dir("cb-retry");
    let recovering = pool
        .job(flaky)
        .retry(RetryPolicy::new(3))
        .on_success(move |v: &u32| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            ok_tx.send(format!("ok {v} on {thread}")).unwrap();
        })
        .on_error(move |e: &JobError| err_tx.send(format!("error {e}")).unwrap())
        .submit((dir.display().to_string(), 2));
    assert_eq!(recovering.get(), Ok(3));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "ok 3 on forkpool-callbacks"
    );

    let failing_dir = temp_dir("cb-retry-fail");
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let failing = pool
        .job(flaky)
        .retry(RetryPolicy::new(1))
        .on_success(|_| panic!("no success expected"))
        .on_error(move |e| seen.lock().unwrap().push(e.clone()))
        .submit((failing_dir.display().to_string(), 10));
    assert!(matches!(failing.get(), Err(JobError::Panicked { .. })));
    assert!(wait_until(Duration::from_secs(10), || !errors
        .lock()
        .unwrap()
        .is_empty()));
    pool.join().unwrap(); // waits for queued callbacks
    let errors = errors.lock().unwrap();
    assert_eq!(errors.len(), 1, "one error callback after two attempts");
    assert!(matches!(&errors[0], JobError::Panicked { message } if message.contains("attempt 2")));
    assert!(
        rx.try_recv().is_err(),
        "no second callback for the first job"
    );
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(failing_dir).unwrap();
}

#[test]
fn a_slow_callback_does_not_hold_up_other_jobs() {
    let pool = Pool::new(1).unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let (r, f) = (release.clone(), finished.clone());
    pool.job(square)
        .on_success(move |_| {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            f.store(true, Ordering::SeqCst);
        })
        .spawn(2);
    // The callback is stuck; jobs keep flowing regardless.
    let later: Vec<_> = (0..20).map(|x| pool.submit(square, x)).collect();
    for (x, h) in later.into_iter().enumerate() {
        assert_eq!(h.get(), Ok((x * x) as u64));
    }
    assert!(!finished.load(Ordering::SeqCst));
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), || finished.load(Ordering::SeqCst)));
}

fn check(x: i64) -> Result<i64, String> {
    if x < 0 {
        Err(format!("{x} is negative"))
    } else {
        Ok(x)
    }
}

#[test]
fn fallible_jobs_pass_their_typed_error_or_the_pools() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = pool
        .try_job(check)
        .on_success({
            let tx = tx.clone();
            move |v: &i64| tx.send(Ok(*v)).unwrap()
        })
        .on_error(move |f: &Failure<String>| tx.send(Err(f.clone())).unwrap());
    assert_eq!(job.submit(5).get(), Ok(Ok(5)));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(5));
    assert_eq!(job.submit(-5).get(), Ok(Err("-5 is negative".into())));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Err(Failure::Err("-5 is negative".into()))
    );
    let expired = job
        .clone()
        .countdown(Duration::from_secs(60))
        .expires(Duration::from_millis(50));
    assert_eq!(expired.submit(1).get(), Err(JobError::Expired));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Err(Failure::Job(JobError::Expired))
    );
}

#[test]
fn cancelled_jobs_and_jobs_refused_at_submission_get_their_error_callback() {
    let pool = Pool::new(1).unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::channel();
    let job = {
        let count = count.clone();
        pool.job(nap_ms).on_error(move |e| {
            count.fetch_add(1, Ordering::SeqCst);
            tx.send(e.clone()).unwrap();
        })
    };
    let busy = job.submit(2000);
    let queued = job.submit(1);
    assert!(queued.cancel());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        JobError::Cancelled
    );
    let other = pool.clone();
    pool.close();
    let refused = job.submit(1);
    assert_eq!(refused.get(), Err(JobError::PoolClosed));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        JobError::PoolClosed
    );
    assert_eq!(busy.get(), Ok(2000));
    other.join().unwrap();
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "no callback for the success"
    );
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn callbacks_that_hold_the_pool_do_not_keep_it_alive() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.apply(pid, ()).unwrap() as i32;
    let (_, zygote) = common::stat(worker).expect("the worker runs");
    let ran = Arc::new(AtomicBool::new(false));
    {
        // A callback capturing a clone of the pool (to submit follow-ups,
        // say), on a job that finishes after the caller drops its handle.
        let held = pool.clone();
        let ran = ran.clone();
        pool.job(nap_ms)
            .on_success(move |_| {
                let _ = held.stats();
                ran.store(true, Ordering::SeqCst);
            })
            .spawn(300);
    }
    // And a detached result nobody takes.
    let _id = pool.job(square).detach(3);
    drop(pool);
    assert!(wait_until(Duration::from_secs(20), || ran.load(Ordering::SeqCst)));
    // The last handle went with the callback: the pool is gone too.
    for p in [worker, zygote] {
        assert!(
            wait_until(Duration::from_secs(20), || !common::alive(p)),
            "process {p} outlived its pool"
        );
    }
}
