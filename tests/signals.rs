//! Signals: workers ignore SIGINT (Ctrl-C is the caller's to handle), a
//! SIGTERM kills a worker like any crash, the quickstart's Ctrl-C handler
//! exits 130 with nothing left behind and no job half-reported, and each
//! worker holds only its own descriptors.

mod common;

use common::{fds_of, wait_until, worker_pid};
use forkpool::{JobError, Pool};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn workers_ignore_sigint() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(worker_pid, ()).unwrap();
    let long = pool.submit(nap_ms, 500);
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling our own worker.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    assert_eq!(long.get(), Ok(500), "the running job was not interrupted");
    assert_eq!(
        pool.apply(worker_pid, ()),
        Ok(pid),
        "the same worker serves on"
    );
}

#[test]
fn sigterm_to_a_worker_is_a_crash() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(worker_pid, ()).unwrap();
    let long = pool.submit(nap_ms, 60_000);
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own worker.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(
        long.get(),
        Err(JobError::Crashed {
            signal: Some(libc::SIGTERM),
            exit_code: None
        })
    );
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .live_workers
        == 1));
    assert_ne!(pool.apply(worker_pid, ()), Ok(pid));
}

#[test]
fn a_worker_holds_only_its_own_pipe_ends() {
    let pool = Pool::new(3).unwrap();
    fn pid_after(ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }
    let mut pids: Vec<u32> = pool.map(pid_after, vec![100; 12]).unwrap();
    pids.sort();
    pids.dedup();
    assert!(pids.len() >= 2, "{pids:?}");
    for pid in pids {
        let fds = fds_of(pid as i32);
        let numbers: Vec<&str> = fds.iter().map(|f| f.split(' ').next().unwrap()).collect();
        assert_eq!(
            numbers,
            ["0", "1", "2", "3", "4"],
            "worker {pid} holds {fds:?}"
        );
        assert!(
            fds[3].contains("pipe:") && fds[4].contains("pipe:"),
            "{fds:?}"
        );
    }
}

fn quickstart() -> std::path::PathBuf {
    // target/<profile>/deps/signals-<hash> -> target/<profile>/examples/quickstart
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join("quickstart");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    path
}

#[test]
fn ctrl_c_in_the_quickstart_exits_130_and_leaves_no_process() {
    let mut child = Command::new(quickstart())
        .arg("--long")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let group = child.id() as i32;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("quickstart ended early").unwrap();
        if line.contains("long map running") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "quickstart never reached its long map"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // As a terminal does: SIGINT to the whole process group.
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-group, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "quickstart did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    // No job half-reported: after Ctrl-C every job the program submitted
    // resolved exactly once (completed, failed or cancelled), the long map
    // was cut short, and the report line is whole.
    let report: Vec<String> = lines.map_while(Result::ok).collect();
    let line = report
        .iter()
        .find(|l| l.starts_with("interrupted: "))
        .unwrap_or_else(|| panic!("no report after Ctrl-C: {report:?}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    let [submitted, completed, failed, cancelled] = n[..] else {
        panic!("malformed report: {line:?}");
    };
    assert_eq!(submitted, completed + failed + cancelled, "{line}");
    assert!(
        submitted > 1_000_000 + 100_000 / 2,
        "the long map was submitted: {line}"
    );
    assert!(cancelled > 0, "the long map was cut short: {line}");
    let gone = wait_until(Duration::from_secs(2), || {
        // SAFETY: probing a process group with signal 0.
        let r = unsafe { libc::kill(-group, 0) };
        r != 0
    });
    assert!(gone, "processes of the quickstart's group outlived it");
}
