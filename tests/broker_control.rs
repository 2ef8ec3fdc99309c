//! Control across hosts, with a real `redis-server` and worker hosts in
//! separate processes: revoking a job wherever it is (delayed, waiting in
//! its stream, held or running on a host, racing its start; an unknown or
//! finished id changes nothing), cancelling through a handle, and progress
//! reported inside a job reaching the client.
#![cfg(feature = "redis")]

mod common;

use common::server::{HostOpts, HostProc, Redis, Traces, append, broker};
use common::{alive, wait_until};
use forkpool::broker::Revocation;
use forkpool::{JobError, JobId, JobStatus, Progress, Stage};
use std::time::{Duration, Instant};

/// Appends its tag (and its pid) to a file, after `ms`.
fn mark((path, tag, ms): (String, String, u64)) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    append(&path, &format!("{tag} {}", std::process::id()));
    tag
}
forkpool::register!(mark);

/// Says it started (with its pid), then sleeps `ms`.
fn sleepy((path, ms): (String, u64)) -> u64 {
    append(&path, &std::process::id().to_string());
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
forkpool::register!(sleepy);

/// Reports 3 of 10, then waits (at most 30 s) for file `go`.
fn reporting(go: String) -> u32 {
    forkpool::report_progress(3, 10);
    let end = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(&go).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    7
}
forkpool::register!(reporting);

fn add(x: (u64, u64)) -> u64 {
    x.0 + x.1
}
forkpool::register!(add);

#[test]
fn host_main() {
    common::server::host_main();
}

fn one_worker(r: &Redis) -> HostOpts {
    let mut o = HostOpts::new(&r.url());
    o.workers = 1;
    o
}

#[test]
fn a_delayed_job_revoked_never_runs() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();
    let later = client.job(mark).countdown(Duration::from_secs(2)).submit((
        traces.path("t"),
        "handle".into(),
        0,
    ));
    let by_id = client.job(mark).countdown(Duration::from_secs(2)).detach((
        traces.path("t"),
        "detached".into(),
        0,
    ));
    client.flush().unwrap();
    let later_id = later.id();
    assert_eq!(client.status(by_id).unwrap(), JobStatus::Scheduled);
    assert_eq!(
        client.revoke(later.id(), false).unwrap(),
        Revocation::BeforeStart(Stage::Scheduled)
    );
    assert_eq!(
        client.revoke(by_id, false).unwrap(),
        Revocation::BeforeStart(Stage::Scheduled)
    );
    assert_eq!(later.get(), Err(JobError::Revoked));
    // Another client reads the revoked job's end by id.
    let other = broker(&redis.url()).client().unwrap();
    assert_eq!(other.status(by_id).unwrap(), JobStatus::Failed);
    assert_eq!(
        other.take_result::<String>(by_id).unwrap(),
        Some(Err(JobError::Revoked))
    );
    // Past the countdown, the host is alive and neither ran.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(client.apply(add, (1, 2)), Ok(3));
    assert!(traces.lines("t").is_empty(), "{:?}", traces.lines("t"));
    assert_eq!(client.revoke(later_id, true).unwrap(), Revocation::NotFound);
}

#[test]
fn a_waiting_job_revoked_never_runs() {
    let redis = Redis::start();
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();
    // No host yet: the jobs wait in their streams.
    let first = client.submit(mark, (traces.path("t"), "first".into(), 0));
    let urgent =
        client
            .job(mark)
            .queue("other")
            .priority(5)
            .submit((traces.path("t"), "urgent".into(), 0));
    let kept = client.submit(mark, (traces.path("t"), "kept".into(), 0));
    client.flush().unwrap();
    assert_eq!(
        client.revoke(first.id(), false).unwrap(),
        Revocation::BeforeStart(Stage::Waiting)
    );
    assert_eq!(
        client.revoke(urgent.id(), true).unwrap(),
        Revocation::BeforeStart(Stage::Waiting)
    );
    assert_eq!(first.get(), Err(JobError::Revoked));
    assert_eq!(urgent.get(), Err(JobError::Revoked));
    let mut o = HostOpts::new(&redis.url());
    o.queues = vec!["default".into(), "other".into()];
    let _host = HostProc::spawn(&o);
    assert!(kept.wait_timeout(Duration::from_secs(20)));
    assert_eq!(kept.get(), Ok("kept".to_string()));
    let ran: Vec<String> = traces.lines("t");
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].starts_with("kept "), "{ran:?}");
}

#[test]
fn a_running_job_revoked_with_terminate_is_killed_and_the_host_goes_on() {
    let redis = Redis::start();
    let host = HostProc::spawn(&one_worker(&redis));
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();

    // Left to finish without `terminate`: its own result stands.
    let h = client.submit(sleepy, (traces.path("soft"), 1500));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("soft")
        .is_empty()));
    assert_eq!(
        client.revoke(h.id(), false).unwrap(),
        Revocation::Held { terminate: false }
    );
    assert_eq!(h.get(), Ok(1500));

    // With `terminate`: killed, by id from another client.
    let id = client.job(sleepy).detach((traces.path("hard"), 60_000));
    client.flush().unwrap();
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("hard")
        .is_empty()));
    let pid: i32 = traces.lines("hard")[0].parse().unwrap();
    let other = broker(&redis.url()).client().unwrap();
    let started = Instant::now();
    assert_eq!(
        other.revoke(id, true).unwrap(),
        Revocation::Held { terminate: true }
    );
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)),
        "the worker still runs the revoked job"
    );
    assert!(
        wait_until(Duration::from_secs(10), || client.status(id).unwrap()
            == JobStatus::Failed),
        "{:?}: {}",
        client.status(id),
        host.log()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        client.take_result::<u64>(id).unwrap(),
        Some(Err(JobError::Revoked))
    );

    // `cancel` on a handle: the same, and the handle resolves at once.
    let h = client.submit(sleepy, (traces.path("cancel"), 60_000));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("cancel")
        .is_empty()));
    let pid: i32 = traces.lines("cancel")[0].parse().unwrap();
    assert!(h.cancel());
    assert!(h.is_ready());
    assert!(!h.cancel(), "already over");
    assert_eq!(h.get(), Err(JobError::Revoked));
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));

    // A new worker took the old one's place.
    assert_eq!(client.apply(add, (20, 22)), Ok(42));
    assert!(alive(host.pid()));
    let log = host.log();
    assert!(log.contains("Terminated"), "{log}");
}

#[test]
fn a_revoke_racing_the_start_is_honoured_exactly() {
    let redis = Redis::start();
    let _a = HostProc::spawn(&HostOpts::new(&redis.url()));
    let mut o = HostOpts::new(&redis.url());
    o.name = "second".into();
    let _b = HostProc::spawn(&o);
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();
    // Warm up both hosts.
    assert_eq!(client.map(add, (0..8).map(|i| (i, i))).unwrap().len(), 8);
    let handles: Vec<_> = (0..60)
        .map(|i| client.submit(mark, (traces.path("t"), format!("job{i}"), 20)))
        .collect();
    client.flush().unwrap();
    let mut said = Vec::new();
    for h in &handles {
        said.push(client.revoke(h.id(), false).unwrap());
    }
    let mut revoked = 0;
    for (i, (h, r)) in handles.into_iter().zip(said).enumerate() {
        assert!(
            h.wait_timeout(Duration::from_secs(30)),
            "job {i} never ended"
        );
        let out = h.get();
        let ran = traces
            .lines("t")
            .iter()
            .filter(|l| l.split(' ').next() == Some(&format!("job{i}")))
            .count();
        match (&r, &out) {
            (Revocation::BeforeStart(_), Err(JobError::Revoked)) => assert_eq!(ran, 0),
            (Revocation::Held { .. }, Err(JobError::Revoked)) => assert_eq!(ran, 0),
            (Revocation::Held { .. } | Revocation::NotFound, Ok(tag)) => {
                assert_eq!(tag, &format!("job{i}"));
                assert_eq!(ran, 1, "job {i} ran {ran} times");
            }
            other => panic!("job {i}: {other:?}"),
        }
        revoked += usize::from(out.is_err());
    }
    assert!(revoked > 0, "nothing was revoked in time");
}

#[test]
fn unknown_and_finished_ids_are_a_no_op() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = broker(&redis.url()).client().unwrap();
    let never = JobId::from_u64(1 << 40);
    assert_eq!(client.revoke(never, true).unwrap(), Revocation::NotFound);
    let id = client.job(add).detach((1, 1));
    client.flush().unwrap();
    assert!(wait_until(Duration::from_secs(20), || client
        .status(id)
        .unwrap()
        == JobStatus::Succeeded));
    assert_eq!(client.revoke(id, true).unwrap(), Revocation::NotFound);
    assert_eq!(client.take_result::<u64>(id).unwrap(), Some(Ok(2)));
    // Nothing was recorded for either.
    let mut cli = redis.cli();
    let n: u64 = redis::cmd("XLEN")
        .arg("{forkpool}:revokes")
        .query(&mut cli)
        .unwrap();
    assert_eq!(n, 0);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{forkpool}:rv:*")
        .query(&mut cli)
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn progress_reported_on_a_host_reaches_the_client() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();
    let go = traces.path("go");
    let h = client.submit(reporting, go.clone());
    let want = Some(Progress { done: 3, total: 10 });
    assert!(
        wait_until(Duration::from_secs(20), || h.progress() == want),
        "{:?}",
        h.progress()
    );
    let other = broker(&redis.url()).client().unwrap();
    assert_eq!(other.progress(h.id()).unwrap(), want);
    append(&go, "go");
    assert!(h.wait_timeout(Duration::from_secs(20)));
    assert_eq!(h.progress(), None, "over");
    assert!(wait_until(Duration::from_secs(5), || other
        .progress(h.id())
        .unwrap()
        .is_none()));
    assert_eq!(h.get(), Ok(7));
}

#[test]
fn inspect_shows_every_live_host_and_the_broker() {
    let redis = Redis::start();
    let mut a = HostOpts::new(&redis.url());
    a.name = "alpha".into();
    a.workers = 1;
    let mut b = a.clone();
    b.name = "beta".into();
    b.queues = vec!["default".into(), "slow".into()];
    let alpha = HostProc::spawn(&a);
    let mut beta = HostProc::spawn(&b);
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();

    let names = |seen: &forkpool::broker::BrokerInspection| {
        let mut n: Vec<String> = seen.hosts.iter().map(|h| h.host.clone()).collect();
        n.sort();
        n
    };
    assert!(
        wait_until(Duration::from_secs(20), || names(
            &client.inspect().unwrap()
        ) == ["alpha", "beta"]),
        "{:?}",
        client.inspect()
    );
    // A job running on one of them shows, with its id and name.
    let h = client.submit(sleepy, (traces.path("s"), 60_000));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("s")
        .is_empty()));
    let pid: u32 = traces.lines("s")[0].parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            client.inspect().unwrap().hosts.iter().any(|host| {
                host.active.iter().any(|j| {
                    j.id == Some(h.id().as_u64())
                        && j.worker_pid == pid
                        && j.name.contains("sleepy")
                })
            })
        }),
        "{:?}",
        client.inspect()
    );
    // Each host's snapshot is refreshed about once a second: on a loaded
    // machine one may still be from before its worker was up.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let seen = client.inspect().unwrap();
            seen.hosts.len() == 2
                && seen
                    .hosts
                    .iter()
                    .all(|h| h.worker_processes.iter().any(|w| w.pid != 0))
        }),
        "{:?}",
        client.inspect()
    );
    let seen = client.inspect().unwrap();
    for host in &seen.hosts {
        let want = if host.host == "alpha" { &alpha } else { &beta };
        assert_eq!(host.pid, want.pid() as u32);
        assert_eq!(host.workers, 1);
        assert!(host.consumer.starts_with(&format!("{}:", host.host)));
        assert!(!host.worker_processes.is_empty(), "{host:?}");
        assert!(host.worker_processes.iter().any(|w| w.pid != 0));
    }
    assert_eq!(
        seen.hosts.iter().find(|h| h.host == "beta").unwrap().queues,
        ["default", "slow"]
    );

    // The broker's view: jobs no host takes wait; delayed ones are counted.
    for i in 0..3 {
        client.job(add).queue("nobody").priority(2).spawn((i, i));
    }
    client
        .job(add)
        .countdown(Duration::from_secs(60))
        .spawn((1, 1));
    client.flush().unwrap();
    let seen = client.inspect().unwrap();
    let nobody = seen
        .streams
        .iter()
        .find(|s| s.queue == "nobody" && s.priority == 2)
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!((nobody.waiting, nobody.held), (3, 0));
    let default = seen
        .streams
        .iter()
        .find(|s| s.queue == "default" && s.priority == 0)
        .unwrap();
    assert_eq!((default.waiting, default.held), (0, 1), "the sleepy job");
    assert_eq!(seen.delayed, 1);
    assert_eq!(seen.dead_letters, 0);

    // A host killed outright drops out by itself.
    beta.signal(libc::SIGKILL);
    beta.wait_exit(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(15), || names(
            &client.inspect().unwrap()
        ) == ["alpha"]),
        "{:?}",
        client.inspect()
    );
    assert!(h.cancel());
}

#[test]
fn a_job_revoked_while_its_host_is_dead_never_runs_again() {
    let redis = Redis::start();
    let mut a = one_worker(&redis);
    a.vt = Duration::from_secs(1);
    a.name = "doomed".into();
    let mut doomed = HostProc::spawn(&a);
    let client = broker(&redis.url()).client().unwrap();
    let traces = Traces::new();
    let h = client.submit(sleepy, (traces.path("s"), 3000));
    assert!(wait_until(Duration::from_secs(20), || !traces
        .lines("s")
        .is_empty()));
    // Its host dies holding it: the revoke finds it held, and nobody
    // runs it to learn of it.
    doomed.signal(libc::SIGKILL);
    doomed.wait_exit(Duration::from_secs(10));
    assert_eq!(
        client.revoke(h.id(), false).unwrap(),
        Revocation::Held { terminate: false }
    );
    // The host that takes it over once the lease lapses refuses it.
    let mut b = a.clone();
    b.name = "heir".into();
    let _heir = HostProc::spawn(&b);
    assert!(h.wait_timeout(Duration::from_secs(20)), "never ended");
    assert_eq!(h.get(), Err(JobError::Revoked));
    assert_eq!(client.apply(add, (2, 2)), Ok(4));
    assert_eq!(traces.lines("s").len(), 1, "it ran again");
}
