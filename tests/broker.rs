//! The broker end to end, with a real `redis-server` and worker hosts in
//! separate processes: what a client can do, and that it means the same
//! as on one host — handles (`get`, `wait_timeout`, `.await`), results by
//! id and their expiry, ignored results, fallible jobs, panics, options
//! (countdown, expiry, retries, time limits, queues, priorities), jobs by
//! name, and what a host refuses (unknown names, another type
//! fingerprint), dead-lettered with the reason.
#![cfg(feature = "redis")]

mod common;

use common::server::{HostOpts, HostProc, Redis, Traces, append, broker};
use forkpool::broker::Broker;
use forkpool::{JobError, JobStatus, RetryPolicy};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn add(x: (u64, u64)) -> u64 {
    x.0 + x.1
}
forkpool::register!(add);

fn echo(s: String) -> String {
    s
}
forkpool::register!(echo as "tests.echo");

fn boom(_: ()) -> u32 {
    panic!("boom")
}
forkpool::register!(boom);

/// Fails (its own `Err`) until it was tried `n` times; counts its tries in
/// a file.
fn flaky((path, n): (String, usize)) -> Result<usize, String> {
    append(&path, "try");
    let tries = std::fs::read_to_string(&path).unwrap().lines().count();
    if tries < n {
        Err(format!("try {tries}"))
    } else {
        Ok(tries)
    }
}
forkpool::register!(fallible flaky);

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
forkpool::register!(nap);

/// Where it ran: the queue's tag and the time, appended to a file.
fn tagged((path, tag): (String, String)) -> String {
    append(&path, &tag);
    tag
}
forkpool::register!(tagged);

fn big(n: usize) -> String {
    "x".repeat(n)
}
forkpool::register!(big);

/// Not registered.
fn stray(x: u32) -> u32 {
    x
}

#[test]
fn host_main() {
    common::server::host_main();
}

/// A minimal executor for `.await` on a handle.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn a_client_submits_and_a_host_runs() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = broker(&redis.url()).client().unwrap();

    let h = client.submit(add, (2, 3));
    assert!(h.wait_timeout(Duration::from_secs(20)), "no result");
    assert!(h.is_ready());
    assert_eq!(h.get(), Ok(5));
    assert_eq!(client.apply(echo, "hé".to_string()), Ok("hé".to_string()));
    assert_eq!(block_on(client.submit(add, (40, 2))), Ok(42));
    assert_eq!(client.map(add, (0..50).map(|i| (i, i))).unwrap()[49], 98);

    // Failures are values, as on one host.
    match client.apply(boom, ()) {
        Err(JobError::Panicked { message }) => assert!(message.contains("boom"), "{message}"),
        other => panic!("{other:?}"),
    }
    let traces = Traces::new();
    let flaky_path = traces.path("flaky");
    let h = client.try_job(flaky).submit((flaky_path.clone(), 5));
    assert_eq!(
        h.get(),
        Ok(Err("try 1".to_string())),
        "no retry policy: one try"
    );
    let h = client
        .try_job(flaky)
        .retry(RetryPolicy::new(5).delay(Duration::from_millis(50)))
        .submit((traces.path("flaky2"), 3));
    assert!(h.wait_timeout(Duration::from_secs(20)));
    assert_eq!(h.attempts(), 3);
    assert_eq!(h.get(), Ok(Ok(3)));
    assert_eq!(client.job(add).ignore_result().submit((1, 1)).get(), Ok(()));

    // A job by name, from a program that would not have its code.
    let by_name = client.job_named::<String, String>("tests.echo");
    assert_eq!(by_name.submit("x".into()).get(), Ok("x".to_string()));

    // An unregistered function never leaves: its handle says why.
    match client.submit(stray, 1).get() {
        Err(JobError::Broker { message }) => assert!(message.contains("not registered")),
        other => panic!("{other:?}"),
    }
    // Bad options fail the job alone.
    let bad = client.job(nap).queue("a b").submit(1).get();
    assert!(
        matches!(bad, Err(JobError::InvalidOptions { .. })),
        "{bad:?}"
    );
    let bad = client
        .job(nap)
        .soft_time_limit(Duration::from_secs(2))
        .time_limit(Duration::from_secs(1))
        .submit(1)
        .get();
    assert!(
        matches!(bad, Err(JobError::InvalidOptions { .. })),
        "{bad:?}"
    );
}

#[test]
fn results_by_id_expire_and_ignored_ones_are_not_stored() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = broker(&redis.url())
        .result_expires(Duration::from_millis(1500))
        .client()
        .unwrap();
    let other = broker(&redis.url()).client().unwrap();

    let id = client.job(add).detach((20, 22));
    client.flush().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while other.status(id).unwrap() != JobStatus::Succeeded {
        assert!(
            Instant::now() < end,
            "never succeeded: {:?}",
            other.status(id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = Instant::now();
    // Another client (another process would do) reads it by id.
    assert_eq!(other.take_result::<u64>(id).unwrap(), Some(Ok(42)));
    assert_eq!(other.status(id).unwrap(), JobStatus::Unknown, "taken");

    let id = client.job(add).detach((1, 2));
    let failed = client.job(boom).detach(());
    let ignored = client.job(add).ignore_result().detach((5, 5));
    let spawned = client.job(add).spawn((6, 6));
    client.flush().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while client.status(id).unwrap() != JobStatus::Succeeded
        || client.status(failed).unwrap() != JobStatus::Failed
    {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored = Instant::now();
    assert!(matches!(
        client.take_result::<u32>(failed).unwrap(),
        Some(Err(JobError::Panicked { .. }))
    ));
    // A result that does not decode as asked stays in place.
    let wrong = client.take_result::<String>(id).unwrap();
    assert!(matches!(wrong, Some(Err(JobError::Codec(_)))), "{wrong:?}");
    assert_eq!(client.status(id).unwrap(), JobStatus::Succeeded);
    // Ignored and spawned jobs ran (the host is idle again) and stored
    // nothing.
    assert_eq!(client.apply(add, (0, 0)), Ok(0));
    let mut cli = redis.cli();
    for j in [ignored, spawned] {
        let key = format!("{{forkpool}}:res:{}", j.as_u64());
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut cli).unwrap();
        assert!(v.is_none_or(|v| v == b"P"), "{key}");
    }
    // Kept for result_expires, then gone.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(stored.elapsed()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(client.status(id).unwrap(), JobStatus::Unknown);
    assert_eq!(client.take_result::<u64>(id).unwrap(), None);
    assert!(done.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn options_travel_with_the_job() {
    let redis = Redis::start();
    let mut o = HostOpts::new(&redis.url());
    o.workers = 1;
    o.queues = vec!["default".into(), "other".into()];
    let _host = HostProc::spawn(&o);
    let client = broker(&redis.url()).client().unwrap();

    // A countdown: not before it.
    let t = Instant::now();
    assert_eq!(
        client
            .job(nap)
            .countdown(Duration::from_millis(700))
            .submit(1)
            .get(),
        Ok(1)
    );
    assert!(t.elapsed() >= Duration::from_millis(700));
    let id = client.job(nap).countdown(Duration::from_secs(30)).detach(1);
    client.flush().unwrap();
    assert_eq!(client.status(id).unwrap(), JobStatus::Scheduled);

    // A time limit of the job's own.
    let r = client
        .job(nap)
        .time_limit(Duration::from_millis(300))
        .submit(5000)
        .get();
    assert!(matches!(r, Err(JobError::TimedOut { .. })), "{r:?}");
    // An expiry: the only worker is busy past it.
    let busy = client.submit(nap, 1500);
    std::thread::sleep(Duration::from_millis(300));
    let late = client
        .job(nap)
        .expires(Duration::from_millis(200))
        .submit(0);
    assert_eq!(late.get(), Err(JobError::Expired));
    assert_eq!(busy.get(), Ok(1500));

    // Priorities: behind a busy worker, the higher one goes first; queues
    // the host consumes are all served. The worker stays busy for two of
    // the host's stream refreshes (one a second) after the jobs are sent,
    // so it knows their new streams when it is free, even on a loaded
    // machine.
    let traces = Traces::new();
    let path = traces.path("order");
    let busy = client.submit(nap, 2500);
    std::thread::sleep(Duration::from_millis(200));
    let low = client.job(tagged).submit((path.clone(), "low".into()));
    let mid = client
        .job(tagged)
        .queue("other")
        .priority(2)
        .submit((path.clone(), "mid".into()));
    let high = client
        .job(tagged)
        .priority(5)
        .submit((path.clone(), "high".into()));
    client.flush().unwrap();
    for h in [low, mid, high] {
        assert!(h.get().is_ok());
    }
    busy.get().unwrap();
    assert_eq!(traces.lines("order"), ["high", "mid", "low"]);
}

#[test]
fn a_host_refuses_what_it_cannot_run_and_says_why() {
    let redis = Redis::start();
    let host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let client = broker(&redis.url()).client().unwrap();

    // Another type under a registered name: another fingerprint.
    let h = client.job_named::<u64, u64>("tests.echo").submit(7);
    match h.get() {
        Err(JobError::DeadLettered { reason }) => {
            assert!(reason.contains("fingerprint"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let h = client.job_named::<u64, u64>("no.such.job").submit(7);
    match h.get() {
        Err(JobError::DeadLettered { reason }) => {
            assert!(reason.contains("unknown job name"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let dead = client.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|d| d.job.as_deref() == Some("no.such.job")));
    assert!(dead.iter().all(|d| d.host.starts_with("testhost:")));
    // The host goes on.
    assert_eq!(client.apply(add, (1, 1)), Ok(2), "{}", host.log());
}

#[test]
fn an_acl_user_and_password_are_accepted_and_a_wrong_one_refused() {
    let redis = Redis::start_with(&["--user", "app", "on", ">s3cret", "~*", "&*", "+@all"]);
    let url = format!("redis://app:s3cret@127.0.0.1:{}/", redis.port);
    let mut o = HostOpts::new(&url);
    o.workers = 1;
    let host = HostProc::spawn(&o);
    let client = Broker::new(&url).unwrap().client().unwrap();
    assert_eq!(client.apply(add, (2, 2)), Ok(4), "{}", host.log());
    let wrong = format!("redis://app:wrong@127.0.0.1:{}/", redis.port);
    match Broker::new(&wrong).unwrap().client() {
        Err(e) => assert!(e.to_string().contains("authentication failed"), "{e}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    assert!(!format!("{:?}", Broker::new(&wrong).unwrap()).contains("wrong@"));
}

#[test]
fn two_hosts_built_in_one_process_with_one_name_are_distinct_consumers() {
    let redis = Redis::start();
    let b = broker(&redis.url());
    let one = b.host().name("same").workers(1).handle_signals(false);
    let two = b.host().name("same").workers(1).handle_signals(false);
    let (one, two) = (one.build().unwrap(), two.build().unwrap());
    assert_ne!(one.consumer(), two.consumer());
    let pid = std::process::id().to_string();
    for c in [one.consumer(), two.consumer()] {
        let parts: Vec<&str> = c.split(':').collect();
        assert_eq!(parts[..2], ["same", pid.as_str()], "{c}");
    }
    // A stopper ends a host that runs in a thread of its own.
    let stop = one.stopper();
    let t = std::thread::spawn(move || one.run());
    stop.stop();
    let report = t.join().unwrap().unwrap();
    assert_eq!(report.ran, 0);
}

/// A job in JSON reads as JSON in Redis, and any host runs it (a host
/// reads each job in the codec the job names).
#[cfg(feature = "json")]
#[test]
fn a_json_job_is_readable_in_redis_and_runs() {
    let redis = Redis::start();
    let client = broker(&redis.url())
        .codec(forkpool::Codec::Json)
        .client()
        .unwrap();
    let h = client.submit(add, (2, 3));
    client.flush().unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("{forkpool}:q:default:0")
        .arg("-")
        .arg("+")
        .query(&mut redis.cli())
        .unwrap();
    let fields = &entries[0].1;
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).unwrap().1.clone();
    assert_eq!(
        (get("codec").as_str(), get("arg").as_str()),
        ("json", "[2,3]")
    );
    assert_eq!(get("job"), "broker::add");
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    assert_eq!(h.get(), Ok(5));
    let id = client.job(echo).detach("é".into());
    client.flush().unwrap();
    assert!(common::wait_until(Duration::from_secs(20), || {
        client.status(id).unwrap() == JobStatus::Succeeded
    }));
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("{{forkpool}}:res:{}", id.as_u64()))
        .query(&mut redis.cli())
        .unwrap();
    assert!(stored.ends_with("\"é\"".as_bytes()), "{stored:?}");
}

#[test]
fn messages_over_the_cap_fail_their_job_alone() {
    let redis = Redis::start();
    let mut o = HostOpts::new(&redis.url());
    o.max_message = Some(4096);
    o.workers = 1;
    let host = HostProc::spawn(&o);
    let client = broker(&redis.url())
        .max_message_size(4096)
        .client()
        .unwrap();
    // An argument over the cap never leaves the client.
    let r = client.submit(echo, "y".repeat(5000)).get();
    assert!(
        matches!(r, Err(JobError::TooLarge { limit: 4096, .. })),
        "{r:?}"
    );
    // A result over the cap fails its job on the host.
    let r = client.submit(big, 10_000).get();
    assert!(matches!(r, Err(JobError::TooLarge { .. })), "{r:?}");
    assert_eq!(
        client.apply(big, 3),
        Ok("xxx".to_string()),
        "{}",
        host.log()
    );
}
