//! Helpers shared by the integration tests: process and descriptor
//! inspection through /proc, and polling with generous deadlines (the tests
//! run on loaded 2-core machines).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `(state, ppid)` of a process, from /proc/<pid>/stat; None if it is gone.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a running (not zombie) process.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Direct children of `pid`, zombies included.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>()
            && stat(p).is_some_and(|(_, ppid)| ppid == pid)
        {
            out.push(p);
        }
    }
    out
}

/// All descendants of `pid`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Descriptors open in this process.
pub fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    fds.sort();
    fds
}

/// Descriptors open in process `pid`, as their link targets.
pub fn fds_of(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// The number after `field` (such as `"VmRSS:"`, in KiB, or
/// `"voluntary_ctxt_switches:"`) in `/proc/<pid>/status`; `pid` may be
/// `"self"`.
pub fn status_number(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The pid of the process running a job.
pub fn worker_pid(_: ()) -> u32 {
    std::process::id()
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("forkpool-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Counters in memory shared with every process forked after they are
/// first used: a job bumps one, the test reads it. Call `counters()`
/// before building a pool (its workers are forked from the process as it
/// is then).
pub fn counters() -> &'static [std::sync::atomic::AtomicU64] {
    use std::sync::atomic::AtomicU64;
    const N: usize = 1 << 16;
    static MAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let base = *MAP.get_or_init(|| {
        // SAFETY: a fresh anonymous shared mapping, checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                N * std::mem::size_of::<AtomicU64>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        map as usize
    });
    // SAFETY: N zeroed counters, mapped for the life of the process.
    unsafe { std::slice::from_raw_parts(base as *const AtomicU64, N) }
}

/// `n` counters of `counters()` no other caller gets: the index of the
/// first.
pub fn fresh_counters(n: usize) -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let first = NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    assert!(first + n <= counters().len(), "out of shared counters");
    first
}

/// Nanoseconds on the monotonic clock, the same in every process.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub mod logs;
#[cfg(feature = "redis")]
pub mod server;

/// One HTTP exchange on a fresh loopback connection: `request` as is (it
/// should say `Connection: close`), then the answer's status, headers
/// (lowercase names) and body. Bounded: connecting and writing 10 s at
/// most, reading `read_for`.
pub fn http_exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
    read_for: Duration,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    conn.set_read_timeout(Some(read_for)).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (status, headers, body.to_string())
}
