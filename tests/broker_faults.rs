//! The broker under faults, with a real `redis-server` and worker hosts in
//! separate processes (visibility timeout 1 s, so leases lapse fast): a
//! host SIGKILLed mid-job, a job longer than its lease, a job that kills
//! every host it runs on, a countdown longer than the lease, a global rate
//! limit across two hosts, Redis restarted mid-run, two hosts started with
//! one name, and SIGTERM (finish, or hand back).
#![cfg(feature = "redis")]

mod common;

use common::server::{self, HostOpts, HostProc, Redis, Traces, append, my_host_pid, now_us};
use common::{alive, descendants, wait_until};
use forkpool::broker::Client;
use forkpool::{JobError, RateLimit};
use std::time::{Duration, Instant};

const VT: Duration = Duration::from_secs(1);

/// Records that it started (with its host's pid), works `ms`, records
/// that it ended; returns its host's pid.
fn mark((path, ms): (String, u64)) -> i32 {
    let host = my_host_pid();
    append(&path, &format!("start {host}"));
    std::thread::sleep(Duration::from_millis(ms));
    append(&path, &format!("end {host}"));
    host
}
forkpool::register!(mark);

/// Records that it started, then SIGKILLs the host it runs on.
fn kill_host(path: String) -> u32 {
    append(&path, "start");
    // SAFETY: kill(2) with a pid read from /proc; the worst it can do is
    // signal the wrong process, which the test would then report.
    unsafe { libc::kill(my_host_pid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(10));
    0
}
forkpool::register!(kill_host);

/// Appends the time it started (µs).
fn stamp(path: String) -> u64 {
    let t = now_us();
    append(&path, &t.to_string());
    t
}
forkpool::register!(stamp);

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
forkpool::register!(nap);

#[test]
fn host_main() {
    common::server::host_main();
}

fn opts(redis: &Redis, workers: usize) -> HostOpts {
    let mut o = HostOpts::new(&redis.url());
    o.workers = workers;
    o.vt = VT;
    o
}

fn client(redis: &Redis) -> Client {
    server::broker(&redis.url())
        .visibility_timeout(VT)
        .client()
        .unwrap()
}

/// `XPENDING` count and `XLEN` of the default queue's stream.
fn stream_state(redis: &Redis) -> (i64, i64) {
    let mut c = redis.cli();
    let key = "{forkpool}:q:default:0";
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg("workers")
        .query(&mut c)
        .unwrap();
    let count = match pending {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    };
    let len: i64 = redis::cmd("XLEN").arg(key).query(&mut c).unwrap();
    (count, len)
}

fn starts(lines: &[String]) -> Vec<i32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("start ")?.parse().ok())
        .collect()
}

#[test]
fn a_job_whose_host_is_killed_runs_again_elsewhere_with_one_result() {
    let redis = Redis::start();
    let a = HostProc::spawn(&opts(&redis, 1));
    let b = HostProc::spawn(&opts(&redis, 1));
    let client = client(&redis);
    let traces = Traces::new();
    let path = traces.path("runs");
    let id = client.job(mark).detach((path.clone(), 1500));
    let handle = client.submit(mark, (traces.path("other"), 0));
    handle.get().unwrap();
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("runs")
        .is_empty()));
    let first = starts(&traces.lines("runs"))[0];
    let (victim, survivor) = if first == a.pid() { (&a, &b) } else { (&b, &a) };
    assert_eq!(first, victim.pid(), "the job runs in a host process");
    let family = descendants(victim.pid());
    assert!(
        !family.is_empty(),
        "the host has a fork server and a worker"
    );
    victim.signal(libc::SIGKILL);
    // Its fork server and workers go with it.
    assert!(wait_until(Duration::from_secs(5), || family
        .iter()
        .all(|&p| !alive(p))));
    // Taken over after the lease lapses, run to the end on the other host.
    let end = Instant::now() + Duration::from_secs(30);
    let result = loop {
        if let Some(r) = client.take_result::<i32>(id).unwrap() {
            break r;
        }
        assert!(Instant::now() < end, "never finished: {}", survivor.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(result, Ok(survivor.pid()));
    let lines = traces.lines("runs");
    assert_eq!(starts(&lines), [victim.pid(), survivor.pid()], "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("end")).count(), 1);
    // Exactly one result: it was taken, and nothing is left pending.
    assert_eq!(client.take_result::<i32>(id).unwrap(), None);
    assert_eq!(stream_state(&redis), (0, 0));
}

#[test]
fn a_stalled_host_s_late_result_is_dropped() {
    let redis = Redis::start();
    let a = HostProc::spawn(&opts(&redis, 1));
    let b = HostProc::spawn(&opts(&redis, 1));
    let client = client(&redis);
    let traces = Traces::new();
    let id = client.job(mark).detach((traces.path("runs"), 300));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("runs")
        .is_empty()));
    let first = starts(&traces.lines("runs"))[0];
    let (mut stalled, survivor) = if first == a.pid() { (a, &b) } else { (b, &a) };
    // The host stops (its worker finishes the job, but the host cannot
    // settle it or renew its lease): the other host takes the job over.
    stalled.signal(libc::SIGSTOP);
    let mut c = redis.cli();
    let key = format!("{{forkpool}}:res:{}", id.as_u64());
    let stored = || -> Option<Vec<u8>> {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut redis.cli()).unwrap();
        v.filter(|v| v != b"P")
    };
    assert!(wait_until(Duration::from_secs(20), || stored().is_some()));
    let by_survivor = stored().unwrap();
    // Back, it settles late: its result is dropped, not written over.
    stalled.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    stalled.signal(libc::SIGTERM);
    assert!(stalled.wait_exit(Duration::from_secs(10)).is_some());
    assert!(stalled.log().contains("dropped 1"), "{}", stalled.log());
    let v: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    assert_eq!(v, by_survivor);
    assert_eq!(
        client.take_result::<i32>(id).unwrap(),
        Some(Ok(survivor.pid()))
    );
    assert_eq!(
        starts(&traces.lines("runs")),
        [stalled.pid(), survivor.pid()]
    );
    assert_eq!(stream_state(&redis), (0, 0));
}

#[test]
fn a_job_longer_than_its_lease_is_renewed_not_stolen() {
    let redis = Redis::start();
    let _a = HostProc::spawn(&opts(&redis, 1));
    let _b = HostProc::spawn(&opts(&redis, 1));
    let client = client(&redis);
    let traces = Traces::new();
    let path = traces.path("runs");
    let h = client.submit(mark, (path.clone(), 3500));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("runs")
        .is_empty()));
    std::thread::sleep(Duration::from_millis(2500));
    // Mid-run, past twice the lease: still its first delivery.
    let mut c = redis.cli();
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg("{forkpool}:q:default:0")
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut c)
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].3, 1, "delivered once");
    assert!(
        pending[0].2 < VT.as_millis() as u64,
        "renewed: idle {} ms",
        pending[0].2
    );
    let host = h.get().unwrap();
    assert_eq!(starts(&traces.lines("runs")), [host]);
}

#[test]
fn a_job_that_kills_its_hosts_is_dead_lettered_after_the_cap() {
    let redis = Redis::start();
    let mut o = opts(&redis, 1);
    o.max_deliveries = 2;
    let mut hosts = [HostProc::spawn(&o), HostProc::spawn(&o)];
    let client = client(&redis);
    let traces = Traces::new();
    let h = client.submit(kill_host, traces.path("runs"));
    let end = Instant::now() + Duration::from_secs(40);
    while !h.is_ready() {
        assert!(Instant::now() < end, "never dead-lettered");
        // Keep two hosts up: the job kills one per delivery.
        for host in hosts.iter_mut() {
            if host.wait_exit(Duration::ZERO).is_some() {
                *host = HostProc::spawn(&o);
            }
        }
        h.wait_timeout(Duration::from_millis(50));
    }
    match h.get() {
        Err(JobError::DeadLettered { reason }) => {
            assert!(reason.contains("delivered 3 times"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(traces.lines("runs").len(), 2, "ran twice, then set aside");
    let dead = client.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].deliveries, 3);
    assert_eq!(dead[0].job.as_deref(), Some("broker_faults::kill_host"));
    assert_eq!(stream_state(&redis), (0, 0));
    // The hosts serve on.
    assert_eq!(client.apply(nap, 1), Ok(1));
}

#[test]
fn a_countdown_longer_than_the_lease_runs_once() {
    let redis = Redis::start();
    let _a = HostProc::spawn(&opts(&redis, 1));
    let _b = HostProc::spawn(&opts(&redis, 1));
    let client = client(&redis);
    let traces = Traces::new();
    let t = Instant::now();
    let h = client
        .job(mark)
        .countdown(VT * 3)
        .submit((traces.path("runs"), 10));
    let host = h.get().unwrap();
    assert!(t.elapsed() >= VT * 3);
    // Long enough for a second run, had the job been held in a lease.
    std::thread::sleep(VT * 2);
    assert_eq!(starts(&traces.lines("runs")), [host]);
}

#[test]
fn a_rate_limit_holds_across_hosts() {
    let redis = Redis::start();
    let _a = HostProc::spawn(&opts(&redis, 2));
    let _b = HostProc::spawn(&opts(&redis, 2));
    let client = client(&redis);
    // Both hosts up and idle before the jobs come.
    for _ in 0..4 {
        client.apply(nap, 1).unwrap();
    }
    let traces = Traces::new();
    let path = traces.path("starts");
    let limited = client
        .job(stamp)
        .rate_limit("8/s".parse::<RateLimit>().unwrap());
    let n = 16;
    let handles: Vec<_> = (0..n).map(|_| limited.submit(path.clone())).collect();
    for h in handles {
        h.get().unwrap();
    }
    let mut t: Vec<u64> = traces
        .lines("starts")
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    t.sort();
    assert_eq!(t.len(), n);
    // Starts are spaced by the interval (125 ms), whichever host runs them:
    // two per-host limiters would let four workers go twice as fast.
    // Each start may lag its permission (dispatch, and a loaded machine's
    // scheduling), hence the slack; a limiter per host would put 9 starts
    // within about 500 ms.
    let slack = 150_000;
    for w in t.windows(9) {
        assert!(
            w[8] - w[0] >= 1_000_000 - slack,
            "9 starts within {} µs",
            w[8] - w[0]
        );
    }
    assert!(t[n - 1] - t[0] >= 15 * 125_000 - slack);
}

#[test]
fn jobs_survive_a_redis_restart() {
    let mut redis = Redis::start();
    let _a = HostProc::spawn(&opts(&redis, 2));
    let _b = HostProc::spawn(&opts(&redis, 2));
    let client = client(&redis);
    let before: Vec<_> = (0..60u64).map(|i| client.submit(nap, 20 + i % 3)).collect();
    std::thread::sleep(Duration::from_millis(200));
    redis.restart(Duration::from_millis(800));
    let after: Vec<_> = (0..20u64).map(|i| client.submit(nap, 10 + i % 3)).collect();
    for (i, h) in before.into_iter().enumerate() {
        assert!(
            h.wait_timeout(Duration::from_secs(30)),
            "job {i} never finished"
        );
        assert_eq!(h.get(), Ok(20 + i as u64 % 3));
    }
    for (i, h) in after.into_iter().enumerate() {
        assert_eq!(h.get(), Ok(10 + i as u64 % 3));
    }
    assert_eq!(client.apply(nap, 1), Ok(1));
    assert!(wait_until(Duration::from_secs(10), || stream_state(&redis) == (0, 0)));
}

#[test]
fn hosts_started_with_one_name_are_distinct_consumers() {
    let redis = Redis::start();
    let mut o = opts(&redis, 1);
    o.name = "same".into();
    let a = HostProc::spawn(&o);
    let b = HostProc::spawn(&o);
    let client = client(&redis);
    let mut c = redis.cli();
    let mut names: Vec<String> = Vec::new();
    let ok = wait_until(Duration::from_secs(20), || {
        client.apply(nap, 1).unwrap();
        let v: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("{forkpool}:q:default:0")
            .arg("workers")
            .query(&mut c)
            .unwrap();
        names = v
            .into_iter()
            .filter_map(|c| match c {
                redis::Value::Array(kv) => match kv.get(1) {
                    Some(redis::Value::BulkString(n)) => String::from_utf8(n.clone()).ok(),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        names.len() >= 2
    });
    assert!(ok, "{names:?}\n{}\n{}", a.log(), b.log());
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2, "{names:?}");
    for (n, h) in names.iter().zip([&a, &b]) {
        assert!(n.starts_with("same:"), "{n}");
        let _ = h;
    }
    let pids: Vec<String> = names
        .iter()
        .map(|n| n.split(':').nth(1).unwrap().into())
        .collect();
    assert!(pids.contains(&a.pid().to_string()) && pids.contains(&b.pid().to_string()));
}

#[test]
fn sigterm_finishes_running_jobs_or_hands_them_back() {
    let redis = Redis::start();
    let client = client(&redis);
    let traces = Traces::new();

    // A grace longer than the job: it finishes, the host exits 0.
    let mut o = opts(&redis, 1);
    o.grace = Duration::from_secs(10);
    let mut host = HostProc::spawn(&o);
    let h = client.submit(mark, (traces.path("finish"), 800));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("finish")
        .is_empty()));
    host.signal(libc::SIGTERM);
    assert_eq!(h.get(), Ok(host.pid()));
    let Some(status) = host.wait_exit(Duration::from_secs(10)) else {
        panic!("the host did not exit:\n{}", host.log())
    };
    assert!(status.success(), "{status:?}\n{}", host.log());
    assert!(host.log().contains("handed back 0"), "{}", host.log());

    // A grace shorter than the job: handed back, run by the next host.
    o.grace = Duration::from_millis(300);
    let mut host = HostProc::spawn(&o);
    let h = client.submit(mark, (traces.path("back"), 3000));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("back")
        .is_empty()));
    host.signal(libc::SIGTERM);
    let Some(status) = host.wait_exit(Duration::from_secs(10)) else {
        panic!("the host did not exit:\n{}", host.log())
    };
    assert!(status.success(), "{status:?}\n{}", host.log());
    assert!(host.log().contains("handed back 1"), "{}", host.log());
    assert!(!h.is_ready());
    let next = HostProc::spawn(&o);
    assert_eq!(h.get(), Ok(next.pid()));
    assert_eq!(starts(&traces.lines("back")), [host.pid(), next.pid()]);
    assert_eq!(stream_state(&redis), (0, 0));
}
