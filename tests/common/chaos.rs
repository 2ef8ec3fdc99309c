//! The chaos run shared by `tests/chaos.rs` (one queue) and
//! `tests/chaos_queues.rs` (several queues, priorities, autoscaling):
//! jobs submitted from four threads while faults are injected, and every
//! outcome, count and process checked. See those files.
#![allow(dead_code)]

use crate::common::{children_of, descendants, open_fds, status_number, wait_until};
use forkpool::{JobError, Pool, Queue};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TIME_LIMIT: Duration = Duration::from_secs(2);

/// Room above the caller's size at the start for the memory limit. The
/// limit is on a worker's resident size, and workers forked by a fork
/// server re-forked mid-run start as big as the caller was then (which
/// grows with the jobs it tracks): the limit must stay above that, or
/// every such worker would be replaced after each batch.
fn memory_headroom(n: usize) -> usize {
    (96 << 20) + n * 256
}

/// What a leaking job leaves behind: enough to cross the limit.
static LEAK: AtomicUsize = AtomicUsize::new(0);

/// Per-job run counters, in memory shared with every worker.
static RUNS: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());
/// When each job started, on the system-wide monotonic clock (shared too).
static STARTS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// Pids of workers running a `Hang` or `Leak` job (shared too): the
/// outside killer spares them, so that hangs meet their time limit and
/// leaks their memory limit.
static SPARED: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());
const SPARED_SLOTS: usize = 128;

/// A fresh anonymous mapping shared with every process forked after it.
fn shared_zeroed(bytes: usize) -> *mut libc::c_void {
    // SAFETY: a fresh anonymous shared mapping; checked below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    map
}

fn spared() -> &'static [AtomicI32] {
    let p = SPARED.load(Ordering::Relaxed);
    assert!(!p.is_null());
    // SAFETY: SPARED points at SPARED_SLOTS counters mapped for the whole
    // test process (never unmapped).
    unsafe { std::slice::from_raw_parts(p, SPARED_SLOTS) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Ok,
    Slow,
    Panic,
    Abort,
    Segfault,
    Exit,
    Leak,
    Hang,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Job {
    id: u32,
    kind: Kind,
}

fn answer(id: u32) -> u64 {
    u64::from(id) * 3 + 1
}

fn exit_code(id: u32) -> i32 {
    20 + (id % 50) as i32
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn chaos_job(job: Job) -> u64 {
    let runs = RUNS.load(Ordering::Relaxed);
    assert!(!runs.is_null(), "run counters are mapped before the pool");
    // SAFETY: RUNS and STARTS point at one counter per job id, mapped
    // shared before the pool was built (so in every worker too).
    unsafe {
        (*STARTS.load(Ordering::Relaxed).add(job.id as usize)).store(now_ns(), Ordering::SeqCst);
        &*runs.add(job.id as usize)
    }
    .fetch_add(1, Ordering::SeqCst);
    match job.kind {
        Kind::Ok => {}
        Kind::Slow => std::thread::sleep(Duration::from_millis(10)),
        Kind::Panic => panic!("chaos {}", job.id),
        Kind::Abort => std::process::abort(),
        // SAFETY: none: a null write on purpose.
        Kind::Segfault => unsafe { std::ptr::null_mut::<u64>().write_volatile(1) },
        Kind::Exit => std::process::exit(exit_code(job.id)),
        Kind::Leak => {
            let me = std::process::id() as i32;
            spared()[job.id as usize % SPARED_SLOTS].store(me, Ordering::SeqCst);
            std::mem::forget(vec![1u8; LEAK.load(Ordering::Relaxed)]);
        }
        Kind::Hang => {
            let me = std::process::id() as i32;
            spared()[job.id as usize % SPARED_SLOTS].store(me, Ordering::SeqCst);
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    }
    answer(job.id)
}

fn crashed(signal: Option<i32>, exit_code: Option<i32>) -> JobError {
    JobError::Crashed { signal, exit_code }
}

/// Whether `got` is the outcome `want` predicts (a panic's message ends
/// with its line and column, which the prediction leaves out).
fn fulfils(got: &Result<u64, JobError>, want: &Result<u64, JobError>) -> bool {
    match (got, want) {
        (Err(JobError::Panicked { message: g }), Err(JobError::Panicked { message: w })) => {
            g.starts_with(w.as_str())
        }
        _ => got == want,
    }
}

/// The outcome a job's input predicts.
fn predicted(job: Job) -> Result<u64, JobError> {
    match job.kind {
        Kind::Ok | Kind::Slow | Kind::Leak => Ok(answer(job.id)),
        Kind::Panic => Err(JobError::Panicked {
            message: format!("chaos {} (at {}:", job.id, file!()),
        }),
        Kind::Abort => Err(crashed(Some(libc::SIGABRT), None)),
        Kind::Segfault => Err(crashed(Some(libc::SIGSEGV), None)),
        Kind::Exit => Err(crashed(None, Some(exit_code(job.id)))),
        Kind::Hang => Err(JobError::TimedOut { limit: TIME_LIMIT }),
    }
}

/// A small deterministic generator, so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Fault mix per 100,000 jobs.
fn kinds(n: usize, rng: &mut Rng) -> Vec<Kind> {
    let per = |k: usize| (k * n).div_ceil(100_000);
    let mut v = Vec::with_capacity(n);
    for (kind, count) in [
        (Kind::Panic, per(1000)),
        (Kind::Slow, per(400)),
        (Kind::Abort, per(120)),
        (Kind::Segfault, per(120)),
        (Kind::Exit, per(120)),
        (Kind::Leak, per(40)),
        (Kind::Hang, per(8)),
    ] {
        v.extend(std::iter::repeat_n(kind, count));
    }
    v.resize(n.max(v.len()), Kind::Ok);
    v.truncate(n);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn resident_bytes() -> u64 {
    status_number("self", "VmRSS:") * 1024
}

/// Sends `sig` to `pid` through a pidfd, if `pid` is still a child of
/// `parent` once the pidfd holds it (so a recycled pid is never hit).
fn signal_child_of(parent: i32, pid: i32, sig: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return false;
    }
    let ok = crate::common::stat(pid).is_some_and(|(s, ppid)| ppid == parent && s != 'Z')
        // SAFETY: signalling through the pidfd just opened.
        && unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, sig, 0usize, 0) } == 0;
    // SAFETY: closing the pidfd we opened.
    unsafe { libc::close(fd) };
    ok
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    panicked: u64,
    crashed: u64,
    timed_out: u64,
    /// Outcomes that differ from the prediction because a kill from
    /// outside got there first.
    killed: u64,
    by_kind: std::collections::BTreeMap<String, u64>,
}

/// How the chaos pool is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One queue of three workers; every job of priority 0.
    OneQueue,
    /// Three queues: `default` (2 workers), `elastic` (autoscaling 1 to 3,
    /// 200 ms keep-alive) and `ranked` (2 workers, jobs of priorities −2 to
    /// 2). Jobs submitted one by one spread over the three; `imap` batches
    /// go to `elastic`.
    Queues,
}

const QUEUES: [&str; 3] = ["default", "elastic", "ranked"];

/// The queue and priority of a job submitted one by one.
fn placement(layout: Layout, job: Job) -> (&'static str, i32) {
    match layout {
        Layout::OneQueue => ("default", 0),
        Layout::Queues => {
            let q = QUEUES[job.id as usize % 3];
            let p = if q == "ranked" {
                (job.id.wrapping_mul(2_654_435_761) >> 7) as i32 % 5 - 2
            } else {
                0
            };
            (q, p)
        }
    }
}

/// Slack for the order check: what a dispatch may lag behind a
/// submission on a loaded machine, and two starts side by side may differ.
const ORDER_SLACK_NS: u64 = 100_000_000;

/// Checks that among jobs of the `ranked` queue, no job started while a job
/// that outranks it (a higher priority, or the same one submitted earlier)
/// had been waiting for longer than the slack — the order every waiting
/// job must get, whatever the faults. `submitted` is when the caller
/// submitted each job (0: not one of them).
fn check_order(jobs: &[Job], submitted: &[AtomicU64], starts: &[AtomicU64]) {
    let ranked: Vec<(u32, i32, u64, u64)> = jobs
        .iter()
        .filter(|j| placement(Layout::Queues, **j).0 == "ranked")
        .filter_map(|j| {
            let sub = submitted[j.id as usize].load(Ordering::SeqCst);
            let start = starts[j.id as usize].load(Ordering::SeqCst);
            (sub != 0 && start != 0).then_some((j.id, placement(Layout::Queues, *j).1, sub, start))
        })
        .collect();
    let mut inversions = Vec::new();
    for a in &ranked {
        for b in &ranked {
            let a_outranks = a.1 > b.1 || (a.1 == b.1 && a.2 + ORDER_SLACK_NS < b.2);
            let a_was_waiting = a.2 + ORDER_SLACK_NS < b.3;
            if a_outranks && a_was_waiting && b.3 + ORDER_SLACK_NS < a.3 {
                inversions.push((a.0, b.0));
            }
        }
    }
    assert!(
        inversions.is_empty(),
        "{} pairs started out of order, e.g. {:?}",
        inversions.len(),
        &inversions[..inversions.len().min(5)]
    );
}

/// The soak run: `FORKPOOL_SOAK_JOBS` jobs (default a million), seeded
/// with `FORKPOOL_SOAK_SEED` (default `seed`).
pub fn soak_from_env(seed: u64, layout: Layout) {
    let n = std::env::var("FORKPOOL_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed = std::env::var("FORKPOOL_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(seed);
    run_chaos(n, seed, layout);
}

pub fn run_chaos(n: usize, seed: u64, layout: Layout) {
    let me = std::process::id() as i32;
    assert!(children_of(me).is_empty(), "the test starts with children");
    // One counter per job, shared with every process forked from here.
    let map = shared_zeroed(n);
    RUNS.store(map.cast(), Ordering::SeqCst);
    if SPARED.load(Ordering::SeqCst).is_null() {
        let slots = shared_zeroed(SPARED_SLOTS * 4);
        SPARED.store(slots.cast(), Ordering::SeqCst);
    }
    // SAFETY: n counters live in the mapping until the end of this function.
    let runs = unsafe { std::slice::from_raw_parts(map.cast::<AtomicU8>(), n) };
    let starts_map = shared_zeroed(n * 8);
    STARTS.store(starts_map.cast(), Ordering::SeqCst);
    // SAFETY: as above, n start times.
    let starts = unsafe { std::slice::from_raw_parts(starts_map.cast::<AtomicU64>(), n) };
    let submitted: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());

    Pool::new(1).unwrap().join().unwrap(); // warm up lazily opened descriptors
    let fds_before = open_fds();
    LEAK.store(memory_headroom(n) + (64 << 20), Ordering::SeqCst);
    let builder = Pool::builder()
        .time_limit(TIME_LIMIT)
        .max_memory_per_worker(resident_bytes() + memory_headroom(n) as u64)
        .chunk_size(8);
    // Each queue's workers once idle.
    let strength: Vec<(&str, u64)> = match layout {
        Layout::OneQueue => vec![("default", 3)],
        Layout::Queues => vec![("default", 2), ("elastic", 1), ("ranked", 2)],
    };
    let pool = match layout {
        Layout::OneQueue => builder.workers(3),
        Layout::Queues => builder
            .workers(2)
            .queue(
                "elastic",
                Queue::new()
                    .autoscale(1, 3)
                    .keep_alive(Duration::from_millis(200)),
            )
            .queue("ranked", Queue::new().workers(2)),
    }
    .build()
    .unwrap();

    let mut rng = Rng(seed);
    let jobs: Vec<Job> = kinds(n, &mut rng)
        .into_iter()
        .enumerate()
        .map(|(id, kind)| Job {
            id: id as u32,
            kind,
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let zygote_kills = Arc::new(AtomicU64::new(0));

    // Kills from outside: a random worker every 10–60 ms, and the fork
    // server at a quarter, half and three quarters of the way.
    let killer = {
        let (done, finished, kills, zygote_kills) = (
            done.clone(),
            finished.clone(),
            kills.clone(),
            zygote_kills.clone(),
        );
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10 + rng.below(50)));
                let zygotes = children_of(me);
                let quarter = (zygote_kills.load(Ordering::Relaxed) + 1) * n as u64 / 4;
                if zygote_kills.load(Ordering::Relaxed) < 3
                    && done.load(Ordering::Relaxed) >= quarter
                {
                    if let Some(&z) = zygotes.first()
                        && signal_child_of(me, z, libc::SIGKILL)
                    {
                        zygote_kills.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                // Workers: children of the fork server, and orphans of
                // killed ones (re-parented to init; found by our pool's
                // live count only, so they are left alone here).
                let spared: Vec<i32> = spared().iter().map(|p| p.load(Ordering::SeqCst)).collect();
                let workers: Vec<(i32, i32)> = zygotes
                    .iter()
                    .flat_map(|&z| children_of(z).into_iter().map(move |w| (z, w)))
                    .filter(|(_, w)| !spared.contains(w))
                    .collect();
                if workers.is_empty() {
                    continue;
                }
                let (z, w) = workers[rng.below(workers.len() as u64) as usize];
                if signal_child_of(z, w, libc::SIGKILL) {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let check = {
        let (tally, done) = (tally.clone(), done.clone());
        move |job: Job, got: Result<u64, JobError>| {
            let want = predicted(job);
            let mut t = tally.lock().unwrap();
            match &got {
                Ok(_) => t.ok += 1,
                Err(JobError::Panicked { .. }) => t.panicked += 1,
                Err(JobError::Crashed { .. }) => t.crashed += 1,
                Err(JobError::TimedOut { .. }) => t.timed_out += 1,
                Err(e) => panic!("job {job:?}: unexpected {e:?}"),
            }
            let label = format!("{:?} -> {}", job.kind, outcome_label(&got));
            *t.by_kind.entry(label).or_default() += 1;
            let ran = runs[job.id as usize].load(Ordering::SeqCst);
            assert!(ran <= 1, "job {job:?} ran {ran} times");
            if fulfils(&got, &want) {
                assert_eq!(ran, 1, "job {job:?} answered but never ran");
                done.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Killed from outside before its own fate: SIGKILL, or an
            // unknown status when its worker was an orphan.
            let unknown = crashed(None, None);
            let outside =
                got == Err(crashed(Some(libc::SIGKILL), None)) || got == Err(unknown.clone());
            let orphan_crash = got == Err(unknown)
                && matches!(job.kind, Kind::Abort | Kind::Segfault | Kind::Exit);
            assert!(outside, "job {job:?}: expected {want:?}, got {got:?}");
            if !orphan_crash {
                t.killed += 1;
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
    };

    let threads: Vec<_> = jobs
        .chunks(n.div_ceil(4))
        .map(|part| part.to_vec())
        .enumerate()
        .map(|(t, part)| {
            let (pool, check, submitted) = (pool.clone(), check.clone(), submitted.clone());
            std::thread::spawn(move || {
                if t % 2 == 0 {
                    let handles: Vec<_> = part
                        .iter()
                        .map(|&j| {
                            let (queue, priority) = placement(layout, j);
                            submitted[j.id as usize].store(now_ns(), Ordering::SeqCst);
                            let job = pool.job(chaos_job).queue(queue).priority(priority);
                            (j, job.submit(j))
                        })
                        .collect();
                    for (j, h) in handles {
                        check(j, h.get());
                    }
                } else {
                    let queue = if layout == Layout::Queues {
                        "elastic"
                    } else {
                        "default"
                    };
                    let items = pool.queue(queue).unwrap().imap(chaos_job, part.clone());
                    for (j, got) in part.iter().zip(items) {
                        check(*j, got);
                    }
                }
                part.len()
            })
        })
        .collect();
    let resolved: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    finished.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let elapsed = started.elapsed();

    assert_eq!(resolved, n);
    let t = tally.lock().unwrap();
    let (kills, zygote_kills) = (
        kills.load(Ordering::Relaxed),
        zygote_kills.load(Ordering::Relaxed),
    );
    let idle_strength = || {
        let s = pool.stats();
        strength
            .iter()
            .all(|&(q, w)| s.queue(q).is_some_and(|q| q.workers == w))
    };
    assert!(
        wait_until(Duration::from_secs(20), idle_strength),
        "every queue back to its strength when idle: {:?}",
        pool.stats()
    );
    let s = pool.stats();
    eprintln!(
        "chaos: {n} jobs in {elapsed:.1?}; {kills} workers and {zygote_kills} fork servers killed from outside\n\
         outcomes: {} ok, {} panicked, {} crashed, {} timed out; {} changed by outside kills\n\
         by kind: {:#?}\nstats: {s:?}",
        t.ok, t.panicked, t.crashed, t.timed_out, t.killed, t.by_kind
    );
    assert!(
        t.killed <= kills,
        "more jobs killed ({}) than kills sent ({kills})",
        t.killed
    );
    assert_eq!(s.submitted, n as u64, "{s:?}");
    assert_eq!(s.completed, t.ok, "{s:?}");
    assert_eq!(s.panicked, t.panicked, "{s:?}");
    assert_eq!(s.crashed, t.crashed, "{s:?}");
    assert_eq!(s.timed_out, t.timed_out, "{s:?}");
    assert_eq!(s.failed, t.panicked + t.crashed + t.timed_out, "{s:?}");
    assert_eq!((s.cancelled, s.codec_errors), (0, 0), "{s:?}");
    let leaks = jobs.iter().filter(|j| j.kind == Kind::Leak).count() as u64;
    if layout == Layout::OneQueue {
        // (An autoscaling queue replaces a lost worker only if its load
        // still wants one.)
        assert!(s.worker_restarts >= t.crashed + t.timed_out, "{s:?}");
    }
    assert!(
        s.worker_restarts <= t.crashed + t.timed_out + leaks + kills,
        "{s:?}"
    );
    assert_eq!(s.fork_server_restarts, zygote_kills, "{s:?}");
    drop(t);
    if layout == Layout::Queues {
        check_order(&jobs, &submitted, starts);
    }

    drop(pool);
    let left = || descendants(me);
    assert!(
        wait_until(Duration::from_secs(5), || left().is_empty()),
        "processes left behind: {:?}",
        left()
    );
    assert!(
        wait_until(Duration::from_secs(5), || open_fds() == fds_before),
        "descriptors leaked: {:?} vs {fds_before:?}",
        open_fds()
    );
    RUNS.store(std::ptr::null_mut(), Ordering::SeqCst);
    STARTS.store(std::ptr::null_mut(), Ordering::SeqCst);
    // SAFETY: unmapping the counters; no process uses them any more.
    unsafe {
        libc::munmap(map, n);
        libc::munmap(starts_map, n * 8);
    }
}

fn outcome_label(r: &Result<u64, JobError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(JobError::Crashed { signal, exit_code }) => match (signal, exit_code) {
            (Some(s), _) => format!("crashed (signal {s})"),
            (None, Some(_)) => "crashed (exit code)".into(),
            (None, None) => "crashed (status unknown)".into(),
        },
        Err(JobError::Panicked { .. }) => "panicked".into(),
        Err(JobError::TimedOut { .. }) => "timed out".into(),
        Err(e) => format!("{e:?}"),
    }
}
