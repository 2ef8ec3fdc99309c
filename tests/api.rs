//! JobHandle (get, wait_timeout, is_ready, id, cancel, Future), close /
//! join / terminate, stats, and Send + Sync.

mod common;

use common::{wait_until, worker_pid};
use forkpool::{JobError, JobHandle, Pool};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn double(x: u64) -> u64 {
    2 * x
}

#[test]
fn pool_and_handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Pool>();
    send::<JobHandle<String>>();
    send::<forkpool::Imap<std::ops::Range<u64>, u64>>();
}

#[test]
fn handles_wait_poll_and_have_ids() {
    let pool = Pool::new(2).unwrap();
    let slow = pool.submit(nap_ms, 400);
    let quick = pool.submit(double, 21);
    assert_ne!(slow.id(), quick.id());
    assert!(quick.wait_timeout(Duration::from_secs(10)));
    assert!(quick.is_ready());
    assert_eq!(quick.get(), Ok(42));
    assert!(
        !slow.wait_timeout(Duration::from_millis(10)),
        "still sleeping"
    );
    assert!(!slow.is_ready());
    assert_eq!(slow.get(), Ok(400));
}

#[test]
fn cancelling_a_queued_job_means_it_never_runs() {
    let pool = Pool::new(1).unwrap();
    let dir = common::temp_dir("cancel");
    fn touch(path: String) -> bool {
        std::fs::write(path, b"ran").is_ok()
    }
    let busy = pool.submit(nap_ms, 500);
    let marker = dir.join("ran");
    let queued = pool.submit(touch, marker.display().to_string());
    assert!(queued.cancel());
    assert!(queued.is_ready());
    assert_eq!(queued.get(), Err(JobError::Cancelled));
    assert_eq!(busy.get(), Ok(500));
    // Give a wrongly-run job every chance to show up.
    assert_eq!(pool.apply(double, 1), Ok(2));
    assert!(!marker.exists(), "a cancelled job ran");
    assert_eq!(pool.stats().cancelled, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cancelling_a_running_job_kills_and_replaces_its_worker() {
    let pool = Pool::new(1).unwrap();
    let first = pool.apply(worker_pid, ()).unwrap();
    let long = pool.submit(nap_ms, 60_000);
    let behind = pool.submit(double, 5);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert!(long.cancel());
    assert_eq!(long.get(), Err(JobError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        behind.get(),
        Ok(10),
        "the job queued behind it runs elsewhere"
    );
    let next = pool.apply(worker_pid, ()).unwrap();
    assert_ne!(next, first, "the worker was replaced");
    let s = pool.stats();
    assert_eq!(
        (s.cancelled, s.crashed, s.worker_restarts),
        (1, 0, 1),
        "{s:?}"
    );
}

#[test]
fn cancelling_a_finished_job_does_nothing() {
    let pool = Pool::new(1).unwrap();
    let h = pool.submit(double, 4);
    assert!(h.wait_timeout(Duration::from_secs(10)));
    assert!(!h.cancel());
    assert_eq!(h.get(), Ok(8));
}

/// A minimal executor: polls a future on this thread, parking between wakes.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(fut);
    loop {
        if let Poll::Ready(v) = Pin::as_mut(&mut fut).poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn handles_can_be_awaited() {
    let pool = Pool::new(2).unwrap();
    let a = pool.submit(nap_ms, 200);
    let b = pool.submit(double, 50);
    let sum = block_on(async { a.await.unwrap() + b.await.unwrap() });
    assert_eq!(sum, 300);
}

#[test]
fn join_waits_for_every_job() {
    let pool = Pool::new(2).unwrap();
    let handles: Vec<_> = (0..10).map(|i| pool.submit(nap_ms, 50 + i)).collect();
    let other = pool.clone();
    pool.join().unwrap();
    for (i, h) in handles.into_iter().enumerate() {
        assert!(h.is_ready(), "joined before job {i} finished");
        assert_eq!(h.get(), Ok(50 + i as u64));
    }
    assert_eq!(
        other.apply(double, 1),
        Err(JobError::PoolClosed),
        "clones see the join"
    );
    assert_eq!(other.stats().live_workers, 0);
}

#[test]
fn terminate_resolves_every_unfinished_job_at_once() {
    let pool = Pool::new(2).unwrap();
    let handles: Vec<_> = (0..6).map(|_| pool.submit(nap_ms, 60_000)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let stats_view = pool.clone();
    pool.terminate();
    for h in handles {
        assert_eq!(h.get(), Err(JobError::Cancelled));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(stats_view.stats().cancelled, 6);
}

#[test]
fn dropping_the_pool_resolves_outstanding_handles() {
    let pool = Pool::new(1).unwrap();
    let h = pool.submit(nap_ms, 60_000);
    drop(pool);
    assert_eq!(h.get(), Err(JobError::Cancelled));
}

#[test]
fn stats_add_up() {
    fn maybe_panic(x: u64) -> u64 {
        if x.is_multiple_of(10) {
            panic!("multiple of ten");
        }
        x
    }
    let pool = Pool::new(2).unwrap();
    let results: Vec<_> = pool.imap(maybe_panic, 0..100u64).collect();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 10);
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .live_workers
        == 2));
    let s = pool.stats();
    assert_eq!(s.submitted, 100);
    assert_eq!(s.completed, 90);
    assert_eq!(s.failed, 10);
    assert_eq!(s.panicked, 10);
    assert_eq!(s.crashed + s.timed_out + s.cancelled + s.worker_restarts, 0);
}
