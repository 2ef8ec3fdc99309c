//! A caller that dies — killed with SIGKILL, or exiting without shutting
//! its pool down — takes its fork server and workers with it; also when its
//! first fork server had died and the workers it forked are orphans.
//!
//! The test runs this same binary as the caller (the ignored helper test
//! below) and becomes a child subreaper, so that the orphaned zygote and
//! workers are re-parented to the test and can be watched and reaped.

mod common;

use common::{alive, descendants, wait_until};
use forkpool::Pool;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The caller process: builds a pool, keeps its workers busy, then either
/// waits to be killed or exits without shutting the pool down.
#[test]
#[ignore = "helper: run by the tests below as a separate process"]
fn caller_process() {
    let Ok(mode) = std::env::var("FORKPOOL_CALLER_MODE") else {
        return;
    };
    let pool = Pool::new(2).unwrap();
    let me = std::process::id() as i32;
    let mut orphans = Vec::new();
    if mode == "orphans" {
        // The fork server dies first: its workers become orphans (not our
        // descendants any more), kept busy, and a new fork server is forked.
        fn pid_after(ms: u64) -> i32 {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::id() as i32
        }
        orphans = pool.map(pid_after, vec![50u64; 8]).unwrap();
        orphans.sort();
        orphans.dedup();
        let zygote = common::children_of(me)[0];
        // SAFETY: killing our own child, the pool's fork server.
        unsafe { libc::kill(zygote, libc::SIGKILL) };
    }
    let busy = pool.clone();
    std::thread::spawn(move || busy.map(nap_ms, vec![60_000u64; 4]));
    assert!(wait_until(Duration::from_secs(30), || {
        let s = pool.stats();
        s.live_workers == 2 && s.fork_server_restarts == u64::from(mode == "orphans")
    }));
    let mut tree = descendants(me);
    tree.extend(orphans);
    println!("READY {tree:?}");
    if mode == "exit" {
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_secs(120));
}

fn run_caller(mode: &str, kill: bool) {
    // SAFETY: prctl with constant arguments on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "caller_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FORKPOOL_CALLER_MODE", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read the caller's READY line on a thread, so a caller that never
    // gets there fails the test instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // libtest may print "test caller_process ... " on the same line.
        let ready = BufReader::new(stdout)
            .lines()
            .find_map(|l| l.ok().filter(|l| l.contains("READY [")));
        let _ = tx.send(ready);
    });
    let Ok(Some(ready)) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{mode}: the caller never got ready");
    };
    let tree: Vec<i32> = ready[ready.find("READY [").unwrap() + 7..]
        .trim_end_matches(']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        tree.len() >= 3,
        "expected a zygote and two workers, found {tree:?}"
    );
    if kill {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(2), || tree.iter().all(|&p| !alive(p)));
    let left: Vec<_> = tree.iter().filter(|&&p| alive(p)).collect();
    // Reap whatever was re-parented to us.
    for &p in &tree {
        // SAFETY: non-blocking wait for a possible child of ours.
        unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
    }
    assert!(
        gone,
        "{mode}: still running 2 s after the caller ended: {left:?}"
    );
}

#[test]
fn a_caller_killed_with_sigkill_takes_its_workers_along() {
    run_caller("kill", true);
}

#[test]
fn a_caller_that_exits_without_joining_takes_its_workers_along() {
    run_caller("exit", false);
}

#[test]
fn a_caller_killed_after_its_fork_server_died_takes_the_orphans_along() {
    // Orphaned workers are init's children (here: this subreaper's) and
    // busy with minute-long jobs; the replacement fork server adopted them.
    run_caller("orphans", true);
}
