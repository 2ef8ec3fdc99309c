//! A caller thread caught inside a panic while a pool forks must not
//! freeze the pool's workers: std's panic-hook lock is copied into the fork
//! held by a thread that does not exist there. (Alone in its file: it sets
//! the process's panic hook.)

use forkpool::{JobError, Pool};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn boom(_: ()) -> u32 {
    panic!("boom inside the job")
}

#[test]
fn a_panic_in_progress_in_the_caller_does_not_freeze_new_workers() {
    // A hook that dawdles for one thread, to hold std's hook lock.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("slow-panicker") {
            std::thread::sleep(Duration::from_secs(4));
        } else {
            default(info);
        }
    }));
    // A first pool puts forkpool's job-panic capture in place.
    let first = Pool::new(1).unwrap();
    assert!(matches!(
        first.apply(boom, ()),
        Err(JobError::Panicked { .. })
    ));

    let (tx, rx) = mpsc::channel();
    let panicker = std::thread::Builder::new()
        .name("slow-panicker".into())
        .spawn(move || {
            tx.send(()).unwrap();
            panic!("a caller thread panics slowly");
        })
        .unwrap();
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // now inside the hook

    // Fork a new fork server (and workers) while the hook lock is held.
    let started = Instant::now();
    let second = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = std::thread::spawn(move || tx.send(second.apply(boom, ())).unwrap());
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the new worker froze");
    match got {
        Err(JobError::Panicked { message }) => {
            assert!(message.contains("boom inside the job"), "{message}")
        }
        other => panic!("expected the job's panic, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    job.join().unwrap();
    assert!(panicker.join().is_err());
}
