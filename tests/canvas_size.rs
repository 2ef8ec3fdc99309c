//! A workflow's size in memory grows linearly with its steps — never the
//! blow-up of nesting (Celery PR #10171: a chain of 5 chords of 10 tasks
//! needed a 120 MB message). Measured with a counting allocator, for the
//! built workflow and while it runs; and deep chains and nestings run
//! without recursing per step.

use forkpool::{Pool, Workflow};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, counting sizes on the way.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counter is the process's: the tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn inc(x: u64) -> u64 {
    x + 1
}

fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

/// A chain of `chords` chords of `members` members each, each chord's body
/// followed by a step that takes its sum.
fn chain_of_chords(pool: &Pool, chords: usize, members: u64) -> Workflow<u64> {
    let chord = || {
        pool.group((0..members).map(|i| pool.job(inc).sig(i)))
            .chord(pool.job(sum))
    };
    let mut wf = chord().then(pool.job(inc));
    for _ in 1..chords {
        wf = wf.then(chord()).then(pool.job(inc));
    }
    wf
}

/// Bytes a workflow built by `build` holds.
fn size_of(build: impl Fn() -> Workflow<u64>) -> isize {
    let before = LIVE.load(Ordering::SeqCst);
    let wf = build();
    let size = LIVE.load(Ordering::SeqCst) - before;
    drop(wf);
    size
}

#[test]
fn a_workflow_grows_linearly_with_its_steps() {
    let _turn = turn();
    let pool = Pool::new(2).unwrap();
    let small = size_of(|| chain_of_chords(&pool, 5, 10));
    let big = size_of(|| chain_of_chords(&pool, 500, 10));
    let per_step_small = small as f64 / (5.0 * 12.0);
    let per_step_big = big as f64 / (500.0 * 12.0);
    eprintln!(
        "5 chords of 10: {small} bytes ({per_step_small:.0} a step); \
         500 chords of 10: {big} bytes ({per_step_big:.0} a step)"
    );
    assert!(
        per_step_big < 1.5 * per_step_small && per_step_big > 0.5 * per_step_small,
        "bytes per step: {per_step_small:.0} for 5 chords, {per_step_big:.0} for 500"
    );
    assert!(per_step_small < 2048.0, "{per_step_small:.0} bytes a step");

    // Nesting does not multiply: a group of groups of ... of one signature,
    // 50 deep, costs about 50 steps' worth, not 2^50.
    let nested = size_of(|| {
        let mut wf: Workflow<u64> = pool.job(inc).sig(1).into();
        for _ in 0..50 {
            wf = pool.group([wf]).chord(pool.job(sum));
        }
        wf
    });
    assert!(nested < 50 * 4096, "50 levels of nesting: {nested} bytes");

    // The chain of 5 chords of 10 runs; so does a deep nesting.
    assert_eq!(
        chain_of_chords(&pool, 5, 10).apply().map(|v| v > 0),
        Ok(true)
    );
    let mut wf: Workflow<u64> = pool.job(inc).sig(1).into();
    for _ in 0..50 {
        wf = pool.group([wf]).chord(pool.job(sum));
    }
    assert_eq!(wf.apply(), Ok(2));
}

#[test]
fn a_long_chain_runs_in_memory_linear_in_its_steps() {
    let _turn = turn();
    let pool = Pool::new(2).unwrap();
    let chain = |n: usize| {
        let mut wf = pool.job(inc).sig(0).then(pool.job(inc));
        for _ in 2..n {
            wf = wf.then(pool.job(inc));
        }
        wf
    };
    let small = size_of(|| chain(1_000));
    let big = size_of(|| chain(20_000));
    assert!(
        (big as f64) < 25.0 * small as f64,
        "1,000 steps: {small} bytes; 20,000: {big}"
    );
    // 20,000 steps one after another: no recursion per step, in building,
    // running or dropping it.
    let wf = chain(20_000);
    let before = LIVE.load(Ordering::SeqCst);
    let handle = wf.submit();
    let running = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(handle.get(), Ok(20_000));
    assert!(
        running < 4 * big.max(1 << 20),
        "the running chain holds {running} bytes; the built one {big}"
    );
}
