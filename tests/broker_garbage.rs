//! Garbage in a stream never crashes or stalls a worker host: a property
//! test adds entries that are not jobs (fields missing, doubled or
//! unreadable, unknown names and codecs, another type fingerprint, more
//! bytes than the cap) and jobs whose argument does not decode, next to a
//! real job. Every entry that is not a job is dead-lettered with a reason,
//! every job is settled (its failure stored), nothing stays pending, the
//! real job gets its answer, and the host process lives on.
#![cfg(feature = "redis")]

mod common;

use common::server::{HostOpts, HostProc, Redis};
use common::wait_until;
use forkpool::JobError;
use forkpool::broker::Broker;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::{Cell, RefCell};
use std::time::Duration;

fn add(x: (u64, u64)) -> u64 {
    x.0 + x.1
}
forkpool::register!(add as "garbage.add");

#[test]
fn host_main() {
    common::server::host_main();
}

const STREAM: &str = "{forkpool}:q:default:0";
const CAP: usize = 4096;

/// What a test entry should come to.
#[derive(Debug, Clone)]
enum Entry {
    /// Not a job: dead-lettered.
    Dead(Vec<(Vec<u8>, Vec<u8>)>),
    /// A job whose argument does not decode: settled with a codec error.
    Runs(u64, Vec<(Vec<u8>, Vec<u8>)>),
}

fn valid(id: u64, fp: u64, arg: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let opt = br#"{"queue":"default","result_ttl_ms":60000}"#.to_vec();
    [
        ("id", id.to_string().into_bytes()),
        ("job", b"garbage.add".to_vec()),
        ("codec", b"bincode".to_vec()),
        ("fp", format!("{fp:016x}").into_bytes()),
        ("try", b"1".to_vec()),
        ("opt", opt),
        ("arg", arg),
    ]
    .into_iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v))
    .collect()
}

/// One way to break an entry for sure.
#[derive(Debug, Clone)]
enum Defect {
    Remove(usize),
    Double(usize),
    Replace(usize, Vec<u8>),
    Oversized,
    Random(Vec<(Vec<u8>, Vec<u8>)>),
}

fn defect() -> impl Strategy<Value = Defect> {
    let bytes = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (0..7usize).prop_map(Defect::Remove),
        (0..7usize).prop_map(Defect::Double),
        // Values that cannot be right for their field: a letter in the id
        // or the attempt, an unknown codec or name, a fingerprint of the
        // wrong length or another one, options that are not JSON.
        bytes
            .clone()
            .prop_map(|b| Defect::Replace(0, [b"x".as_slice(), &b].concat())),
        bytes
            .clone()
            .prop_map(|b| Defect::Replace(1, [b"nope.".as_slice(), &b].concat())),
        bytes
            .clone()
            .prop_map(|b| Defect::Replace(2, [b"x-".as_slice(), &b].concat())),
        bytes
            .clone()
            .prop_map(|b| Defect::Replace(3, [b"g".as_slice(), &b].concat())),
        any::<u64>().prop_map(|f| Defect::Replace(3, format!("{:016x}", f | 1).into_bytes())),
        bytes
            .clone()
            .prop_map(|b| Defect::Replace(4, [b"z".as_slice(), &b].concat())),
        bytes
            .clone()
            .prop_map(|b| Defect::Replace(5, [b"\x00".as_slice(), &b].concat())),
        Just(Defect::Oversized),
        prop::collection::vec((bytes.clone(), bytes), 0..6).prop_map(|f| Defect::Random(
            f.into_iter()
                .map(|(k, v)| ([b"junk-".as_slice(), &k].concat(), v))
                .collect()
        )),
    ]
}

#[derive(Debug, Clone)]
enum Case {
    Broken(Vec<Defect>),
    /// A valid entry whose argument has the wrong length for `(u64, u64)`.
    BadArg(Vec<u8>),
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        4 => prop::collection::vec(defect(), 1..3).prop_map(Case::Broken),
        1 => prop::collection::vec(any::<u8>(), 0..40)
            .prop_filter("not 16 bytes", |a| a.len() != 16)
            .prop_map(Case::BadArg),
    ]
}

fn build(case: &Case, id: u64, fp: u64) -> Entry {
    let good_arg = [7u64.to_le_bytes(), 8u64.to_le_bytes()].concat();
    match case {
        Case::BadArg(arg) => Entry::Runs(id, valid(id, fp, arg.clone())),
        Case::Broken(defects) => {
            let mut f = valid(id, fp, good_arg);
            for d in defects {
                match d {
                    Defect::Remove(i) if *i < f.len() => {
                        f.remove(*i);
                    }
                    Defect::Double(i) if *i < f.len() => f.push(f[*i].clone()),
                    Defect::Replace(i, v) if *i < f.len() => f[*i].1 = v.clone(),
                    Defect::Oversized => f.push((b"pad".to_vec(), vec![b'.'; CAP])),
                    Defect::Random(r) => f = r.clone(),
                    // An index past a removal: remove the id instead.
                    _ => f.retain(|(k, _)| k != b"id"),
                }
            }
            // Whatever the mix, at least one defect stands: a `Random`
            // has no id, the others break a field or the size.
            Entry::Dead(f)
        }
    }
}

fn dead_len(c: &mut redis::Connection) -> i64 {
    redis::cmd("XLEN").arg("{forkpool}:dead").query(c).unwrap()
}

fn drained(c: &mut redis::Connection) -> bool {
    let len: i64 = redis::cmd("XLEN").arg(STREAM).query(c).unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("workers")
        .query(c)
        .unwrap();
    let none_pending =
        matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0)));
    len == 0 && none_pending
}

#[test]
fn garbage_entries_are_dead_lettered_and_the_host_goes_on() {
    let redis = Redis::start();
    let mut o = HostOpts::new(&redis.url());
    o.max_message = Some(CAP as u64);
    let host = HostProc::spawn(&o);
    let client = Broker::new(&redis.url())
        .unwrap()
        .max_message_size(CAP as u64)
        .client()
        .unwrap();
    let fp = forkpool::broker::registered()
        .into_iter()
        .find(|j| j.name == "garbage.add")
        .unwrap()
        .fingerprint;
    assert_eq!(client.apply(add, (1, 1)), Ok(2), "{}", host.log());
    let c = RefCell::new(redis.cli());
    let next_id = Cell::new(1u64 << 40);
    let host = RefCell::new(host);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(case(), 1..6), |cases| {
        let mut c = c.borrow_mut();
        let c = &mut *c;
        let dead_before = dead_len(c);
        let mut dead = 0;
        let mut runs = Vec::new();
        for case in &cases {
            next_id.set(next_id.get() + 1);
            let fields = match build(case, next_id.get(), fp) {
                Entry::Dead(f) => {
                    dead += 1;
                    f
                }
                Entry::Runs(id, f) => {
                    runs.push(id);
                    f
                }
            };
            let mut cmd = redis::cmd("XADD");
            cmd.arg(STREAM).arg("*");
            if fields.is_empty() {
                cmd.arg("empty").arg("");
            }
            for (k, v) in &fields {
                cmd.arg(k.as_slice()).arg(v.as_slice());
            }
            cmd.exec(c).unwrap();
        }
        // A real job behind the garbage still gets its answer.
        let h = client.submit(add, (20, 22));
        prop_assert!(
            h.wait_timeout(Duration::from_secs(20)),
            "host stalled:\n{}",
            host.borrow().log()
        );
        prop_assert_eq!(h.get(), Ok(42));
        prop_assert!(wait_until(Duration::from_secs(20), || drained(
            &mut redis.cli()
        )));
        prop_assert_eq!(dead_len(c) - dead_before, dead, "{:?}", cases);
        for id in runs {
            let r = client
                .take_result::<u64>(forkpool::JobId::from_u64(id))
                .unwrap();
            prop_assert!(matches!(r, Some(Err(JobError::Codec(_)))), "{:?}", r);
        }
        let mut host = host.borrow_mut();
        prop_assert!(
            host.wait_exit(Duration::ZERO).is_none(),
            "the host died:\n{}",
            host.log()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nhost log:\n{}", host.borrow().log());
    }
    // Every dead letter has its reason.
    let letters = client.dead_letters(1000).unwrap();
    assert!(!letters.is_empty());
    for d in &letters {
        assert!(
            d.reason.contains("malformed")
                || d.reason.contains("oversized")
                || d.reason.contains("unknown job name")
                || d.reason.contains("fingerprint"),
            "{d:?}"
        );
    }
}
