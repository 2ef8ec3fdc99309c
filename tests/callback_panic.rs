//! A callback that panics is contained, and reported through the `log`
//! facade (never printed to stderr by the library). Alone in its file: the
//! panic runs the process-wide panic hook in the caller, which must not
//! coincide with another test forking a pool (see the crate docs on locks
//! held at build), and the logger is process-wide too.

mod common;

use common::logs::{all, keep, logged};
use forkpool::Pool;
use std::sync::mpsc;
use std::time::Duration;

fn boom(_: ()) -> u64 {
    panic!("boom")
}

fn square(x: u64) -> u64 {
    x * x
}

fn abort(_: ()) -> u64 {
    std::process::abort()
}

#[test]
fn a_panicking_callback_is_contained_and_logged() {
    keep();
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    pool.job(boom)
        .on_error(|_| panic!("callback bug"))
        .spawn(());
    pool.job(square)
        .on_success(move |v| tx.send(*v).unwrap())
        .spawn(4);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 16);
    // A worker lost under a job is logged as a warning.
    assert!(pool.apply(abort, ()).is_err());
    assert_eq!(pool.apply(square, 3), Ok(9));
    pool.join().unwrap();
    assert!(
        logged(log::Level::Error, "a job callback panicked: callback bug"),
        "{:?}",
        all()
    );
    assert!(logged(log::Level::Warn, "died"), "{:?}", all());
}
