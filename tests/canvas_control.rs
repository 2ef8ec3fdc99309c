//! Workflows meet the rest of the pool: each step honours its job's queue
//! and priority, keeps its function's name (in statistics and events),
//! tells subscribers how it ended, and the pool's books add up after.

mod common;

use common::wait_until;
use forkpool::{EventKind, Pool, Queue};
use std::time::Duration;

fn pid(x: u64) -> u64 {
    u64::from(std::process::id()) * 1000 + x % 1000
}

fn pid_of(v: u64) -> u64 {
    v / 1000
}

fn add_pids(xs: Vec<u64>) -> Vec<u64> {
    xs.into_iter().map(pid_of).collect()
}

#[test]
fn steps_run_on_their_queues_and_are_counted_by_name() {
    let pool = Pool::builder()
        .workers(1)
        .queue("other", Queue::new().workers(1))
        .build()
        .unwrap();
    let default_pid = pid_of(pool.apply(pid, 0).unwrap());
    let other_pid = pid_of(pool.job(pid).queue("other").submit(0).get().unwrap());
    assert_ne!(default_pid, other_pid);
    let events = pool.events(4096);
    // A chain whose second step runs on "other", and a chord whose members
    // run there and whose body runs on the default queue.
    let chained = pool
        .job(pid)
        .sig(1)
        .then(pool.job(pid).name("on-other").queue("other"))
        .apply()
        .unwrap();
    assert_eq!(pid_of(chained), other_pid);
    let members = (0..4).map(|i| pool.job(pid).queue("other").priority(3).sig(i));
    let got = pool
        .group(members)
        .chord(pool.job(add_pids))
        .apply()
        .unwrap();
    assert_eq!(got, vec![other_pid; 4]);
    // Names: statistics count the named step apart.
    let snap = pool.inspect();
    assert_eq!(snap.function("on-other").unwrap().outcomes.completed, 1);
    let add_name = std::any::type_name_of_val(&add_pids);
    assert_eq!(snap.function(add_name).unwrap().outcomes.completed, 1);
    assert_eq!(
        snap.queue("other").unwrap().stats.outcomes.completed,
        1 + 1 + 4
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let t = pool.inspect().totals;
        t.add_up() && t.finished == t.submitted
    }));
    // Events: every single-job step was submitted and succeeded, with its
    // name (a group's members of one job travel as one batch, as a `map`'s
    // items do, and report in statistics, not one by one).
    let mut submitted = 0;
    let mut succeeded = Vec::new();
    while let Some(e) = events.try_recv() {
        match e.kind {
            EventKind::Submitted { .. } => submitted += 1,
            EventKind::Succeeded { function, .. } => succeeded.push(function),
            _ => {}
        }
    }
    assert_eq!(submitted, 2 + 1, "chain steps, body");
    assert_eq!(succeeded.len(), 3, "{succeeded:?}");
    assert!(succeeded.contains(&"on-other"));
    assert!(succeeded.contains(&add_name));
    pool.join().unwrap();
}
