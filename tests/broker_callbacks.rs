//! Callbacks of jobs run by other hosts (a real `redis-server`, a worker
//! host in a separate process): each fires exactly once in the submitting
//! process, on success and on error, for jobs submitted, detached and
//! spawned; one that panics is logged through `log` and the next ones
//! still run. Alone in its file: the logger is process-wide.
#![cfg(feature = "redis")]

mod common;

use common::server::{HostOpts, HostProc, Redis, client};
use forkpool::JobError;
use std::sync::mpsc;
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}
forkpool::register!(square);

fn boom(_: ()) -> u64 {
    panic!("boom")
}
forkpool::register!(boom);

fn parse(s: String) -> Result<u64, String> {
    s.parse().map_err(|_| format!("{s:?} is no number"))
}
forkpool::register!(fallible parse);

#[test]
fn host_main() {
    common::server::host_main();
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn callbacks_fire_once_in_the_submitting_process_and_a_panic_is_logged() {
    common::logs::keep();
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = client(&redis.url());
    let (tx, rx) = mpsc::channel::<String>();

    let (ok, err) = (tx.clone(), tx.clone());
    let job = client
        .job(square)
        .on_success(move |v: &u64| ok.send(format!("ok {v}")).unwrap())
        .on_error(move |e: &JobError| err.send(format!("error {e}")).unwrap());
    let h = job.submit(3);
    job.detach(4);
    job.spawn(5);
    assert_eq!(h.get(), Ok(9));
    let mut got: Vec<String> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    got.sort();
    assert_eq!(got, ["ok 16", "ok 25", "ok 9"]);

    // A job that fails: the error callback, once; a fallible job's own
    // `Err` is its value.
    let err = tx.clone();
    client
        .job(boom)
        .on_success(|_| panic!("no value"))
        .on_error(move |e: &JobError| err.send(format!("error {e}")).unwrap())
        .spawn(());
    let got = rx.recv_timeout(WAIT).unwrap();
    assert!(got.starts_with("error") && got.contains("boom"), "{got}");
    let ok = tx.clone();
    let h = client
        .try_job(parse)
        .on_success(move |v: &Result<u64, String>| ok.send(format!("value {v:?}")).unwrap())
        .submit("x".into());
    assert_eq!(h.get(), Ok(Err("\"x\" is no number".to_string())));
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        "value Err(\"\\\"x\\\" is no number\")"
    );

    // A revoked job tells its error callback.
    let err = tx.clone();
    let later = client
        .job(square)
        .countdown(Duration::from_secs(60))
        .on_error(move |e: &JobError| err.send(format!("error {e}")).unwrap())
        .detach(1);
    client.flush().unwrap();
    client.revoke(later, false).unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        format!("error {}", JobError::Revoked)
    );

    // A callback that panics is logged; the listener and the callback
    // thread go on.
    client
        .job(square)
        .on_success(|_| panic!("callback bug"))
        .spawn(2);
    let ok = tx.clone();
    client
        .job(square)
        .on_success(move |v: &u64| ok.send(format!("ok {v}")).unwrap())
        .spawn(6);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "ok 36");
    assert!(common::wait_until(Duration::from_secs(10), || {
        common::logs::logged(log::Level::Error, "callback bug")
    }));
    assert_eq!(client.apply(square, 7), Ok(49));

    // Nothing fired twice.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.try_recv().ok(), None);

    // Dropping the client runs what is queued and joins the thread.
    let (ok, err) = (tx.clone(), tx.clone());
    client
        .job(square)
        .on_success(move |v: &u64| ok.send(format!("ok {v}")).unwrap())
        .on_error(move |e: &JobError| err.send(format!("error {e}")).unwrap())
        .spawn(8);
    drop((client, job));
    drop(tx);
    let mut left = Vec::new();
    while let Ok(s) = rx.recv_timeout(WAIT) {
        left.push(s);
    }
    assert!(
        left == ["ok 64"] || (left.len() == 1 && left[0].starts_with("error")),
        "{left:?}"
    );
    let threads = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("forkpool-callb"))
        .count();
    assert_eq!(threads, 0, "the callback thread outlived its client");
}
