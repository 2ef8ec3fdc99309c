//! Every codec this build has runs the same jobs: `map`, `submit`,
//! fallible jobs (an `Err` comes back typed), ignored results, results by
//! id, callbacks, and a value its codec cannot encode fails that job alone.
//! `cargo test --all-features --test codecs` covers all four.

use forkpool::{Codec, Failure, JobError, Pool};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    items: Vec<String>,
    note: Option<String>,
}

fn total(o: Order) -> usize {
    o.items.iter().map(String::len).sum::<usize>() + o.id as usize
}

fn check(n: i64) -> Result<i64, String> {
    if n < 0 {
        Err(format!("{n} < 0"))
    } else {
        Ok(n * 2)
    }
}

/// A map with non-string keys: JSON cannot encode it.
fn keyed(n: u32) -> BTreeMap<(u32, u32), u32> {
    BTreeMap::from([((n, n), n)])
}

#[test]
fn every_codec_runs_the_same_jobs() {
    for &codec in Codec::available() {
        let pool = Pool::builder().workers(2).codec(codec).build().unwrap();
        assert_eq!(pool.codec(), codec);
        let squares = pool.map(|x: u64| x * x, 0..1000u64).unwrap();
        assert_eq!(squares[999], 998_001, "{codec}");
        let order = Order {
            id: 3,
            items: vec!["ab".into(), "cde".into()],
            note: None,
        };
        assert_eq!(pool.submit(total, order.clone()).get(), Ok(8), "{codec}");
        assert_eq!(pool.apply(|o: Order| o, order.clone()), Ok(order.clone()));
        let job = pool.try_job(check);
        assert_eq!(job.submit(4).get(), Ok(Ok(8)), "{codec}");
        assert_eq!(
            job.submit(-1).get(),
            Ok(Err("-1 < 0".to_string())),
            "{codec}"
        );
        let (tx, rx) = mpsc::channel();
        pool.try_job(check)
            .on_error(move |f: &Failure<String>| tx.send(f.clone()).unwrap())
            .spawn(-5);
        assert_eq!(rx.recv().unwrap(), Failure::Err("-5 < 0".into()), "{codec}");
        assert_eq!(
            pool.job(total).ignore_result().submit(order.clone()).get(),
            Ok(())
        );
        let id = pool.job(total).detach(order);
        let h = pool.submit(|_: ()| (), ());
        h.get().unwrap();
        let mut taken = None;
        for _ in 0..500 {
            taken = pool.take_result::<usize>(id);
            if taken.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(taken, Some(Ok(8)), "{codec}");
        let keyed_result = pool.submit(keyed, 7).get();
        if codec.name() == "json" {
            assert!(
                matches!(keyed_result, Err(JobError::Codec(_))),
                "{keyed_result:?}"
            );
        } else {
            assert_eq!(keyed_result, Ok(BTreeMap::from([((7, 7), 7)])), "{codec}");
        }
        assert_eq!(pool.apply(|x: u32| x + 1, 1), Ok(2), "the pool serves on");
        pool.join().unwrap();
    }
}

/// Workflows assemble values from their parts' encodings in bincode's
/// layout: on a pool with another codec a signature or a workflow is
/// refused with a typed error (and the pool goes on), never run on bytes
/// it would misread.
#[test]
fn workflows_need_bincode_and_say_so() {
    fn inc(x: u64) -> u64 {
        x + 1
    }
    for &codec in Codec::available() {
        let pool = Pool::builder().workers(1).codec(codec).build().unwrap();
        let chain = pool.job(inc).sig(1).then(pool.job(inc));
        let lone = pool.job(inc).sig(1);
        if codec == Codec::Bincode {
            assert_eq!(chain.submit().get(), Ok(3));
            assert_eq!(lone.submit().get(), Ok(2));
        } else {
            for got in [chain.submit().get(), lone.submit().get()] {
                assert!(
                    matches!(&got, Err(JobError::InvalidOptions { message }) if message.contains("bincode")),
                    "{codec}: {got:?}"
                );
            }
        }
        assert_eq!(pool.apply(inc, 1), Ok(2), "{codec}: the pool goes on");
        pool.join().unwrap();
    }
}
