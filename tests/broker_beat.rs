//! Periodic jobs across hosts (`Client::schedule`), with a real
//! `redis-server`, worker hosts in separate processes and schedulers in
//! separate processes: each slot fires once among every client that runs
//! the schedule, none is lost beyond what the catch-up policy says, and a
//! restart after downtime catches up as the policy says — not once per
//! missed slot.
#![cfg(feature = "redis")]

mod common;

use common::server::{HostOpts, HostProc, Redis, Traces, append, client};
use common::wait_until;
use forkpool::broker::Client;
use forkpool::{Missed, Overlap, Schedule, ScheduleError, ScheduleInfo, ScheduleState};
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Appends the slot it stands for and the process it ran in.
fn record((path, slot): (String, u64)) -> u64 {
    append(&path, &format!("{slot} {}", common::server::my_host_pid()));
    slot
}
forkpool::register!(record);

/// Appends when it started and ended (µs), sleeping `ms` in between.
fn slow((path, ms): (String, u64)) {
    let start = common::server::now_us();
    std::thread::sleep(Duration::from_millis(ms));
    append(&path, &format!("{start} {}", common::server::now_us()));
}
forkpool::register!(slow);

/// Not registered.
fn stray(_: ()) {}

#[test]
fn host_main() {
    common::server::host_main();
}

fn slot_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Schedules `record` every `FP_EVERY_MS` under the name `FP_SCHEDULE`
/// for `FP_RUN_MS`, then prints what it counted and exits: a scheduler
/// process of its own, when started by [`scheduler`].
#[test]
fn beat_main() {
    if std::env::var_os("FORKPOOL_TEST_BEAT").is_none() {
        return;
    }
    let env = |k: &str| std::env::var(k).unwrap();
    let ms = |k: &str| Duration::from_millis(env(k).parse().unwrap());
    let client = client(&env("FP_URL"));
    let path = env("FP_TRACE");
    let every = Schedule::every(ms("FP_EVERY_MS")).name(env("FP_SCHEDULE"));
    let id = client
        .schedule_with(every, client.job(record), move |slot| {
            (path.clone(), slot_ms(slot))
        })
        .unwrap();
    std::thread::sleep(ms("FP_RUN_MS"));
    assert!(client.pause_schedule(id));
    let info = client.schedule_info(id).unwrap();
    client.flush().unwrap();
    println!(
        "COUNTED {} {} {} {}",
        info.runs, info.skips, info.misses, info.refused
    );
    std::process::exit(0);
}

/// A scheduler process running `beat_main`; SIGKILLed with its parent.
fn scheduler(url: &str, trace: &str, run: Duration) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "beat_main", "--nocapture", "--test-threads=1"])
        .env("FORKPOOL_TEST_BEAT", "1")
        .env("FP_URL", url)
        .env("FP_TRACE", trace)
        .env("FP_SCHEDULE", "tick")
        .env("FP_EVERY_MS", "250")
        .env("FP_RUN_MS", run.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe, and the closure allocates
    // nothing and touches no lock between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// `runs skips misses refused` from a scheduler's output.
fn counted(child: std::process::Child) -> [u64; 4] {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "scheduler failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.split_once("COUNTED ").map(|(_, n)| n))
        .unwrap_or_else(|| panic!("no count in {text:?}"));
    let n: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    [n[0], n[1], n[2], n[3]]
}

/// The slots in a trace, each with the pid it ran in.
fn slots(traces: &Traces, name: &str) -> Vec<(u64, i32)> {
    traces
        .lines(name)
        .iter()
        .map(|l| {
            let (slot, pid) = l.split_once(' ').unwrap();
            (slot.parse().unwrap(), pid.parse().unwrap())
        })
        .collect()
}

#[test]
fn two_processes_fire_each_slot_once() {
    let redis = Redis::start();
    let host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let traces = Traces::new();
    let trace = traces.path("tick");
    // Overlapping lives: both run for a while, each alone for a while.
    let a = scheduler(&redis.url(), &trace, Duration::from_millis(3000));
    std::thread::sleep(Duration::from_millis(800));
    let b = scheduler(&redis.url(), &trace, Duration::from_millis(3200));
    let [ra, sa, ma, fa] = counted(a);
    let [rb, sb, mb, fb] = counted(b);
    let runs = ra + rb;
    assert_eq!(fa + fb, 0, "Redis was there all along");
    assert!(
        wait_until(Duration::from_secs(30), || traces.lines("tick").len()
            as u64
            >= runs),
        "runs queued: {runs}, run: {}",
        traces.lines("tick").len()
    );
    std::thread::sleep(Duration::from_millis(300));
    let ran = slots(&traces, "tick");
    assert_eq!(ran.len() as u64, runs, "every run queued ran once: {ran:?}");
    let distinct: BTreeSet<u64> = ran.iter().map(|&(s, _)| s).collect();
    assert_eq!(distinct.len(), ran.len(), "a slot ran twice: {ran:?}");
    assert!(distinct.iter().all(|s| s % 250 == 0), "{distinct:?}");
    assert!(ran.iter().all(|&(_, pid)| pid == host.pid()));
    // Four seconds of 250 ms slots: most of them ran (generous slack for a
    // loaded machine, where a stalled process misses slots).
    assert!(runs >= 8, "only {runs} runs (a {ra}, b {rb})");
    // A slot between the first and the last that did not run was counted
    // as skipped or missed by the process that claimed past it.
    let (first, last) = (*distinct.first().unwrap(), *distinct.last().unwrap());
    let gaps = (last - first) / 250 + 1 - distinct.len() as u64;
    assert!(
        gaps <= sa + sb + ma + mb,
        "{gaps} slots missing, but only {} skips and {} misses counted",
        sa + sb,
        ma + mb
    );
}

fn info(c: &Client) -> ScheduleInfo {
    c.schedules().pop().unwrap()
}

#[test]
fn a_restart_catches_up_as_the_policy_says_not_per_slot() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let traces = Traces::new();
    let make = |c: &Client, path: String| {
        let every = Schedule::every(Duration::from_millis(200))
            .name("catchup")
            .missed(Missed::RunUpTo(3));
        c.schedule_with(every, c.job(record), move |slot| {
            (path.clone(), slot_ms(slot))
        })
        .unwrap()
    };
    let first = client(&redis.url());
    make(&first, traces.path("c"));
    assert!(wait_until(Duration::from_secs(20), || info(&first).runs >= 2));
    let before = info(&first);
    drop(first); // every process of the schedule is down...
    std::thread::sleep(Duration::from_millis(2000)); // ...for about 10 slots
    let second = client(&redis.url());
    make(&second, traces.path("c"));
    // Three catch-up runs (RunUpTo(3)), one after the other (Forbid).
    assert!(wait_until(Duration::from_secs(20), || info(&second).runs >= 3));
    let after = info(&second);
    assert!(
        (6..=20).contains(&after.misses),
        "ten slots or more (a loaded machine starts the client late) were missed, \
         three of them run: {after:?}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let i = info(&second);
            traces.lines("c").len() as u64 >= before.runs + i.runs
        }),
        "runs did not finish"
    );
    second.pause_schedule(after.id);
    std::thread::sleep(Duration::from_millis(500));
    let ran: Vec<u64> = slots(&traces, "c").iter().map(|&(s, _)| s).collect();
    let distinct: BTreeSet<u64> = ran.iter().copied().collect();
    assert_eq!(distinct.len(), ran.len(), "a slot ran twice: {ran:?}");
    // The three catch-up runs stand for the newest three missed slots:
    // consecutive slots, after a gap.
    let sorted: Vec<u64> = distinct.into_iter().collect();
    let jump = sorted
        .windows(2)
        .position(|w| w[1] - w[0] > 200)
        .expect("a gap where every process was down");
    let caught = &sorted[jump + 1..];
    assert!(caught.len() >= 3, "{sorted:?}");
    assert_eq!(caught[1] - caught[0], 200, "{sorted:?}");
    assert_eq!(caught[2] - caught[1], 200, "{sorted:?}");
    let gap = (caught[0] - sorted[jump]) / 200 - 1;
    assert!(
        gap <= after.misses + before.misses,
        "{gap} slots skipped over but {} counted as missed",
        after.misses + before.misses
    );
}

#[test]
fn forbid_keeps_runs_from_overlapping_across_clients() {
    let redis = Redis::start();
    let _host = HostProc::spawn(&HostOpts::new(&redis.url()));
    let traces = Traces::new();
    let path = traces.path("slow");
    let clients = [client(&redis.url()), client(&redis.url())];
    for c in &clients {
        // A 600 ms job every 200 ms: without Forbid, two workers would run
        // two at once.
        let every = Schedule::every(Duration::from_millis(200)).name("slow");
        c.schedule(every, c.job(slow), (path.clone(), 600)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(30), || traces
        .lines("slow")
        .len()
        >= 4));
    let infos: Vec<ScheduleInfo> = clients.iter().map(info).collect();
    for c in &clients {
        c.pause_schedule(info(c).id);
    }
    assert!(wait_until(Duration::from_secs(20), || clients
        .iter()
        .all(|c| info(c).running == 0)));
    let mut spans: Vec<(u64, u64)> = traces
        .lines("slow")
        .iter()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two runs overlapped: {spans:?}");
    }
    let skips: u64 = infos.iter().map(|i| i.skips).sum();
    assert!(skips >= 2, "slots while a run ran are skipped: {infos:?}");
}

#[test]
fn what_cannot_run_across_hosts_is_refused_and_schedules_are_steered() {
    let redis = Redis::start();
    let c = client(&redis.url());
    let every = || Schedule::every(Duration::from_secs(60));
    let replace = every().overlap(Overlap::Replace);
    let traces = Traces::new();
    let arg = (traces.path("x"), 0u64);
    assert!(matches!(
        c.schedule(replace, c.job(record), arg.clone()),
        Err(ScheduleError::Broker(m)) if m.contains("Replace")
    ));
    match c.schedule(every(), c.job(stray), ()) {
        Err(ScheduleError::Broker(m)) => assert!(m.contains("not registered"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.schedule(Schedule::every(Duration::from_micros(500)), c.job(record), arg.clone()),
        Err(ScheduleError::Broker(m)) if m.contains("millisecond")
    ));
    assert!(matches!(
        c.schedule(every().name("a b"), c.job(record), arg.clone()),
        Err(ScheduleError::Broker(m)) if m.contains("schedule name")
    ));
    assert!(matches!(
        c.schedule(every(), c.job(record).queue("no queue"), arg.clone()),
        Err(ScheduleError::Job(_))
    ));
    assert_eq!(
        c.schedule(Schedule::every(Duration::ZERO), c.job(record), arg.clone()),
        Err(ScheduleError::ZeroInterval)
    );

    // Named after the job by default; one name per client.
    let id = c.schedule(every(), c.job(record), arg.clone()).unwrap();
    assert!(matches!(
        c.schedule(every(), c.job(record), arg.clone()),
        Err(ScheduleError::Broker(m)) if m.contains("already")
    ));
    let other = c
        .schedule(every().name("other"), c.job(record), arg)
        .unwrap();
    let all = c.schedules();
    assert_eq!(all.len(), 2);
    assert!(all[0].name.ends_with("record"), "{}", all[0].name);
    assert_eq!(all[0].timing, "every 60s");
    let next = all[0].next_run.unwrap();
    assert_eq!(slot_ms(next) % 60_000, 0, "a full minute");
    assert!(next > SystemTime::now());

    assert!(c.pause_schedule(id));
    assert!(!c.pause_schedule(id));
    assert_eq!(c.schedule_info(id).unwrap().state, ScheduleState::Paused);
    assert_eq!(c.schedule_info(id).unwrap().next_run, None);
    assert!(c.resume_schedule(id));
    assert!(!c.resume_schedule(id));
    assert_eq!(c.schedule_info(id).unwrap().state, ScheduleState::Active);
    assert!(c.cancel_schedule(id));
    assert!(!c.cancel_schedule(id));
    assert!(c.schedule_info(id).is_none());
    assert_eq!(c.schedules().len(), 1);
    assert!(c.schedule_info(other).is_some());
}
