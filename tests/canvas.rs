//! Workflows: signatures, chains, groups, chords and their nesting — what
//! each gives, in what order, what runs and what does not, job options per
//! step, handles (progress, detach, await), and the stats.

mod common;

use common::{counters, fresh_counters, temp_dir, wait_until};
use forkpool::{JobError, JobStatus, Pool, PoolBuilder, RetryPolicy};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn pool(workers: usize) -> Pool {
    counters(); // mapped before the workers are forked
    PoolBuilder::default()
        .workers(workers)
        .time_limit(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `submitted == completed + failed + cancelled` once every job is done.
fn assert_stats_add_up(pool: &Pool) {
    let ok = wait_until(Duration::from_secs(10), || {
        let s = pool.stats();
        s.submitted == s.completed + s.failed + s.cancelled
    });
    assert!(ok, "stats do not add up: {:?}", pool.stats());
}

fn inc(x: u64) -> u64 {
    x + 1
}

fn double(x: u64) -> u64 {
    2 * x
}

fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

fn show(x: u64) -> String {
    format!("<{x}>")
}

/// Counts a run in counter `slot`, then gives `x`.
fn mark((slot, x): (usize, u64)) -> u64 {
    counters()[slot].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    x
}

fn runs(slot: usize) -> u64 {
    counters()[slot].load(std::sync::atomic::Ordering::SeqCst)
}

/// Panics on 3 and 5.
fn picky(x: u64) -> u64 {
    assert!(x != 3 && x != 5, "no {x}");
    x * 10
}

fn nap_then(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(x));
    x
}

#[test]
fn apply_runs_and_waits_and_leaves_the_pool_serving() {
    let pool = pool(2);
    assert_eq!(pool.job(inc).sig(1).apply(), Ok(2));
    assert_eq!(pool.job(inc).sig(1).then(pool.job(double)).apply(), Ok(4));
    assert_eq!(pool.job(inc).starmap(0..3).apply(), Ok(vec![1, 2, 3]));
    let chord = pool.job(picky).starmap(0..6).chord(pool.job(sum));
    assert!(matches!(chord.apply(), Err(JobError::MembersFailed(_))));
    // A job submitted now is served without anyone waiting on it: the
    // supervisor thread was handed the pool back.
    let h = pool.submit(inc, 41);
    assert!(h.wait_timeout(Duration::from_secs(10)));
    assert_eq!(h.get(), Ok(42));
    assert_stats_add_up(&pool);
}

#[test]
fn a_chain_passes_each_result_to_the_next_step() {
    let pool = pool(2);
    let wf = pool
        .job(inc)
        .sig(1)
        .then(pool.job(double))
        .then(pool.job(inc))
        .then(pool.job(show));
    assert_eq!(wf.steps(), 4);
    assert_eq!(wf.submit().get(), Ok("<5>".to_string()));
    // Kept and submitted again: the same.
    assert_eq!(wf.submit().get(), Ok("<5>".to_string()));
    assert_eq!(pool.stats().completed, 8);
    assert_stats_add_up(&pool);
}

#[test]
fn an_immutable_step_ignores_the_result_before_it() {
    let pool = pool(1);
    let wf = pool
        .job(inc)
        .sig(1)
        .then(pool.job(show).sig(40))
        .then(pool.job(inc).sig(7));
    assert_eq!(wf.submit().get(), Ok(8));
}

#[test]
fn a_failed_step_names_itself_and_the_steps_after_it_never_run() {
    let pool = pool(2);
    let after = fresh_counters(1);
    let wf = pool
        .job(inc)
        .sig(2) // 3
        .then(pool.job(picky)) // panics on 3
        .then(pool.job(mark).sig((after, 0)));
    match wf.submit().get() {
        Err(JobError::StepFailed { step, error }) => {
            assert_eq!(step, 1);
            assert!(
                matches!(*error, JobError::Panicked { ref message } if message.contains("no 3"))
            );
        }
        other => panic!("expected step 1 to fail, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(runs(after), 0, "a step after the failure ran");
    assert_eq!(pool.stats().submitted, 2, "the third step was never sent");
    assert_stats_add_up(&pool);
}

fn parse(text: String) -> Result<u64, String> {
    text.parse().map_err(|_| format!("not a number: {text}"))
}

fn describe(r: Result<u64, String>) -> String {
    match r {
        Ok(n) => format!("number {n}"),
        Err(e) => format!("error {e}"),
    }
}

#[test]
fn a_fallible_steps_error_is_a_value_for_the_next_step() {
    let pool = pool(1);
    let ok = pool
        .try_job(parse)
        .sig("12".into())
        .then(pool.job(describe));
    assert_eq!(ok.submit().get(), Ok("number 12".to_string()));
    let err = pool.try_job(parse).sig("x".into()).then(pool.job(describe));
    assert_eq!(err.submit().get(), Ok("error not a number: x".to_string()));
    // Counted as a failure all the same.
    assert_eq!(pool.stats().errored, 1);
}

#[test]
fn a_group_gives_results_in_member_order_whatever_order_they_finish_in() {
    let pool = pool(2);
    // The first members sleep longest: they finish last.
    let naps = [120, 90, 60, 30, 0];
    let group = pool.group(naps.iter().map(|&ms| pool.job(nap_then).sig(ms)));
    assert_eq!(group.len(), 5);
    assert_eq!(group.submit().get(), Ok(naps.to_vec()));
    // Members of different options are single jobs; of the same, batched:
    // both in order.
    let mixed = pool.group((0..20u64).map(|i| {
        let job = if i % 7 == 0 {
            pool.job(inc).time_limit(Duration::from_secs(9))
        } else {
            pool.job(inc)
        };
        job.sig(i)
    }));
    assert_eq!(mixed.submit().get(), Ok((1..=20).collect::<Vec<u64>>()));
    let empty = pool.group(Vec::<forkpool::Signature<u64>>::new());
    assert!(empty.is_empty());
    assert_eq!(empty.submit().get(), Ok(vec![]));
    assert_stats_add_up(&pool);
}

#[test]
fn starmap_and_chunks() {
    let pool = pool(2);
    let pairs = pool
        .job(|(a, b): (u64, u64)| a * b)
        .starmap((0..1000).map(|i| (i, 3)));
    let got = pairs.submit().get().unwrap();
    assert_eq!(got.len(), 1000);
    assert!(got.iter().enumerate().all(|(i, &v)| v == 3 * i as u64));
    let chunks = pool.job(double).chunks(0..10, 4);
    assert_eq!(chunks.len(), 3);
    assert_eq!(
        chunks.submit().get(),
        Ok(vec![vec![0, 2, 4, 6], vec![8, 10, 12, 14], vec![16, 18]])
    );
    // A failing chunk fails alone, and says which of its items failed.
    match pool.job(picky).chunks(0..8, 3).submit().get() {
        Err(JobError::MembersFailed(f)) => {
            let failed: Vec<usize> = f.failed().iter().map(|(i, _)| *i).collect();
            assert_eq!(failed, [1], "chunk 1 holds 3 and 5");
            match &f.failed()[0].1 {
                JobError::MembersFailed(inner) => {
                    let items: Vec<usize> = inner.failed().iter().map(|(i, _)| *i).collect();
                    assert_eq!(items, [0, 2]);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                f.succeeded::<Vec<u64>>().unwrap(),
                [(0, vec![0, 10, 20]), (2, vec![60, 70])]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_stats_add_up(&pool);
}

fn len(s: String) -> usize {
    s.len()
}

fn is_even(x: u64) -> bool {
    x.is_multiple_of(2)
}

#[test]
fn groups_of_different_types_are_tuples() {
    let pool = pool(2);
    let two = pool.group_tuple((pool.job(len).sig("four".into()), pool.job(is_even).sig(3)));
    assert_eq!(two.submit().get(), Ok((4, false)));
    let four = pool.group_tuple((
        pool.job(len).sig("ab".into()),
        pool.job(is_even).sig(2),
        pool.job(show).sig(1).then(pool.job(len)),
        pool.job(inc).starmap([1, 2]),
    ));
    assert_eq!(four.submit().get(), Ok((2, true, 3, vec![2, 3])));
    // A failed member names its place in the tuple.
    let bad = pool.group_tuple((pool.job(len).sig("x".into()), pool.job(picky).sig(3)));
    match bad.submit().get() {
        Err(JobError::MembersFailed(f)) => {
            assert_eq!(f.failed()[0].0, 1);
            assert_eq!(f.result::<usize>(0), Some(Ok(1)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_chord_body_runs_once_with_every_result() {
    let pool = pool(2);
    let chord = pool
        .job(inc)
        .starmap(0..500)
        .chord(pool.job(sum))
        .then(pool.job(show));
    assert_eq!(
        chord.submit().get(),
        Ok(format!("<{}>", (1..=500).sum::<u64>()))
    );
    // A chord of signatures, whose body counts its runs.
    let body = fresh_counters(1);
    let members = pool.group((0..5).map(|i| {
        pool.job(mark)
            .sig((fresh_counters(1), i))
            .then(pool.job(tag).sig((body, i)))
    }));
    let chord = members.chord(pool.job(counting_body));
    assert_eq!(chord.submit().get(), Ok(10));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(runs(body), 1);
    assert_stats_add_up(&pool);
}

fn tag(x: (usize, u64)) -> (usize, u64) {
    x
}

/// The body counts its runs in the counter its members name (every member
/// gives it).
fn counting_body(xs: Vec<(usize, u64)>) -> u64 {
    let slot = xs.first().map_or(0, |x| x.0);
    counters()[slot].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    xs.iter().map(|x| x.1).sum()
}

fn tag_picky((slot, x): (usize, u64)) -> (usize, u64) {
    (slot, picky(x))
}

fn collect_body(all: Vec<Result<u64, JobError>>) -> (usize, Vec<String>) {
    let ok = all.iter().filter(|r| r.is_ok()).count();
    let errors = all
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    (ok, errors)
}

#[test]
fn a_fail_fast_chord_names_every_failed_member_and_skips_its_body() {
    let pool = pool(2);
    let body = fresh_counters(1);
    let (tx, rx) = mpsc::channel();
    let chord = pool
        .job(tag_picky)
        .starmap((0..8).map(|i| (body, i)))
        .chord(pool.job(counting_body))
        .on_error(move |e| tx.send(e.clone()).unwrap());
    let failure = match chord.submit().get() {
        Err(JobError::MembersFailed(f)) => f,
        other => panic!("{other:?}"),
    };
    let failed: Vec<usize> = failure.failed().iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, [3, 5]);
    assert!(
        failure.to_string().contains("2 of 8 members failed"),
        "{failure}"
    );
    let ok = failure.succeeded::<(usize, u64)>().unwrap();
    let indices: Vec<usize> = ok.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [0, 1, 2, 4, 6, 7]);
    assert_eq!(ok[3].1, (body, 40));
    // The errback fired once, with the chord's error.
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(JobError::MembersFailed(_))
    ));
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "the errback fired twice");
    assert_eq!(runs(body), 0, "the body ran");
    assert_stats_add_up(&pool);

    // Collect-all: the body runs, once, with every outcome.
    let chord = pool
        .job(picky)
        .starmap(0..6)
        .collect_all()
        .chord(pool.job(collect_body));
    let (ok, errors) = chord.submit().get().unwrap();
    assert_eq!(ok, 4);
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0].contains("no 3") && errors[1].contains("no 5"),
        "{errors:?}"
    );
}

#[test]
fn a_chord_errback_fires_once_when_its_body_fails() {
    let pool = pool(1);
    let (tx, rx) = mpsc::channel();
    let chord = pool
        .job(inc)
        .starmap([1, 2]) // 2 + 3 = 5
        .chord(pool.job(sum))
        .then(pool.job(picky)) // panics on 5
        .on_error(move |e| tx.send(e.clone()).unwrap());
    let got = chord.submit().get();
    assert!(
        matches!(&got, Err(JobError::StepFailed { step: 1, .. })),
        "{got:?}"
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), got.err());
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err());
}

#[test]
fn workflows_nest() {
    let pool = pool(2);
    // A group of chains.
    let chains = pool.group((1..=3).map(|i| pool.job(inc).sig(i).then(pool.job(double))));
    assert_eq!(chains.clone().submit().get(), Ok(vec![4, 6, 8]));
    // A chain ending in a chord whose members are chains and groups.
    let member_groups = pool.group((0..3).map(|i| pool.job(inc).starmap(i * 10..i * 10 + 3)));
    let flat = member_groups.chord(pool.job(|vs: Vec<Vec<u64>>| vs.concat().iter().sum::<u64>()));
    let wf = pool
        .job(inc)
        .sig(0)
        .then(chains.chord(pool.job(sum)))
        .then(flat);
    assert_eq!(
        wf.submit().get(),
        Ok((1..=3).chain(11..=13).chain(21..=23).sum())
    );
    // Chains of chords: each chord's result is the next one's... starting
    // value, through a step that takes it.
    let c1 = pool.job(inc).starmap(0..10).chord(pool.job(sum)); // 55
    let c2 = pool.job(double).starmap(0..10).chord(pool.job(sum)); // 90
    let wf = c1.then(pool.job(inc)).then(c2).then(pool.job(show));
    assert_eq!(wf.submit().get(), Ok("<90>".to_string()));
    // A group of groups of chords.
    let g =
        pool.group((0..3).map(|_| {
            pool.group((0..2).map(|j| pool.job(inc).starmap(0..j + 2).chord(pool.job(sum))))
        }));
    assert_eq!(g.submit().get(), Ok(vec![vec![3, 6]; 3]));
    assert_stats_add_up(&pool);
}

#[test]
fn every_step_is_a_job_in_the_stats() {
    let pool = pool(2);
    let wf = pool
        .job(inc)
        .starmap(0..100)
        .chord(pool.job(sum))
        .then(pool.group((0..10).map(|i| pool.job(inc).sig(i).then(pool.job(inc)))));
    assert_eq!(wf.steps(), 100 + 1 + 20);
    let h = wf.submit();
    assert_eq!(h.get().map(|v| v.len()), Ok(10));
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed, s.failed), (121, 121, 0), "{s:?}");
}

#[test]
fn progress_counts_steps_and_handles_can_be_awaited_or_detached() {
    let pool = pool(2);
    let wf = pool
        .job(inc)
        .starmap(0..4)
        .chord(pool.job(sum))
        .then(pool.job(nap_then)); // 10 ms
    let h = wf.submit();
    let p = h.progress().expect("running");
    assert_eq!(p.total, 6);
    assert!(h.wait_timeout(Duration::from_secs(10)));
    assert_eq!(h.progress(), None, "finished");
    assert_eq!(h.get(), Ok(10));

    // Detached: Running with its progress, then its result by id.
    let slow = pool.job(nap_then).sig(300).then(pool.job(inc));
    let id = slow.detach();
    match pool.status(id) {
        JobStatus::Running { progress: Some(p) } => assert_eq!((p.done, p.total), (0, 2)),
        other => panic!("{other:?}"),
    }
    assert!(wait_until(Duration::from_secs(10), || pool.status(id)
        == JobStatus::Succeeded));
    assert_eq!(pool.take_result::<u64>(id), Some(Ok(301)));
    assert_eq!(pool.status(id), JobStatus::Unknown);

    // Awaited.
    let fut = pool.job(inc).sig(1).then(pool.job(inc)).submit();
    assert_eq!(block_on(fut), Ok(3));
}

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Fails its first attempt (a marker file per argument says it ran).
fn flaky_once((dir, x): (String, u64)) -> u64 {
    let marker = std::path::Path::new(&dir).join(x.to_string());
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"").unwrap();
        panic!("first attempt of {x}");
    }
    x
}

#[test]
fn every_job_option_applies_per_step() {
    let pool = pool(2);
    // Retries, per step and per batched member.
    let dir = temp_dir("canvas-retry");
    let d = dir.display().to_string();
    let retried = pool.job(flaky_once).retry(RetryPolicy::new(2));
    let wf = retried.sig((d.clone(), 100)).then(pool.job(inc)).then(
        retried
            .starmap((0..6).map(|i| (d.clone(), i)))
            .chord(pool.job(sum)),
    );
    assert_eq!(wf.submit().get(), Ok(15));
    assert_eq!(pool.stats().retried, 7, "one per flaky job");
    std::fs::remove_dir_all(&dir).unwrap();

    // A time limit per step.
    let limited = pool.job(nap_then).time_limit(Duration::from_millis(200));
    let wf = pool.job(inc).sig(999).then(limited);
    match wf.submit().get() {
        Err(JobError::StepFailed { step: 1, error }) => {
            assert!(matches!(*error, JobError::TimedOut { .. }), "{error:?}")
        }
        other => panic!("{other:?}"),
    }

    // A countdown counts from when the step is sent: after the step before.
    let started = Instant::now();
    let wf = pool
        .job(nap_then)
        .sig(100)
        .then(pool.job(inc).countdown(Duration::from_millis(200)));
    assert_eq!(wf.submit().get(), Ok(101));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Batched members with a countdown wait for it, each; progress counts
    // every member once.
    let started = Instant::now();
    let later = pool.job(inc).countdown(Duration::from_millis(100));
    let h = later.starmap(0..5).chord(pool.job(sum)).submit();
    assert_eq!(h.progress().map(|p| p.total), Some(6));
    assert!(wait_until(Duration::from_secs(10), || h
        .progress()
        .is_none_or(|p| p.done >= 5)));
    assert_eq!(h.get(), Ok(15));
    assert!(started.elapsed() >= Duration::from_millis(100));

    // Callbacks per member.
    let (tx, rx) = mpsc::channel();
    let job = pool
        .job(double)
        .on_success(move |v: &u64| tx.send(*v).unwrap());
    assert_eq!(job.starmap(1..=3).submit().get(), Ok(vec![2, 4, 6]));
    let mut seen: Vec<u64> = rx.iter().take(3).collect();
    seen.sort();
    assert_eq!(seen, [2, 4, 6]);

    // Ignored results: the next step gets `()`.
    let wf = pool
        .job(inc)
        .ignore_result()
        .sig(1)
        .then(pool.job(|(): ()| 7u64));
    assert_eq!(wf.submit().get(), Ok(7));
    assert_stats_add_up(&pool);
}

#[test]
fn a_step_waiting_past_its_expiry_expires() {
    let pool = pool(1);
    // Step 1 is sent when step 0 ends, behind a job that keeps the only
    // worker busy for 500 ms: it expires after 100 ms, waiting.
    let wf = pool
        .job(nap_then)
        .sig(100)
        .then(pool.job(inc).expires(Duration::from_millis(100)));
    let h = wf.submit();
    let busy = pool.submit(nap_then, 500);
    match h.get() {
        Err(JobError::StepFailed { step: 1, error }) => assert_eq!(*error, JobError::Expired),
        other => panic!("expected step 1 to expire, got {other:?}"),
    }
    assert_eq!(busy.get(), Ok(500));
    assert_eq!(pool.stats().expired, 1);
    assert_stats_add_up(&pool);
}

#[test]
fn join_waits_for_workflows_and_a_closed_pool_refuses_them() {
    let pool = pool(2);
    let wf = pool
        .job(nap_then)
        .sig(50)
        .then(pool.job(inc))
        .then(pool.job(inc));
    let h = wf.submit();
    let chord = pool.job(inc).starmap(0..100).chord(pool.job(sum)).submit();
    pool.clone().join().unwrap();
    assert!(
        h.is_ready() && chord.is_ready(),
        "join returned before the workflows ended"
    );
    assert_eq!(h.get(), Ok(52));
    assert_eq!(chord.get(), Ok(5050));
    assert_eq!(wf.submit().get(), Err(JobError::PoolClosed));
}

#[test]
fn a_bounded_queue_holds_workflows_back_without_deadlock() {
    counters();
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(4)
        .build()
        .unwrap();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            pool.job(inc)
                .starmap(0..10)
                .chord(pool.job(sum))
                .then(pool.job(inc).sig(i))
                .submit()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get(), Ok(i as u64 + 1));
    }
}

#[test]
fn arguments_that_cannot_be_sent_fail_their_member_alone() {
    counters();
    let pool = Pool::builder()
        .workers(1)
        .max_message_size(1024)
        .build()
        .unwrap();
    let big = |n: usize| "x".repeat(n);
    let g = pool
        .job(len)
        .starmap([big(1), big(2000), big(3)])
        .collect_all();
    let got = g.submit().get().unwrap();
    assert_eq!(got[0], Ok(1));
    assert!(
        matches!(got[1], Err(JobError::TooLarge { .. })),
        "{:?}",
        got[1]
    );
    assert_eq!(got[2], Ok(3));
    // A result that becomes too large an argument fails the next step.
    let wf = pool.job(big_text).sig(4000).then(pool.job(len));
    match wf.submit().get() {
        Err(JobError::StepFailed { step: 0, error }) => {
            assert!(matches!(*error, JobError::TooLarge { .. }))
        }
        other => panic!("{other:?}"),
    }
    assert_stats_add_up(&pool);
}

fn big_text(n: usize) -> String {
    "y".repeat(n)
}
