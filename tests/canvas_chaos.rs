//! Chaos for workflows: a seeded random mix of nested workflows — chains
//! of steps and chords, chords (fail-fast and collect-all) whose members
//! are steps, chains and chords — run while steps panic, abort, hang past
//! their time limit or fail once and are retried, workers are SIGKILLed
//! from outside at random moments, and some workflows are cancelled
//! mid-flight.
//!
//! Checked: every workflow resolves exactly once (its handle gives one
//! outcome, and its success or error callback runs once); its outcome is
//! the one its plan predicts — unless a worker killed from outside ran one
//! of its steps, or it was cancelled (then it is `Cancelled`); no chord
//! body runs twice; no single-job step (a chain's, a body) starts after
//! its workflow's `cancel` returned; and the stats add up: every job
//! counted once, every run of a step a job.
//!
//! Steps find out who they are from their input: a value carries the id
//! of the step it goes to (`next`) and of the chord body its member ends
//! in (`owner`), from tables in memory shared with the workers that the
//! test fills as it builds. `FORKPOOL_CANVAS_CHAOS_SEED` replays a seed.
//! This file counts process-wide resources: it holds one test.

mod common;

use common::{children_of, monotonic_ns, wait_until};
use forkpool::{JobError, JobHandle, Pool, RetryOn, RetryPolicy, Workflow};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIME_LIMIT: Duration = Duration::from_millis(600);
const MAX_STEPS: usize = 1 << 16;

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Ok = 0,
    Slow = 1,
    Panic = 2,
    Abort = 3,
    Hang = 4,
    /// Panics on its first attempt; its job retries panics once.
    Flaky = 5,
}

/// Per-step tables, in memory shared with every worker.
struct Tables {
    kind: &'static [AtomicU8],
    next: &'static [AtomicU32],
    owner: &'static [AtomicU32],
    runs: &'static [AtomicU32],
    started: &'static [AtomicU64],
    finished: &'static [AtomicU64],
    pid: &'static [AtomicU32],
}

static TABLES: AtomicPtr<Tables> = AtomicPtr::new(std::ptr::null_mut());

fn shared<T>(n: usize) -> &'static [T] {
    // SAFETY: a fresh anonymous shared mapping (checked), zeroed, of `n`
    // atomics, never unmapped.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            n * std::mem::size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        std::slice::from_raw_parts(map.cast::<T>(), n)
    }
}

fn tables() -> &'static Tables {
    let p = TABLES.load(Ordering::Acquire);
    assert!(!p.is_null(), "tables are mapped before the pool");
    // SAFETY: set once, to a leaked Box, before any pool is built.
    unsafe { &*p }
}

/// What flows between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct V {
    acc: u64,
    /// The step this value goes to.
    next: u32,
    /// The chord body the member this value ends goes to.
    owner: u32,
}

fn mix(acc: u64, me: u32) -> u64 {
    acc.wrapping_mul(31).wrapping_add(u64::from(me))
}

/// Runs step `me`: counts the run, then does what its kind says.
fn act(me: u32) {
    let t = tables();
    let i = me as usize;
    t.started[i].store(monotonic_ns(), Ordering::SeqCst);
    t.pid[i].store(std::process::id(), Ordering::SeqCst);
    let before = t.runs[i].fetch_add(1, Ordering::SeqCst);
    match t.kind[i].load(Ordering::SeqCst) {
        1 => std::thread::sleep(Duration::from_millis(15)),
        2 => panic!("step {me} panics"),
        3 => std::process::abort(),
        4 => loop {
            std::thread::sleep(Duration::from_secs(60));
        },
        5 if before == 0 => panic!("step {me} fails once"),
        _ => {}
    }
}

fn output(acc: u64, me: u32) -> V {
    let t = tables();
    t.finished[me as usize].store(monotonic_ns(), Ordering::SeqCst);
    V {
        acc: mix(acc, me),
        next: t.next[me as usize].load(Ordering::SeqCst),
        owner: t.owner[me as usize].load(Ordering::SeqCst),
    }
}

fn step(v: V) -> V {
    act(v.next);
    output(v.acc, v.next)
}

fn body(vs: Vec<V>) -> V {
    let me = vs.first().map_or(0, |v| v.owner);
    act(me);
    let acc = vs.iter().fold(0u64, |a, v| a.wrapping_add(v.acc));
    output(acc, me)
}

fn body_all(rs: Vec<Result<V, JobError>>) -> V {
    // Its last member never fails by itself; if a kill from outside made
    // every member fail, id 0 stands for the body that cannot tell who it
    // is (its workflow is then touched by the kill anyway).
    let me = rs
        .iter()
        .find_map(|r| r.as_ref().ok())
        .map_or(0, |v| v.owner);
    act(me);
    let acc = rs.iter().fold(0u64, |a, r| match r {
        Ok(v) => a.wrapping_add(v.acc),
        Err(_) => a.wrapping_add(7),
    });
    output(acc, me)
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

/// A workflow's plan: what the test builds, and predicts from.
#[derive(Debug)]
enum Plan {
    Step(u32),
    /// The first part is bound; a step after it takes the result, a chord
    /// after it ignores it.
    Chain(Vec<Plan>),
    Chord {
        members: Vec<Plan>,
        body: u32,
        collect_all: bool,
    },
}

/// An outcome, as far as the test predicts it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Ok(u64),
    Panicked,
    Crashed,
    TimedOut,
    Cancelled,
    StepFailed(usize, Box<Shape>),
    MembersFailed(Vec<(usize, Shape)>),
    Other(String),
}

fn shape(r: &Result<V, JobError>) -> Shape {
    match r {
        Ok(v) => Shape::Ok(v.acc),
        Err(e) => error_shape(e),
    }
}

fn error_shape(e: &JobError) -> Shape {
    match e {
        JobError::Panicked { .. } => Shape::Panicked,
        JobError::Crashed { .. } => Shape::Crashed,
        JobError::TimedOut { .. } => Shape::TimedOut,
        JobError::Cancelled => Shape::Cancelled,
        JobError::StepFailed { step, error } => {
            Shape::StepFailed(*step, Box::new(error_shape(error)))
        }
        JobError::MembersFailed(f) => Shape::MembersFailed(
            f.failed()
                .iter()
                .map(|(i, e)| (*i, error_shape(e)))
                .collect(),
        ),
        other => Shape::Other(other.to_string()),
    }
}

struct Builder<'a> {
    rng: Rng,
    next_id: u32,
    hangs: u32,
    pool: &'a Pool,
}

impl Builder<'_> {
    fn id(&mut self, kind: Kind) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        assert!((id as usize) < MAX_STEPS);
        tables().kind[id as usize].store(kind as u8, Ordering::SeqCst);
        id
    }

    fn kind(&mut self) -> Kind {
        match self.rng.below(100) {
            0..70 => Kind::Ok,
            70..76 => Kind::Slow,
            76..84 => Kind::Panic,
            84..89 => Kind::Abort,
            89..91 if self.hangs < 3 => {
                self.hangs += 1;
                Kind::Hang
            }
            _ => Kind::Flaky,
        }
    }

    /// A random part, `depth` levels of nesting at most, whose result goes
    /// to step `next` and whose member result to body `owner`.
    fn plan(&mut self, depth: u32, next: u32, owner: u32) -> Plan {
        match self.rng.below(10) {
            0..4 if depth > 0 => self.chain(depth, next, owner),
            4..8 if depth > 0 => self.chord(depth, next, owner),
            _ => {
                let kind = self.kind();
                let id = self.id(kind);
                self.link(id, next, owner);
                Plan::Step(id)
            }
        }
    }

    fn link(&self, id: u32, next: u32, owner: u32) {
        tables().next[id as usize].store(next, Ordering::SeqCst);
        tables().owner[id as usize].store(owner, Ordering::SeqCst);
    }

    fn chain(&mut self, depth: u32, next: u32, owner: u32) -> Plan {
        let n = 2 + self.rng.below(4) as usize;
        // Decide the parts back to front, so each knows who follows it.
        let mut parts = Vec::with_capacity(n);
        let (mut after, mut after_owner) = (next, owner);
        for i in (0..n).rev() {
            // Mostly steps (the first one bound, the others taking the
            // result before them); now and then a chord, which ignores it.
            let odds = if i > 0 { 5 } else { 3 };
            let part = if self.rng.below(odds) > 0 {
                let kind = self.kind();
                let id = self.id(kind);
                self.link(id, after, after_owner);
                Plan::Step(id)
            } else {
                self.chord(depth - 1, after, after_owner)
            };
            // Only the last part's result leaves the chain.
            (after, after_owner) = (first_id(&part), 0);
            parts.push(part);
        }
        parts.reverse();
        Plan::Chain(parts)
    }

    fn chord(&mut self, depth: u32, next: u32, owner: u32) -> Plan {
        let kind = if self.rng.below(10) == 0 {
            Kind::Panic
        } else {
            Kind::Ok
        };
        let body = self.id(kind);
        self.link(body, next, owner);
        let n = 1 + self.rng.below(12);
        let collect_all = self.rng.below(3) == 0;
        let mut members: Vec<Plan> = (0..n)
            .map(|_| {
                if depth > 0 && self.rng.below(4) == 0 {
                    self.plan(depth - 1, 0, body)
                } else {
                    let kind = self.kind();
                    let id = self.id(kind);
                    self.link(id, 0, body);
                    Plan::Step(id)
                }
            })
            .collect();
        if collect_all {
            // A member that succeeds, so that the body knows its id.
            let id = self.id(Kind::Ok);
            self.link(id, 0, body);
            members.push(Plan::Step(id));
        }
        Plan::Chord {
            members,
            body,
            collect_all,
        }
    }

    fn job(&self, id: u32) -> forkpool::Job<V, V> {
        let job = self.pool.job(step);
        if tables().kind[id as usize].load(Ordering::SeqCst) == Kind::Flaky as u8 {
            job.retry(RetryPolicy::new(1).on(RetryOn::PANICKED))
        } else {
            job
        }
    }

    /// The workflow of `plan`.
    fn build(&self, plan: &Plan) -> Workflow<V> {
        match plan {
            &Plan::Step(id) => self
                .job(id)
                .sig(V {
                    acc: u64::from(id),
                    next: id,
                    owner: 0,
                })
                .into(),
            Plan::Chain(parts) => {
                let mut wf = self.build(&parts[0]);
                for part in &parts[1..] {
                    wf = match part {
                        &Plan::Step(id) => wf.then(self.job(id)),
                        chord => wf.then(self.build(chord)),
                    };
                }
                wf
            }
            Plan::Chord {
                members,
                collect_all,
                ..
            } => {
                let group = self.pool.group(members.iter().map(|m| self.build(m)));
                if *collect_all {
                    group.collect_all().chord(self.pool.job(body_all))
                } else {
                    group.chord(self.pool.job(body))
                }
            }
        }
    }
}

fn first_id(plan: &Plan) -> u32 {
    match plan {
        Plan::Step(id) => *id,
        Plan::Chain(parts) => first_id(&parts[0]),
        Plan::Chord { body, .. } => *body,
    }
}

/// What a part gives, from its plan; `input`: the result it receives.
fn predict(plan: &Plan, input: Option<u64>) -> Shape {
    let kind = |id: u32| tables().kind[id as usize].load(Ordering::SeqCst);
    let run = |id: u32, acc: u64| match kind(id) {
        2 => Shape::Panicked,
        3 => Shape::Crashed,
        4 => Shape::TimedOut,
        _ => Shape::Ok(mix(acc, id)),
    };
    match plan {
        &Plan::Step(id) => run(id, input.unwrap_or(u64::from(id))),
        Plan::Chain(parts) => {
            let mut acc = None;
            for (i, part) in parts.iter().enumerate() {
                let input = match part {
                    Plan::Step(_) => acc,
                    _ => None,
                };
                match predict(part, input) {
                    Shape::Ok(v) => acc = Some(v),
                    failed => return Shape::StepFailed(i, Box::new(failed)),
                }
            }
            Shape::Ok(acc.expect("chains have parts"))
        }
        Plan::Chord {
            members,
            body,
            collect_all,
        } => {
            let results: Vec<Shape> = members.iter().map(|m| predict(m, None)).collect();
            let mut acc = 0u64;
            let mut failed = Vec::new();
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Shape::Ok(v) => acc = acc.wrapping_add(v),
                    e if *collect_all => {
                        let _ = e;
                        acc = acc.wrapping_add(7);
                    }
                    e => failed.push((i, e)),
                }
            }
            if !failed.is_empty() {
                return Shape::MembersFailed(failed);
            }
            run(*body, acc)
        }
    }
}

/// Every step of a plan, and whether it is a single job (a chain's step
/// after the first, a body) rather than a member that may travel in a
/// batch.
fn steps(plan: &Plan, out: &mut Vec<(u32, bool)>, single: bool) {
    match plan {
        &Plan::Step(id) => out.push((id, single)),
        Plan::Chain(parts) => {
            for (i, p) in parts.iter().enumerate() {
                steps(p, out, single || i > 0);
            }
        }
        Plan::Chord { members, body, .. } => {
            out.push((*body, true));
            for m in members {
                steps(m, out, false);
            }
        }
    }
}

struct Run {
    plan: Plan,
    handle: Option<JobHandle<V>>,
    /// Callbacks run for it.
    told: Arc<AtomicU32>,
    /// `cancel` returned true, at this instant.
    cancelled_at: Option<u64>,
}

fn run_chaos(workflows: usize, seed: u64) {
    let t = Box::new(Tables {
        kind: shared(MAX_STEPS),
        next: shared(MAX_STEPS),
        owner: shared(MAX_STEPS),
        runs: shared(MAX_STEPS),
        started: shared(MAX_STEPS),
        finished: shared(MAX_STEPS),
        pid: shared(MAX_STEPS),
    });
    TABLES.store(Box::into_raw(t), Ordering::Release);
    let me = std::process::id() as i32;
    let workers = 3;
    let pool = Pool::builder()
        .workers(workers)
        .time_limit(TIME_LIMIT)
        .build()
        .unwrap();
    let mut b = Builder {
        rng: Rng(seed),
        next_id: 0,
        hangs: 0,
        pool: &pool,
    };

    // Kills from outside: a random worker every 30-100 ms.
    let finished = Arc::new(AtomicBool::new(false));
    // (pid, when) of every kill.
    let killed = Arc::new(Mutex::new(Vec::<(u32, u64)>::new()));
    let killer = {
        let (finished, killed) = (finished.clone(), killed.clone());
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(30 + rng.below(70)));
                let all: Vec<i32> = children_of(me).into_iter().flat_map(children_of).collect();
                if all.is_empty() {
                    continue;
                }
                let w = all[rng.below(all.len() as u64) as usize];
                // Recorded first: a step it runs is then known to be touched.
                killed.lock().unwrap().push((w as u32, monotonic_ns()));
                // SAFETY: a worker of this test's only pool (the test holds
                // no other children), which may already be gone.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
        })
    };

    // Submit in waves; cancel some of each wave a moment after.
    let mut runs: Vec<Run> = Vec::new();
    while runs.len() < workflows {
        let wave = runs.len();
        for _ in 0..10.min(workflows - runs.len()) {
            let plan = b.plan(3, 0, 0);
            let told = Arc::new(AtomicU32::new(0));
            let (t1, t2) = (told.clone(), told.clone());
            let wf = b
                .build(&plan)
                .on_success(move |_| {
                    t1.fetch_add(1, Ordering::SeqCst);
                })
                .on_error(move |_| {
                    t2.fetch_add(1, Ordering::SeqCst);
                });
            runs.push(Run {
                plan,
                handle: Some(wf.submit()),
                told,
                cancelled_at: None,
            });
        }
        std::thread::sleep(Duration::from_millis(b.rng.below(40)));
        for r in &mut runs[wave..] {
            if b.rng.below(6) == 0 && r.handle.as_ref().unwrap().cancel() {
                r.cancelled_at = Some(monotonic_ns());
            }
        }
    }
    let outcomes: Vec<Result<V, JobError>> = runs
        .iter_mut()
        .map(|r| r.handle.take().unwrap().get())
        .collect();
    finished.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let killed = killed.lock().unwrap().clone();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = pool.stats();
            s.submitted == s.completed + s.failed + s.cancelled
        }),
        "stats do not add up: {:?}",
        pool.stats()
    );
    let s = pool.stats();
    pool.clone().join().unwrap(); // waits for the callbacks

    let t = tables();
    let (mut exact, mut touched, mut cancelled) = (0, 0, 0);
    for (r, got) in runs.iter().zip(&outcomes) {
        assert_eq!(
            r.told.load(Ordering::SeqCst),
            1,
            "callbacks of {:?}: {got:?}",
            r.plan
        );
        let mut ids = Vec::new();
        steps(&r.plan, &mut ids, false);
        for &(id, single) in &ids {
            let runs = t.runs[id as usize].load(Ordering::SeqCst);
            let flaky = t.kind[id as usize].load(Ordering::SeqCst) == Kind::Flaky as u8;
            assert!(runs <= 1 + u32::from(flaky), "step {id} ran {runs} times");
            if let Some(at) = r.cancelled_at
                && single
            {
                let started = t.started[id as usize].load(Ordering::SeqCst);
                assert!(
                    started == 0 || started < at,
                    "step {id} started {} µs after its workflow was cancelled",
                    (started - at) / 1000
                );
            }
        }
        if r.cancelled_at.is_some() {
            assert_eq!(got, &Err(JobError::Cancelled), "{:?}", r.plan);
            cancelled += 1;
            continue;
        }
        // A step a kill may have hit: it ran on the worker killed, which
        // died while it ran (or just after: the result may not have been
        // committed yet).
        let hit = ids.iter().any(|&(id, _)| {
            let i = id as usize;
            let pid = t.pid[i].load(Ordering::SeqCst);
            let started = t.started[i].load(Ordering::SeqCst);
            let finished = t.finished[i].load(Ordering::SeqCst);
            let running_until = if finished >= started {
                finished + 50_000_000
            } else {
                u64::MAX
            };
            t.runs[i].load(Ordering::SeqCst) > 0
                && killed
                    .iter()
                    .any(|&(p, at)| p == pid && at + 1_000_000 >= started && at <= running_until)
        });
        if hit {
            touched += 1;
            assert_ne!(got, &Err(JobError::Cancelled), "resolved cancelled unasked");
            continue;
        }
        assert_eq!(shape(got), predict(&r.plan, None), "{:?}", r.plan);
        exact += 1;
    }
    let ran: u64 = t
        .runs
        .iter()
        .map(|r| u64::from(r.load(Ordering::SeqCst)))
        .sum();
    eprintln!(
        "canvas chaos: {workflows} workflows, {} steps; {exact} as predicted, {touched} touched by \
         {} kills, {cancelled} cancelled; stats {s:?}",
        b.next_id,
        killed.len()
    );
    // Every job that completed or failed ran, but for those that could not
    // start (none here); a cancelled one may have been running.
    // (A kill can land between a job's start and its first line.)
    let kills = killed.len() as u64;
    assert!(s.completed + s.failed <= ran + kills, "{ran} runs: {s:?}");
    assert!(
        ran <= s.completed + s.failed + s.cancelled,
        "{ran} runs: {s:?}"
    );
    assert!(
        exact > workflows / 3,
        "too few workflows left to check exactly"
    );
    assert!(cancelled > 0);
}

#[test]
fn a_random_mix_of_nested_workflows_under_faults_always_resolves() {
    let seed = std::env::var("FORKPOOL_CANVAS_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xc0ff_ee00_5eed);
    run_chaos(300, seed);
}
