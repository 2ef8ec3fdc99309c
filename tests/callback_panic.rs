//! A callback that panics is contained. Alone in its file: the panic runs
//! the process-wide panic hook in the caller, which must not coincide with
//! another test forking a pool (see the crate docs on locks held at build).

use forkpool::Pool;
use std::sync::mpsc;
use std::time::Duration;

fn boom(_: ()) -> u64 {
    panic!("boom")
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_panicking_callback_is_contained() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    pool.job(boom)
        .on_error(|_| panic!("callback bug"))
        .spawn(());
    pool.job(square)
        .on_success(move |v| tx.send(*v).unwrap())
        .spawn(4);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 16);
    pool.join().unwrap();
}
