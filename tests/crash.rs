//! Crash isolation: panics are values, dead workers are reported with their
//! signal or exit code and replaced, a crash inside a batch costs only the
//! item that was running, and undecodable data fails its job alone.

mod common;

use common::{wait_until, worker_pid};
use forkpool::{Error, JobError, Pool};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::Write;
use std::time::Duration;

fn boom(_: ()) -> u32 {
    panic!("boom {}", 42)
}

#[test]
fn a_panic_is_a_value_and_the_worker_lives_on() {
    let pool = Pool::new(1).unwrap();
    let before = pool.apply(worker_pid, ()).unwrap();
    match pool.apply(boom, ()) {
        Err(JobError::Panicked { message }) => {
            assert!(message.contains("boom 42"), "{message}");
            assert!(message.contains("crash.rs"), "location missing: {message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(
        pool.apply(worker_pid, ()).unwrap(),
        before,
        "same worker serves on"
    );
    assert_eq!(pool.stats().panicked, 1);
    assert_eq!(pool.stats().worker_restarts, 0);
}

fn abort(_: ()) -> u32 {
    std::process::abort()
}
fn segfault(_: ()) -> u32 {
    // SAFETY: none; this writes through a null pointer on purpose.
    unsafe { std::ptr::null_mut::<u32>().write_volatile(1) };
    0
}
fn raise_segv(_: ()) -> u32 {
    // SAFETY: raising a signal in our own process.
    unsafe { libc::raise(libc::SIGSEGV) };
    0
}
fn exit3(_: ()) -> u32 {
    std::process::exit(3)
}
fn sigkill_self(_: ()) -> u32 {
    // SAFETY: signalling our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

#[test]
fn dead_workers_are_reported_and_replaced() {
    let pool = Pool::new(2).unwrap();
    let killed = |sig| JobError::Crashed {
        signal: Some(sig),
        exit_code: None,
    };
    type Job = fn(()) -> u32;
    let cases: [(Job, JobError); 5] = [
        (abort, killed(libc::SIGABRT)),
        (segfault, killed(libc::SIGSEGV)),
        (raise_segv, killed(libc::SIGSEGV)),
        (
            exit3,
            JobError::Crashed {
                signal: None,
                exit_code: Some(3),
            },
        ),
        (sigkill_self, killed(libc::SIGKILL)),
    ];
    for (f, expected) in cases {
        assert_eq!(pool.apply(f, ()), Err(expected));
        assert!(
            wait_until(Duration::from_secs(10), || pool.stats().live_workers == 2),
            "pool back to full strength: {:?}",
            pool.stats()
        );
        assert_eq!(pool.map(|x: u32| x + 1, 0..100u32).unwrap()[99], 100);
    }
    let stats = pool.stats();
    assert_eq!(stats.crashed, 5);
    assert_eq!(stats.worker_restarts, 5);
}

/// Records that item `i` ran, then crashes the worker for item 500.
fn logged(arg: (String, u64)) -> u64 {
    let (log, i) = arg;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    f.write_all(format!("{i}\n").as_bytes()).unwrap();
    if i == 500 {
        std::process::abort();
    }
    i * 2
}

fn runs(log: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_crash_in_a_batch_costs_only_the_running_item() {
    let dir = common::temp_dir("batch-crash");
    for chunk in [1000, 50, 1] {
        let pool = Pool::builder()
            .workers(2)
            .chunk_size(chunk)
            .build()
            .unwrap();
        let log = dir.join(format!("map-{chunk}"));
        let items = (0..1000u64).map(|i| (log.display().to_string(), i));
        match pool.map(logged, items) {
            Err(Error::Job {
                index: 500,
                error: JobError::Crashed {
                    signal: Some(6), ..
                },
            }) => {}
            other => panic!("chunk {chunk}: expected item 500 to crash, got {other:?}"),
        }
        assert_eq!(
            runs(&log),
            (0..1000).collect::<Vec<_>>(),
            "chunk {chunk}: every item ran exactly once"
        );

        let log = dir.join(format!("imap-{chunk}"));
        let items = (0..1000u64).map(|i| (log.display().to_string(), i));
        for (i, r) in pool.imap(logged, items).enumerate() {
            if i == 500 {
                assert!(matches!(r, Err(JobError::Crashed { .. })), "{r:?}");
            } else {
                assert_eq!(r, Ok(i as u64 * 2));
            }
        }
        assert_eq!(
            runs(&log),
            (0..1000).collect::<Vec<_>>(),
            "chunk {chunk}: imap ran each item once"
        );
        let stats = pool.stats();
        assert_eq!(
            (stats.completed, stats.crashed),
            (1998, 2),
            "chunk {chunk}: {stats:?}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Serializes fine in the caller but refuses to deserialize in the worker.
#[derive(Debug)]
struct OneWay(u32);
impl Serialize for OneWay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}
impl<'de> Deserialize<'de> for OneWay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == 13 {
            Err(serde::de::Error::custom("unlucky thirteen"))
        } else {
            Ok(OneWay(v))
        }
    }
}

/// Refuses to serialize some values.
#[derive(Debug, Deserialize)]
struct Picky(u32);
impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 7 {
            Err(serde::ser::Error::custom("seven is not allowed"))
        } else {
            s.serialize_u32(self.0)
        }
    }
}

fn take_one_way(x: OneWay) -> u32 {
    x.0
}
fn make_picky(x: u32) -> Picky {
    Picky(x)
}
fn take_picky(x: Picky) -> u32 {
    x.0
}

#[test]
fn undecodable_data_fails_its_job_alone() {
    let pool = Pool::new(2).unwrap();
    // Argument that the worker cannot decode.
    let got: Vec<_> = pool.imap(take_one_way, (10..16).map(OneWay)).collect();
    for (r, x) in got.iter().zip(10..16) {
        if x == 13 {
            assert!(
                matches!(r, Err(JobError::Codec(m)) if m.contains("unlucky")),
                "{r:?}"
            );
        } else {
            assert_eq!(*r, Ok(x));
        }
    }
    // Argument that cannot even be encoded: fails at once, in order.
    match pool.map(take_picky, (5..10).map(Picky)) {
        Err(Error::Job {
            index: 2,
            error: JobError::Codec(m),
        }) => assert!(m.contains("seven"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Result that the worker cannot encode.
    match pool.apply(make_picky, 7) {
        Err(JobError::Codec(m)) => assert!(m.contains("seven"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.apply(make_picky, 8).unwrap().0, 8);
    assert_eq!(
        pool.stats().worker_restarts,
        0,
        "codec errors cost no worker"
    );
}

fn big(n: usize) -> Vec<u8> {
    vec![7; n]
}

#[test]
fn results_over_the_message_cap_are_refused_alone() {
    let pool = Pool::builder()
        .workers(1)
        .max_message_size(64 * 1024)
        .build()
        .unwrap();
    assert_eq!(pool.apply(big, 1000).unwrap().len(), 1000);
    match pool.apply(big, 1 << 20) {
        Err(JobError::TooLarge { size, limit: 65536 }) => assert!(size > 1 << 20),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.apply(big, 10).unwrap(), vec![7; 10]);
    // An argument over the cap never leaves the caller.
    fn len(v: Vec<u8>) -> usize {
        v.len()
    }
    assert!(matches!(
        pool.apply(len, vec![0; 100_000]),
        Err(JobError::TooLarge { .. })
    ));
}

#[test]
fn large_payloads_stream_through_the_rings() {
    fn echo(v: Vec<u8>) -> Vec<u8> {
        v
    }
    let pool = Pool::new(2).unwrap();
    // Larger than a ring (2 MiB): both directions stream in pieces.
    let payload: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let back = pool.apply(echo, payload.clone()).unwrap();
    assert!(back == payload, "9 MiB round trip intact");
    let many = pool
        .map(echo, (0..8).map(|i| vec![i as u8; 700_000]))
        .unwrap();
    assert!(
        many.iter()
            .enumerate()
            .all(|(i, v)| v.len() == 700_000 && v[0] == i as u8)
    );
}
