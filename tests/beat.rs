//! Periodic jobs on a real pool and the real scheduler thread, with short
//! intervals: runs come at their slots, every job option applies to them,
//! the overlap policies hold, schedules pause, resume and cancel, and bad
//! schedules are refused when made. (The slot arithmetic, DST, clock
//! jumps and jittered timers are the unit tests beside `src/beat/`.)

mod common;

use common::{wait_until, worker_pid};
use forkpool::{
    Missed, Overlap, Pool, Queue, RetryPolicy, RunOutcome, Schedule, ScheduleError, ScheduleId,
    ScheduleInfo, ScheduleState,
};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

const MS: Duration = Duration::from_millis(1);
const LONG: Duration = Duration::from_secs(20);

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// When the job started and ended, in ns since the epoch.
fn nap_span(ms: u64) -> (u128, u128) {
    let start = epoch_ns(SystemTime::now());
    std::thread::sleep(Duration::from_millis(ms));
    (start, epoch_ns(SystemTime::now()))
}

fn started_at(_: ()) -> u128 {
    epoch_ns(SystemTime::now())
}

fn boom(_: ()) {
    panic!("boom");
}

fn epoch_ns(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
}

fn info(pool: &Pool, id: ScheduleId) -> ScheduleInfo {
    pool.schedule_info(id).expect("the schedule exists")
}

fn failed_with(info: &ScheduleInfo, words: &str) -> bool {
    matches!(&info.last_outcome, Some(RunOutcome::Failed { error }) if error.contains(words))
}

#[test]
fn the_schedule_types_are_plain_values() {
    fn value<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    value::<Schedule>();
    value::<ScheduleInfo>();
    value::<ScheduleError>();
    value::<ScheduleId>();
    value::<Overlap>();
    value::<Missed>();
    value::<RunOutcome>();
    value::<ScheduleState>();
}

#[test]
fn an_interval_schedule_runs_at_its_slots_and_shows_them() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = pool.job(started_at).on_success(move |t: &u128| {
        let _ = tx.send(*t);
    });
    let made = SystemTime::now();
    let every = Schedule::every(100 * MS).name("tick");
    let id = pool.schedule(every, job, ()).unwrap();
    let first = info(&pool, id);
    assert_eq!(first.name, "tick");
    assert_eq!(first.timing, "every 100ms");
    assert_eq!(first.state, ScheduleState::Active);
    assert_eq!(
        (first.runs, first.overlap, first.missed),
        (0, Overlap::Forbid, Missed::RunOnce)
    );
    let next = first.next_run.unwrap();
    assert!(
        next >= made + 90 * MS && next <= made + 1000 * MS,
        "{next:?}"
    );

    let starts: Vec<u128> = (0..6).map(|_| rx.recv_timeout(LONG).unwrap()).collect();
    // Never before its slot: run k starts at least k + 1 intervals after
    // the schedule was made (2 ms of slack for the clocks' reads).
    for (k, &s) in starts.iter().enumerate() {
        let slot = epoch_ns(made) + 100_000_000 * (k as u128 + 1);
        assert!(
            s + 2_000_000 >= slot,
            "run {k} started {} µs early",
            (slot - s) / 1000
        );
    }
    // And in step: five intervals from the first run to the sixth.
    let span = (starts[5] - starts[0]) / 1_000_000;
    assert!((450..=900).contains(&span), "6 runs over {span} ms");
    let shown = info(&pool, id);
    assert!(shown.runs >= 6 && shown.succeeded >= 6, "{shown:?}");
    assert_eq!(shown.last_outcome, Some(RunOutcome::Succeeded));
    assert!(shown.last_run.is_some() && shown.last_job.is_some());
    assert_eq!(pool.schedules().len(), 1);
    assert_eq!(pool.schedules()[0].id, id);
    pool.join().unwrap();
}

#[test]
fn runs_go_to_the_jobs_queue_with_its_time_limit() {
    let pool = Pool::builder()
        .workers(1)
        .queue("beat", Queue::new().workers(1))
        .build()
        .unwrap();
    let beat_worker = pool.queue("beat").unwrap().apply(worker_pid, ()).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = pool
        .job(worker_pid)
        .queue("beat")
        .on_success(move |pid: &u32| {
            let _ = tx.send(*pid);
        });
    pool.schedule(Schedule::every(50 * MS), job, ()).unwrap();
    for _ in 0..3 {
        assert_eq!(rx.recv_timeout(LONG).unwrap(), beat_worker);
    }

    // A run past its job's time limit is killed and counted failed.
    let slow = pool.job(nap_ms).time_limit(100 * MS);
    let id = pool
        .schedule(Schedule::every(50 * MS), slow, 5_000)
        .unwrap();
    assert!(wait_until(LONG, || info(&pool, id).failed >= 1));
    let shown = info(&pool, id);
    assert!(failed_with(&shown, "time limit"), "{shown:?}");
    pool.terminate();
}

#[test]
fn runs_retry_as_the_job_says_and_each_run_counts_once() {
    let pool = Pool::new(1).unwrap();
    let job = pool.job(boom).retry(RetryPolicy::new(2));
    let id = pool.schedule(Schedule::every(100 * MS), job, ()).unwrap();
    assert!(wait_until(LONG, || info(&pool, id).failed >= 2));
    assert!(pool.pause_schedule(id));
    assert!(wait_until(LONG, || info(&pool, id).running == 0));
    // A run counts once, after its retries: three failed attempts each.
    let (stats, shown) = (pool.stats(), info(&pool, id));
    assert_eq!(stats.failed, shown.failed * 3, "{stats:?} {shown:?}");
    assert_eq!(stats.retried, shown.failed * 2, "{stats:?} {shown:?}");
    assert!(failed_with(&shown, "boom"), "{shown:?}");
    assert!(pool.cancel_schedule(id));
    assert!(pool.schedule_info(id).is_none());
    pool.join().unwrap();
}

#[test]
fn a_run_that_cannot_start_before_its_expiry_never_runs() {
    let pool = Pool::new(1).unwrap();
    let busy = pool.submit(nap_ms, 1500); // the only worker, for 1.5 s
    let (tx, rx) = mpsc::channel();
    let job = pool
        .job(started_at)
        .expires(200 * MS)
        .on_success(move |t: &u128| {
            let _ = tx.send(*t);
        });
    let every = Schedule::every(100 * MS).overlap(Overlap::Allow);
    let id = pool.schedule(every, job, ()).unwrap();
    assert!(wait_until(LONG, || info(&pool, id).failed >= 3));
    assert!(failed_with(&info(&pool, id), "expired"));
    busy.get().unwrap();
    // Once the worker is free, the next runs start in time.
    rx.recv_timeout(LONG).unwrap();
    pool.terminate();
}

#[test]
fn forbid_skips_slots_while_the_previous_run_is_unfinished() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = pool.job(nap_span).on_success(move |span: &(u128, u128)| {
        let _ = tx.send(*span);
    });
    let id = pool.schedule(Schedule::every(40 * MS), job, 200).unwrap();
    let mut most_running = 0;
    assert!(wait_until(LONG, || {
        let i = info(&pool, id);
        most_running = most_running.max(i.running);
        i.succeeded >= 4 && i.skips >= 4
    }));
    assert_eq!(most_running, 1);
    let spans: Vec<(u128, u128)> = rx.try_iter().collect();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlapped: {pair:?}");
    }
    pool.terminate();
}

#[test]
fn allow_lets_runs_overlap() {
    let pool = Pool::new(2).unwrap();
    let job = pool.job(nap_ms);
    let every = Schedule::every(40 * MS).overlap(Overlap::Allow);
    let id = pool.schedule(every, job, 300).unwrap();
    assert!(wait_until(LONG, || info(&pool, id).running >= 2));
    assert_eq!(info(&pool, id).skips, 0);
    pool.terminate();
}

#[test]
fn replace_cancels_the_unfinished_run_and_starts_the_new_one() {
    let pool = Pool::new(1).unwrap();
    let job = pool.job(nap_ms);
    let every = Schedule::every(150 * MS).overlap(Overlap::Replace);
    let id = pool.schedule(every, job, 10_000).unwrap();
    assert!(wait_until(LONG, || info(&pool, id).replaced >= 2));
    let shown = info(&pool, id);
    assert!(failed_with(&shown, "cancelled"), "{shown:?}");
    assert!(shown.running <= 1, "{shown:?}");
    assert_eq!(shown.skips, 0);
    pool.terminate();
}

#[test]
fn a_paused_schedule_runs_nothing_until_resumed_and_a_cancelled_one_is_gone() {
    let pool = Pool::new(1).unwrap();
    let id = pool
        .schedule(Schedule::every(30 * MS), pool.job(nap_ms), 0)
        .unwrap();
    assert!(wait_until(LONG, || info(&pool, id).runs >= 2));
    // Unnamed: it shows its job's function's name.
    assert!(
        info(&pool, id).name.ends_with("nap_ms"),
        "{:?}",
        info(&pool, id).name
    );
    assert!(pool.pause_schedule(id));
    let paused = info(&pool, id);
    assert_eq!(
        (paused.state, paused.next_run),
        (ScheduleState::Paused, None)
    );
    std::thread::sleep(300 * MS);
    let still = info(&pool, id);
    assert_eq!(still.runs, paused.runs, "ran while paused");
    // Slots missed before the pause (a loaded machine can stall the
    // scheduler past a 30 ms slot) stay as they were.
    assert_eq!(still.misses, paused.misses, "paused slots are not misses");
    assert!(pool.resume_schedule(id));
    assert!(!pool.resume_schedule(id));
    assert!(wait_until(LONG, || info(&pool, id).runs >= paused.runs + 2));
    assert!(pool.cancel_schedule(id));
    assert!(!pool.pause_schedule(id));
    assert!(pool.schedules().is_empty());
    pool.join().unwrap();
}

#[test]
fn a_full_bounded_queue_refuses_runs_and_the_scheduler_does_not_wait() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let running = pool.submit(nap_ms, 1500);
    assert!(wait_until(LONG, || pool
        .stats()
        .queue("default")
        .unwrap()
        .busy
        == 1));
    let waiting = pool.submit(nap_ms, 0); // holds the one place
    let every = Schedule::every(30 * MS).overlap(Overlap::Allow);
    let id = pool.schedule(every, pool.job(nap_ms), 0).unwrap();
    let other = pool
        .schedule(Schedule::every(30 * MS), pool.job(nap_ms), 0)
        .unwrap();
    // Both schedules see their slots: the scheduler is never stuck on one.
    assert!(wait_until(LONG, || info(&pool, id).refused >= 3
        && info(&pool, other).refused >= 3));
    running.get().unwrap();
    waiting.get().unwrap();
    assert!(wait_until(LONG, || info(&pool, id).runs >= 1));
    pool.terminate();
}

#[test]
fn bad_schedules_are_refused_when_made() {
    let pool = Pool::builder()
        .workers(1)
        .time_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let other = Pool::new(1).unwrap();
    let every = || Schedule::every(Duration::from_secs(60));
    assert_eq!(
        pool.schedule(Schedule::every(Duration::ZERO), pool.job(nap_ms), 1),
        Err(ScheduleError::ZeroInterval)
    );
    assert_eq!(
        pool.schedule(every().missed(Missed::RunUpTo(0)), pool.job(nap_ms), 1),
        Err(ScheduleError::ZeroRuns)
    );
    assert_eq!(
        pool.schedule(every(), other.job(nap_ms), 1),
        Err(ScheduleError::OtherPool)
    );
    let no_queue = pool.schedule(every(), pool.job(nap_ms).queue("nope"), 1);
    assert!(
        matches!(&no_queue, Err(ScheduleError::Job(e)) if e.to_string().contains("\"nope\"")),
        "{no_queue:?}"
    );
    let soft_above_hard = pool.job(nap_ms).soft_time_limit(Duration::from_secs(2));
    assert!(matches!(
        pool.schedule(every(), soft_above_hard, 1),
        Err(ScheduleError::Job(_))
    ));
    assert!(pool.schedules().is_empty(), "nothing refused was kept");
    other.join().unwrap();
    pool.close();
    assert_eq!(
        pool.schedule(every(), pool.job(nap_ms), 1),
        Err(ScheduleError::PoolClosed)
    );
    pool.join().unwrap();
}

#[test]
fn closing_the_pool_stops_its_schedules_and_dropping_it_does_not_wait_for_slots() {
    let pool = Pool::new(1).unwrap();
    let hourly = pool
        .schedule(
            Schedule::every(Duration::from_secs(3600)),
            pool.job(nap_ms),
            0,
        )
        .unwrap();
    let fast = pool
        .schedule(Schedule::every(20 * MS), pool.job(nap_ms), 0)
        .unwrap();
    assert!(wait_until(LONG, || info(&pool, fast).runs >= 2));
    pool.close();
    let stopped = pool.schedules();
    assert!(stopped.iter().all(|i| i.state == ScheduleState::Stopped));
    assert!(stopped.iter().all(|i| i.next_run.is_none()));
    std::thread::sleep(100 * MS);
    assert_eq!(info(&pool, fast).runs, stopped[1].runs, "ran after close");
    assert!(!pool.pause_schedule(hourly));
    // Joining waits for the runs already started, not for any slot.
    let t = Instant::now();
    pool.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));

    let pool = Pool::new(1).unwrap();
    pool.schedule(
        Schedule::every(Duration::from_secs(3600)),
        pool.job(nap_ms),
        0,
    )
    .unwrap();
    let t = Instant::now();
    drop(pool);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "dropping waited for a slot"
    );
}

#[cfg(feature = "cron")]
#[test]
fn a_cron_schedule_with_a_seconds_field_runs_on_the_second() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = pool.job(started_at).on_success(move |t: &u128| {
        let _ = tx.send(*t);
    });
    let cron = Schedule::cron("* * * * * *", "Europe/Berlin").unwrap();
    let id = pool.schedule(cron, job, ()).unwrap();
    assert_eq!(
        info(&pool, id).timing,
        "cron \"* * * * * *\" in Europe/Berlin"
    );
    let next = info(&pool, id).next_run.unwrap();
    assert_eq!(epoch_ns(next) % 1_000_000_000, 0, "slots are whole seconds");
    let mut seconds = Vec::new();
    for _ in 0..3 {
        let start = rx.recv_timeout(LONG).unwrap();
        // Started just after a whole second (generous for a busy machine).
        let into_second = (start % 1_000_000_000) / 1_000_000;
        assert!(
            into_second < 500,
            "started {into_second} ms into its second"
        );
        seconds.push(start / 1_000_000_000);
    }
    seconds.dedup();
    assert_eq!(seconds.len(), 3, "one run per second: {seconds:?}");
    pool.terminate();
}

#[test]
fn schedules_show_in_inspect_with_their_counts() {
    let pool = Pool::new(1).unwrap();
    let id = pool
        .schedule(
            Schedule::every(30 * MS).name("heartbeat"),
            pool.job(nap_ms),
            1,
        )
        .unwrap();
    assert!(wait_until(LONG, || info(&pool, id).runs >= 3));
    let snap = pool.inspect();
    let s = snap
        .schedules
        .iter()
        .find(|s| s.id == id)
        .expect("the schedule is in the snapshot");
    assert_eq!(s.name, "heartbeat");
    assert_eq!(s.state, ScheduleState::Active);
    assert!(
        s.runs >= 3 && s.next_run.is_some() && s.last_run.is_some(),
        "{s:?}"
    );
    assert!(pool.pause_schedule(id));
    let paused = pool.inspect();
    assert_eq!(paused.schedules[0].state, ScheduleState::Paused);
    assert!(paused.schedules[0].next_run.is_none());
    assert!(pool.cancel_schedule(id));
    pool.join().unwrap();
}
