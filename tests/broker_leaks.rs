//! Nothing outlives a broker client or a worker host: no child process,
//! no thread, no descriptor (connections included).
//! This file holds a single test because it counts process-wide resources.
#![cfg(feature = "redis")]

mod common;

use common::server::Redis;
use common::{children_of, descendants, open_fds, wait_until};
use forkpool::broker::Broker;
use std::time::Duration;

fn inc(x: u64) -> u64 {
    x + 1
}
forkpool::register!(inc);

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn clients_and_hosts_leave_nothing_behind() {
    let me = std::process::id() as i32;
    let redis = Redis::start();
    let broker = Broker::new(&redis.url()).unwrap();
    // Warm up what the runtime opens once (the registry, the first pool).
    broker.client().unwrap().flush().unwrap();
    let fds_before = open_fds();
    let threads_before = threads();
    let children_before = children_of(me);
    for round in 0..3u64 {
        let host = broker
            .host()
            .workers(2)
            .handle_signals(false)
            .build()
            .unwrap();
        let stop = host.stopper();
        let running = std::thread::spawn(move || host.run());
        let client = broker.client().unwrap();
        assert_eq!(client.apply(inc, round), Ok(round + 1));
        let detached = client.job(inc).detach(round);
        client.flush().unwrap();
        drop(client);
        stop.stop();
        let report = running.join().unwrap().unwrap();
        assert!(report.ran >= 1, "{report}");
        let _ = detached;
    }
    let settled = wait_until(Duration::from_secs(5), || {
        open_fds() == fds_before && threads() == threads_before
    });
    assert!(
        settled,
        "descriptors before {fds_before:?}\nafter {:?}\nthreads {} -> {}",
        open_fds(),
        threads_before,
        threads()
    );
    assert_eq!(
        children_of(me),
        children_before,
        "only redis-server is left"
    );
    assert!(descendants(me).len() == children_before.len());
}
