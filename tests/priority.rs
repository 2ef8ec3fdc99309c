//! Priorities within a queue: higher runs first, first-in-first-out among
//! equals; a higher-priority job waits for at most one job of its queue to
//! finish before it starts (no waiting work is left queued in a busy
//! worker, and the items of a `map` batch count one each); aging lets a
//! patient low-priority job pass later high-priority ones.
//!
//! Jobs report when they started and ended on the system-wide monotonic
//! clock, which the workers and the test read alike.

mod common;

use forkpool::{Pool, Queue};
use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps `ms`, returns (started, ended).
fn timed(ms: u64) -> (u64, u64) {
    let start = now_ns();
    std::thread::sleep(Duration::from_millis(ms));
    (start, now_ns())
}

/// Returns when it started (and takes a little time).
fn stamp(tag: u32) -> (u32, u64) {
    let start = now_ns();
    std::thread::sleep(Duration::from_millis(2));
    (tag, start)
}

#[test]
fn higher_priority_first_and_in_order_among_equals() {
    let pool = Pool::new(1).unwrap();
    let blocker = pool.submit(timed, 400);
    std::thread::sleep(Duration::from_millis(50));
    // Tag = submission number; priorities mixed.
    let prios = [0, 5, -3, 5, 0, 9, 1, 5, -3, 0, 9, 1];
    let handles: Vec<_> = prios
        .iter()
        .enumerate()
        .map(|(i, &p)| pool.job(stamp).priority(p).submit(i as u32))
        .collect();
    blocker.get().unwrap();
    let mut started: Vec<(u32, u64)> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    started.sort_by_key(|&(_, t)| t);
    let order: Vec<u32> = started.iter().map(|&(tag, _)| tag).collect();
    let mut want: Vec<u32> = (0..prios.len() as u32).collect();
    want.sort_by_key(|&i| (std::cmp::Reverse(prios[i as usize]), i));
    assert_eq!(order, want, "priority order, then submission order");
    pool.join().unwrap();
}

#[test]
fn a_higher_priority_job_waits_for_at_most_one_completion() {
    for round in 0..3 {
        let pool = Pool::new(2).unwrap();
        // Both workers busy, and a backlog of low-priority work (submitted
        // before any priority was seen: prefetched into the busy workers).
        let a = pool.submit(timed, 300);
        let b = pool.submit(timed, 700);
        let low: Vec<_> = (0..8).map(|_| pool.submit(timed, 250)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let submitted = now_ns();
        let high = pool.job(timed).priority(10).submit(50);
        let (high_start, _) = high.get().unwrap();
        let mut ends: Vec<u64> = [a.get().unwrap(), b.get().unwrap()]
            .into_iter()
            .chain(low.into_iter().map(|h| h.get().unwrap()))
            .map(|(_, end)| end)
            .filter(|&end| end > submitted)
            .collect();
        ends.sort();
        assert!(
            high_start <= ends[1],
            "round {round}: the urgent job started {} ms after the second completion",
            (high_start - ends[1]) / 1_000_000
        );
        let s = pool.stats();
        assert_eq!((s.completed, s.failed, s.cancelled), (11, 0, 0), "{s:?}");
        pool.join().unwrap();
    }
}

#[test]
fn a_map_batch_is_counted_per_item() {
    let pool = Pool::builder().workers(1).chunk_size(100).build().unwrap();
    let p = pool.clone();
    // One batch of 40 items of 20 ms on the only worker.
    let map = std::thread::spawn(move || p.map(timed, vec![20u64; 40]).unwrap());
    std::thread::sleep(Duration::from_millis(150));
    let submitted = now_ns();
    let high = pool.job(timed).priority(1).submit(5);
    let (high_start, _) = high.get().unwrap();
    let items = map.join().unwrap();
    let after = items
        .iter()
        .filter(|&&(start, _)| start > high_start)
        .count();
    assert!(
        after > 0 && after < 40,
        "the urgent job waited for the whole batch ({} items ran first)",
        40 - after
    );
    // Between its submission and its start, at most one item finished:
    // the one in progress.
    let finished_meanwhile = items
        .iter()
        .filter(|&&(_, end)| end > submitted && end <= high_start)
        .count();
    assert!(
        finished_meanwhile <= 1,
        "{finished_meanwhile} items finished while the urgent job waited"
    );
    let s = pool.stats();
    assert_eq!((s.completed, s.failed), (41, 0), "{s:?}");
    pool.join().unwrap();
}

#[test]
fn aging_lets_a_patient_job_pass_later_higher_ones() {
    for aging in [false, true] {
        let mut queue = Queue::new().workers(1);
        if aging {
            queue = queue.aging(Duration::from_millis(50));
        }
        let pool = Pool::builder()
            .workers(1)
            .queue("q", queue)
            .build()
            .unwrap();
        let q = pool.queue("q").unwrap();
        let blocker = q.submit(timed, 500);
        std::thread::sleep(Duration::from_millis(50));
        let patient = q.job(stamp).priority(0).submit(0);
        std::thread::sleep(Duration::from_millis(150));
        let later: Vec<_> = (1..=4)
            .map(|i| q.job(stamp).priority(1).submit(i))
            .collect();
        blocker.get().unwrap();
        let (_, patient_start) = patient.get().unwrap();
        let starts: Vec<u64> = later.into_iter().map(|h| h.get().unwrap().1).collect();
        let passed = starts.iter().filter(|&&s| s > patient_start).count();
        if aging {
            // 150 ms of waiting is three levels of 50 ms: above priority 1.
            assert_eq!(passed, 4, "with aging the patient job runs first");
        } else {
            assert_eq!(passed, 0, "without aging priorities are strict");
        }
        pool.join().unwrap();
    }
}
