//! Back-pressure: `queue_capacity(n)` bounds the jobs waiting for a worker.
//! A full queue blocks `submit`, `map` and `imap`, and makes `try_submit`
//! hand the job back; closing or terminating the pool wakes every blocked
//! submitter with a clear error.

mod common;

use forkpool::{Error, JobError, Pool, TrySubmitError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Fills the queue with `try_submit`s of `nap_ms(ms)` until it stays full
/// for `rounds` looks 50 ms apart (the supervisor hands a few jobs to each
/// worker's ring as they come, so the first `Full` may not last — on a
/// loaded machine, not for a while: long jobs can afford more rounds);
/// returns their handles.
fn fill(pool: &Pool, ms: u64, rounds: u32) -> Vec<forkpool::JobHandle<u64>> {
    let mut handles = Vec::new();
    let start = Instant::now();
    let mut quiet = 0;
    loop {
        let before = handles.len();
        loop {
            match pool.try_submit(nap_ms, ms) {
                Ok(h) => handles.push(h),
                Err(TrySubmitError::Full(back)) => {
                    assert_eq!(back, ms, "the argument comes back");
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never full");
        }
        if handles.len() == before && before > 0 {
            quiet += 1;
            if quiet == rounds {
                return handles;
            }
        } else {
            quiet = 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_queue_blocks_submit_and_hands_try_submit_its_job_back() {
    let capacity = 4;
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(capacity)
        .build()
        .unwrap();
    assert_eq!(pool.apply(nap_ms, 0), Ok(0), "the worker is up");
    let queued = fill(&pool, 100, 1);
    // The worker holds a few in its ring; `capacity` more wait.
    assert!(queued.len() > capacity, "{}", queued.len());
    assert!(matches!(
        pool.try_submit(nap_ms, 1),
        Err(TrySubmitError::Full(1))
    ));

    let blocked = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.submit(nap_ms, 7).get())
    };
    std::thread::sleep(Duration::from_millis(10));
    assert!(!blocked.is_finished(), "submit waits for room");
    assert_eq!(blocked.join().unwrap(), Ok(7), "then runs");
    for h in queued {
        assert_eq!(h.get(), Ok(100));
    }
    // Room again.
    assert_eq!(pool.try_submit(nap_ms, 2).unwrap().get(), Ok(2));
    let s = pool.stats();
    assert_eq!(s.submitted, s.completed);
}

#[test]
fn blocked_submitters_wake_when_the_pool_is_closed_or_terminated() {
    for terminate in [false, true] {
        let pool = Pool::builder()
            .workers(1)
            .queue_capacity(2)
            .build()
            .unwrap();
        assert_eq!(pool.apply(nap_ms, 0), Ok(0));
        // Long jobs: no place frees up while the test looks (on a loaded
        // machine the wake-ups below can take seconds, so a job must last
        // far longer than any of them).
        let queued = fill(&pool, 60_000, 10);
        let submitter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.submit(nap_ms, 1).get())
        };
        let mapper = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.map(nap_ms, vec![1u64; 10]))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!submitter.is_finished() && !mapper.is_finished());
        let woken = Instant::now();
        if terminate {
            pool.clone().terminate();
        } else {
            pool.close();
        }
        assert_eq!(submitter.join().unwrap(), Err(JobError::PoolClosed));
        match mapper.join().unwrap() {
            Err(Error::Job {
                error: JobError::PoolClosed,
                ..
            }) => {}
            other => panic!("terminate={terminate}: {other:?}"),
        }
        assert!(woken.elapsed() < Duration::from_secs(30), "woken at once");
        assert!(matches!(
            pool.try_submit(nap_ms, 3),
            Err(TrySubmitError::Closed(3))
        ));
        // Close lets admitted jobs run; terminate cancels them.
        let admitted = queued.len() as u64;
        let mut queued = queued.into_iter();
        let first = queued.next().unwrap();
        if terminate {
            assert_eq!(first.get(), Err(JobError::Cancelled));
        } else {
            let t = pool.inspect().totals;
            assert_eq!(t.running + t.reserved + t.waiting, admitted, "{t:?}");
            assert!(!first.is_ready());
            pool.clone().terminate();
            assert_eq!(first.get(), Err(JobError::Cancelled));
        }
    }
}

/// An input that counts how far it has been read.
fn counted(n: u64, pulled: Arc<AtomicU64>) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |_| {
        pulled.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn a_bounded_queue_makes_map_read_its_input_as_workers_take_it() {
    /// Runs a map of 200 items of 10 ms on one worker (about 2 s) and
    /// returns how far ahead of the finished items its input was read.
    fn read_ahead(pool: &Pool) -> u64 {
        let pulled = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicU64::new(1));
        let watcher = {
            let (pool, pulled, running) = (pool.clone(), pulled.clone(), running.clone());
            std::thread::spawn(move || {
                let mut ahead = 0;
                while running.load(Ordering::SeqCst) == 1 {
                    let finished = pool.stats().completed;
                    ahead = ahead.max(pulled.load(Ordering::SeqCst).saturating_sub(finished));
                    std::thread::sleep(Duration::from_millis(2));
                }
                ahead
            })
        };
        let got = pool
            .map(nap_ms, counted(200, pulled.clone()).map(|_| 10))
            .unwrap();
        assert_eq!(got, vec![10; 200]);
        running.store(0, Ordering::SeqCst);
        watcher.join().unwrap()
    }
    let unbounded = Pool::builder().workers(1).chunk_size(4).build().unwrap();
    let ahead = read_ahead(&unbounded);
    assert!(
        ahead >= 150,
        "unbounded: the input is read at once ({ahead} ahead)"
    );
    let bounded = Pool::builder()
        .workers(1)
        .chunk_size(4)
        .queue_capacity(8)
        .build()
        .unwrap();
    // Bounded: what waits (8), what the worker holds in its ring (a few
    // batches of 4) and the batch the mapper is filling (4).
    let ahead = read_ahead(&bounded);
    assert!(
        ahead <= 40,
        "bounded: read {ahead} items ahead of the worker"
    );
    let s = bounded.stats();
    assert_eq!((s.submitted, s.completed), (200, 200));
}
