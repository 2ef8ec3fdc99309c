//! Workflows through a broker, with a real `redis-server` and worker hosts
//! in separate processes: the same typed chains, groups and chords as on
//! a pool, their steps run on whatever hosts take them (shown by the
//! host pids the steps record), with the same failure policies and
//! errbacks, and refused at submission when a step cannot go.
#![cfg(feature = "redis")]

mod common;

use common::server::{HostOpts, HostProc, Redis, Traces, append, client, my_host_pid};
use forkpool::{JobError, JobStatus, Pool};
use std::collections::BTreeSet;
use std::time::Duration;

/// Appends the pid of the host it ran on.
fn hop(mut pids: Vec<i32>) -> Vec<i32> {
    pids.push(my_host_pid());
    pids
}
forkpool::register!(hop);

/// Holds its worker for `ms`, then says which host it ran on.
fn where_am_i(ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(ms));
    my_host_pid()
}
forkpool::register!(where_am_i);

/// The distinct pids, and the body's own host last.
fn hosts_seen(pids: Vec<i32>) -> (Vec<i32>, i32) {
    let set: BTreeSet<i32> = pids.into_iter().collect();
    (set.into_iter().collect(), my_host_pid())
}
forkpool::register!(hosts_seen);

fn inc(x: u32) -> u32 {
    x + 1
}
forkpool::register!(inc);

fn boom(x: u32) -> u32 {
    if x == 13 {
        panic!("thirteen");
    }
    x
}
forkpool::register!(boom);

fn plain_sum(xs: Vec<u32>) -> u32 {
    xs.iter().sum()
}
forkpool::register!(plain_sum);

fn count_ok(results: Vec<Result<u32, JobError>>) -> usize {
    results.iter().filter(|r| r.is_ok()).count()
}
forkpool::register!(count_ok);

/// Leaves a line in a file.
fn mark(path: String) {
    append(&path, "ran");
}
forkpool::register!(mark);

fn count_units(units: Vec<()>) -> usize {
    units.len()
}
forkpool::register!(count_units);

/// Not registered.
fn stray(x: u32) -> u32 {
    x
}

#[test]
fn host_main() {
    common::server::host_main();
}

fn host(url: &str, name: &str) -> HostProc {
    let mut o = HostOpts::new(url);
    o.name = name.into();
    o.workers = 1;
    HostProc::spawn(&o)
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_workflow_s_steps_run_on_both_hosts() {
    let redis = Redis::start();
    let (a, b) = (host(&redis.url(), "a"), host(&redis.url(), "b"));
    let hosts: BTreeSet<i32> = [a.pid(), b.pid()].into();
    let c = client(&redis.url());

    // A chord of eight 400 ms members over two one-worker hosts: one host
    // alone would hold them 3.2 s, and a host asks for a job only when its
    // worker is free — so both take members.
    let chord = c
        .group((0..8).map(|_| c.job(where_am_i).sig(400)))
        .chord(c.job(hosts_seen));
    let h = chord.submit();
    // Progress counts steps: members first, the body last.
    assert!(common::wait_until(LONG, || h
        .progress()
        .is_some_and(|p| (1..9).contains(&p.done) && p.total == 9)));
    assert!(h.wait_timeout(LONG), "the chord did not finish");
    let (seen, body_host) = h.get().unwrap();
    assert_eq!(
        seen.iter().copied().collect::<BTreeSet<i32>>(),
        hosts,
        "members ran on both hosts"
    );
    assert!(hosts.contains(&body_host));

    // A chain: each step a job of its own, each taking the one before's
    // result, on whichever host is free.
    let mut chain = c.job(hop).sig(Vec::new()).then(c.job(hop));
    for _ in 0..8 {
        chain = chain.then(c.job(hop));
    }
    let pids = chain.submit().get().unwrap();
    assert_eq!(pids.len(), 10);
    assert!(pids.iter().all(|p| hosts.contains(p)), "{pids:?} {hosts:?}");
}

#[test]
fn failure_policies_nesting_and_errbacks_hold_across_hosts() {
    let redis = Redis::start();
    let _h = host(&redis.url(), "one");
    let c = client(&redis.url());

    // A chain names its failed step.
    let chain = c
        .job(inc)
        .sig(12)
        .then(c.job(boom))
        .then(c.job(inc))
        .submit();
    match chain.get() {
        Err(JobError::StepFailed { step: 1, error }) => {
            assert!(matches!(*error, JobError::Panicked { .. }), "{error:?}")
        }
        other => panic!("{other:?}"),
    }

    // Fail-fast: the body never runs; the error names the failed member.
    let (tx, rx) = std::sync::mpsc::channel();
    let failing = c
        .group([1, 13, 2].map(|x| c.job(boom).sig(x)))
        .chord(c.job(plain_sum))
        .on_error(move |e: &JobError| {
            let _ = tx.send(e.to_string());
        });
    match failing.submit().get() {
        Err(JobError::MembersFailed(f)) => {
            let text = format!("{f:?}");
            assert!(text.contains("thirteen"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let told = rx.recv_timeout(LONG).expect("the errback ran");
    assert!(told.contains("thirteen"), "{told}");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "once");

    // Collect-all: the body gets every member's outcome.
    let all = c
        .group([1, 13, 2].map(|x| c.job(boom).sig(x)))
        .collect_all()
        .chord(c.job(count_ok));
    assert_eq!(all.submit().get(), Ok(2));

    // Nesting: a group of chains; a chain that ends in a chord.
    let chains = c.group((0..3).map(|i| c.job(inc).sig(i).then(c.job(inc))));
    assert_eq!(chains.submit().get(), Ok(vec![2, 3, 4]));
    let nested = c.job(inc).sig(0).then(c.job(inc)).then(
        c.group([5, 6].map(|x| c.job(inc).sig(x)))
            .chord(c.job(plain_sum)),
    );
    assert_eq!(nested.submit().get(), Ok(13));
    let body = c
        .group([1, 2].map(|x| c.job(inc).sig(x)))
        .chord(c.job(plain_sum))
        .then(c.job(inc));
    assert_eq!(body.submit().get(), Ok(6));
}

#[test]
fn what_cannot_go_through_a_broker_is_refused_at_submission() {
    let redis = Redis::start();
    let c = client(&redis.url());
    let pool = Pool::new(1).unwrap();
    let quick = Duration::from_secs(5);

    // An unregistered step: refused before anything is sent (no host runs).
    let h = c.job(inc).sig(1).then(c.job(stray)).submit();
    assert!(h.wait_timeout(quick));
    match h.get() {
        Err(JobError::Broker { message }) => {
            assert!(message.contains("not registered"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A pool's job in a broker's workflow, and the other way round.
    let mixed = c
        .group(vec![pool.job(inc).sig(1), c.job(inc).sig(2)])
        .submit();
    assert!(mixed.wait_timeout(quick));
    assert!(
        matches!(mixed.get(), Err(JobError::InvalidOptions { message }) if message.contains("Pool::job"))
    );
    let local = pool.job(inc).sig(1).then(c.job(inc)).submit();
    assert!(
        matches!(local.get(), Err(JobError::InvalidOptions { message }) if message.contains("Client::job"))
    );
    // The pool is none the worse.
    assert_eq!(
        pool.job(inc).sig(1).then(pool.job(inc)).submit().get(),
        Ok(3)
    );
    // Invalid options fail the workflow at once too.
    let bad = c
        .job(inc)
        .queue("no queue")
        .sig(1)
        .then(c.job(inc))
        .submit();
    assert!(bad.wait_timeout(quick));
    assert!(matches!(bad.get(), Err(JobError::InvalidOptions { .. })));
}

#[test]
fn a_cancelled_workflow_sends_nothing_more() {
    let redis = Redis::start();
    let _h = host(&redis.url(), "one");
    let c = client(&redis.url());
    let traces = Traces::new();
    // A 600 ms step, then a step that leaves a trace.
    let wf = c
        .job(where_am_i)
        .sig(600)
        .then(c.job(mark).sig(traces.path("after")));
    let h = wf.submit();
    assert!(h.cancel(), "cancelled before it finished");
    assert!(!h.cancel(), "once");
    assert_eq!(h.get(), Err(JobError::Cancelled));
    // The first step is revoked (its worker killed if it had started);
    // the second is never sent.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(traces.lines("after").is_empty(), "a step ran after cancel");
    // The same workflow, not cancelled, does run its second step.
    assert_eq!(wf.submit().get(), Ok(()));
    assert_eq!(traces.lines("after"), vec!["ran"]);
}

#[test]
fn a_cancelled_workflow_s_queued_steps_are_revoked() {
    let redis = Redis::start();
    let c = client(&redis.url());
    let traces = Traces::new();
    // Members queued in Redis while no host runs: cancelling revokes them.
    let chord = c
        .group((0..4).map(|i| c.job(mark).sig(traces.path(&format!("m{i}")))))
        .chord(c.job(count_units));
    let h = chord.submit();
    c.flush().unwrap();
    assert!(h.cancel());
    assert_eq!(h.get(), Err(JobError::Cancelled));
    let _h = host(&redis.url(), "one");
    // A job sent after them runs: the host has read past the members.
    let probe = traces.path("probe");
    assert_eq!(c.job(mark).sig(probe).submit().get(), Ok(()));
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..4 {
        assert!(
            traces.lines(&format!("m{i}")).is_empty(),
            "member {i} ran after its workflow was cancelled"
        );
    }
    assert_eq!(traces.lines("probe"), vec!["ran"]);
}

#[test]
fn a_detached_workflow_s_result_is_kept_by_id() {
    let redis = Redis::start();
    let c = client(&redis.url());
    let chord = c
        .group([1, 2].map(|x| c.job(inc).sig(x)))
        .chord(c.job(plain_sum));
    let id = chord.detach();
    // Pending from any process while no host runs it.
    let other = client(&redis.url());
    assert_eq!(other.status(id).unwrap(), JobStatus::Pending);
    let _h = host(&redis.url(), "one");
    assert!(common::wait_until(LONG, || other.status(id).unwrap() == JobStatus::Succeeded));
    assert_eq!(other.take_result::<u32>(id).unwrap(), Some(Ok(5)));
    assert_eq!(other.status(id).unwrap(), JobStatus::Unknown, "taken");

    let failing = c.job(boom).sig(13).then(c.job(inc)).detach();
    assert!(common::wait_until(LONG, || other.status(failing).unwrap() == JobStatus::Failed));
    match other.take_result::<u32>(failing).unwrap() {
        Some(Err(JobError::StepFailed { step: 0, .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_step_s_own_callbacks_are_told_its_outcome_once() {
    let redis = Redis::start();
    let _h = host(&redis.url(), "one");
    let c = client(&redis.url());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (ok, err) = (tx.clone(), tx);
    let wf = c
        .job(inc)
        .on_success(move |v: &u32| ok.send(format!("ok {v}")).unwrap())
        .sig(12)
        .then(
            c.job(boom)
                .on_error(move |e: &JobError| err.send(format!("err {e}")).unwrap()),
        );
    assert!(matches!(
        wf.submit().get(),
        Err(JobError::StepFailed { step: 1, .. })
    ));
    let mut told: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(LONG).expect("a callback"))
        .collect();
    told.sort();
    assert_eq!(told[1], "ok 13");
    assert!(told[0].starts_with("err "), "{told:?}");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "told once"
    );
}
