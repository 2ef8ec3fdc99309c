//! Fork hygiene: every descriptor the pool opens — in the caller (eventfd,
//! epoll, the fork server's socket, pidfds, doorbell pipes), in the fork
//! server and in each worker — is close-on-exec, so a program that anyone
//! starts (the caller, or a job) inherits none of them; and dropping the
//! pool leaves no child, zombie or descriptor. One test: it looks at every
//! descriptor of the process.

mod common;

use common::{children_of, descendants, open_fds, wait_until, worker_pid};
use forkpool::Pool;
use std::process::{Command, Stdio};
use std::time::Duration;

const O_CLOEXEC: u32 = 0o2000000;

/// Descriptor numbers of a process.
fn fd_numbers(pid: &str) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    v.sort();
    v
}

/// Whether descriptor `fd` of process `pid` is close-on-exec (None if gone).
fn cloexec(pid: &str, fd: u32) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    Some(u32::from_str_radix(flags, 8).unwrap() & O_CLOEXEC != 0)
}

fn target(pid: &str, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Starts `sleep` with null stdio and returns the descriptors it holds.
fn fds_of_a_started_program() -> Vec<u32> {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sleep");
    let pid = child.id().to_string();
    // Wait for the program to be asleep: right after exec the dynamic
    // loader briefly holds descriptors of its own (the libraries it maps).
    let execed = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            && std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                .is_ok_and(|w| w.contains("nanosleep"))
    });
    let fds = fd_numbers(&pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(execed, "sleep never started");
    fds
}

fn job_starts_a_program(_: ()) -> Vec<u32> {
    fds_of_a_started_program()
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn every_pool_descriptor_is_close_on_exec_and_none_outlives_the_pool() {
    let me = std::process::id();
    Pool::new(1).unwrap().join().unwrap(); // warm up lazily opened descriptors
    let me_s = me.to_string();
    let snapshot = || -> Vec<(u32, String)> {
        fd_numbers(&me_s)
            .into_iter()
            .map(|fd| (fd, target(&me_s, fd)))
            // The directory being listed, already closed when read.
            .filter(|(_, t)| !t.is_empty() && !t.starts_with("/proc/"))
            .collect()
    };
    let before = snapshot();
    let fds_before = open_fds();
    // What a started program inherits from this test process's own
    // environment (a harness may pass descriptors down), pool or not.
    let inherited = fds_of_a_started_program();

    let pool = Pool::new(2).unwrap();
    let busy = pool.submit(nap_ms, 1500);
    let workers: Vec<u32> = pool
        .map(
            |ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                std::process::id()
            },
            vec![100; 8],
        )
        .unwrap();
    assert!(pool.stats().live_workers == 2);

    // The caller: every new descriptor is close-on-exec.
    let (new, kinds): (Vec<u32>, Vec<String>) = snapshot()
        .into_iter()
        .filter(|f| !before.contains(f))
        .unzip();
    for want in [
        "anon_inode:[eventfd]",
        "anon_inode:[eventpoll]",
        "socket:",
        "pipe:",
        "anon_inode:[pidfd]",
    ] {
        assert!(
            kinds.iter().any(|k| k.starts_with(want)),
            "no {want} among {kinds:?}"
        );
    }
    for (&fd, kind) in new.iter().zip(&kinds) {
        assert_eq!(
            cloexec(&me_s, fd),
            Some(true),
            "caller fd {fd} ({kind}) is inherited by exec"
        );
    }
    // A program the caller starts inherits nothing of the pool.
    assert_eq!(fds_of_a_started_program(), inherited);

    // The fork server: its socket and its pidfds.
    let zygotes = children_of(me as i32);
    assert_eq!(zygotes.len(), 1, "{zygotes:?}");
    let z = zygotes[0].to_string();
    let zfds: Vec<u32> = fd_numbers(&z).into_iter().filter(|&fd| fd > 2).collect();
    assert!(!zfds.is_empty());
    for fd in zfds {
        assert_eq!(
            cloexec(&z, fd),
            Some(true),
            "fork server fd {fd} ({})",
            target(&z, fd)
        );
    }

    // Each worker: its two doorbell ends, close-on-exec; a program a job
    // starts holds only its stdio.
    for w in workers.iter().map(u32::to_string) {
        assert_eq!(fd_numbers(&w), [0, 1, 2, 3, 4], "worker {w}");
        for fd in [3, 4] {
            assert_eq!(cloexec(&w, fd), Some(true), "worker {w} fd {fd}");
        }
    }
    assert_eq!(pool.apply(job_starts_a_program, ()), Ok(vec![0, 1, 2]));
    let _ = pool.apply(worker_pid, ());
    assert_eq!(busy.get(), Ok(1500));

    // Gone with the pool: no child, no zombie, no descriptor.
    drop(pool);
    assert!(
        descendants(me as i32).is_empty(),
        "{:?}",
        descendants(me as i32)
    );
    assert_eq!(open_fds(), fds_before);
}
