//! Rate limits: jobs of a limited function start no faster than the limit
//! across all workers, however they are submitted, while other functions
//! run freely.

use forkpool::{Pool, RateLimit, RateLimitError};
use std::time::{Duration, SystemTime};

/// When the job started (ns since the epoch); its argument is a tag.
fn limited(_: u32) -> u128 {
    now_ns()
}

fn other(tag: u32) -> u128 {
    // Not the same machine code as `limited`: functions are told apart by
    // address, and identical ones may be merged.
    std::hint::black_box(tag);
    now_ns() + 1
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Gaps between sorted start times, in ms.
fn gaps_ms(mut starts: Vec<u128>) -> Vec<u128> {
    starts.sort();
    starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect()
}

/// Starts are spaced by the interval. The gate spaces *dispatches* by the
/// full interval; a start may lag its dispatch by the worker's wake-up, so
/// allow that much jitter (generously: the machine may be loaded).
fn assert_spaced(gaps: &[u128], interval_ms: u128) {
    for g in gaps {
        assert!(
            *g + 150 >= interval_ms,
            "starts {g} ms apart under a {interval_ms} ms limit: {gaps:?}"
        );
    }
    let total: u128 = gaps.iter().sum();
    assert!(
        total + 50 >= interval_ms * gaps.len() as u128,
        "{} starts in {total} ms: {gaps:?}",
        gaps.len() + 1
    );
}

#[test]
fn starts_are_spaced_across_workers_while_other_functions_run_freely() {
    let pool = Pool::new(2).unwrap();
    let job = pool.job(limited).rate_limit("2/s".parse().unwrap());
    let handles: Vec<_> = (0..5).map(|i| job.submit(i)).collect();
    // Submitted after the backlog of limited jobs, yet it does not wait
    // for it.
    let free = pool.submit(other, 0);
    let free_start = free.get().unwrap();
    let starts: Vec<u128> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    let last = *starts.iter().max().unwrap();
    assert!(
        free_start < last,
        "an unlimited job waited for the limited ones"
    );
    assert_spaced(&gaps_ms(starts), 500);
}

#[test]
fn the_limit_holds_for_map_and_submit_too_and_can_be_lifted() {
    let pool = Pool::builder()
        .workers(2)
        .rate_limit(limited, RateLimit::per_second(4).unwrap())
        .build()
        .unwrap();
    let mut starts = pool.map(limited, 0..4).unwrap();
    starts.push(pool.apply(limited, 9).unwrap());
    assert_spaced(&gaps_ms(starts), 250);
    // Waiting jobs count as scheduled meanwhile.
    let backlog: Vec<_> = (0..4).map(|i| pool.submit(limited, i)).collect();
    assert!(
        (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            pool.stats().scheduled > 0
        }),
        "rate-limited jobs wait in the timers"
    );
    for h in backlog {
        h.get().unwrap();
    }
    pool.set_rate_limit(limited, None);
    // Lifted: items of one batch start back to back.
    let starts = pool.map(limited, 0..12).unwrap();
    let closest = gaps_ms(starts).into_iter().min().unwrap();
    assert!(
        closest < 100,
        "still limited: starts at least {closest} ms apart"
    );
}

#[test]
fn bad_limits_are_refused_with_the_reason() {
    let err = "10/second".parse::<RateLimit>().unwrap_err();
    assert!(matches!(err, RateLimitError::BadUnit { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "rate limit \"10/second\": unknown unit \"second\" (use s, m or h)"
    );
    assert!(matches!(
        "10 per second".parse::<RateLimit>(),
        Err(RateLimitError::BadCount { .. })
    ));
    let err = "fast/s".parse::<RateLimit>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "rate limit \"fast/s\": \"fast\" is not a number of jobs"
    );
    assert!(matches!(
        "0/m".parse::<RateLimit>(),
        Err(RateLimitError::NotPositive { .. })
    ));
    assert_eq!("".parse::<RateLimit>(), Err(RateLimitError::Empty));
    assert_eq!(
        "1000/h".parse::<RateLimit>().unwrap().interval(),
        Duration::from_millis(3600)
    );
}
