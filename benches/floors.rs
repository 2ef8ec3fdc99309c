//! What this machine charges for the pieces forkpool is made of, with no
//! forkpool in the way: the floors under the start-up and payload figures
//! of `benches/compare/run` (issue 15).
//!
//! `cargo bench --bench floors` (`-- rounds=N`, 5 by default) runs, in
//! interleaved rounds:
//!
//! - **fork**: `fork()` of this process, the child `_exit`s, `waitpid`;
//! - **fork-server shape**: the least a pool built like forkpool does to
//!   start two workers, run one job and shut down — a thread beside the
//!   caller, a fork server forked from the caller that forks two workers
//!   waiting on a pipe, one byte to a worker and one back, the workers
//!   told to exit by the pipe's end, everything reaped — with no rings,
//!   protocol, signal reset or bookkeeping;
//! - **direct shape**: the same with the caller forking both workers
//!   itself, as Python's `multiprocessing.Pool` does (no fork server);
//! - **fresh 4 KiB pages**: 64 MiB of fresh anonymous memory written once
//!   per page, per MiB;
//! - **fresh huge pages**: the same on a 2 MiB-aligned range advised with
//!   `MADV_HUGEPAGE` (the faults counted say whether the kernel gave huge
//!   pages);
//! - **copy**: one `memcpy` of 1 MiB into a buffer already faulted in, per
//!   MiB: the price of one hop of a payload.
//!
//! It prints a Markdown table of medians with their spread, then the
//! budget of the 1 MiB payload `map` (200 results, each fresh memory):
//! what its fresh pages cost, and how much of the CPU time that 10× an mp
//! rate (`-- mp_gbps=R`, 0.27 by default) allows on two CPUs is left for
//! its six copy hops (encode, into the ring, the worker's decode and
//! encode, out of the ring, decode) and everything else.

use std::time::Instant;

/// Iterations of each process shape per round.
const SHAPES_PER_ROUND: usize = 40;

/// Fresh memory per round, each page kind.
const REGION: usize = 64 << 20;

const HUGE: usize = 2 << 20;

fn main() {
    let arg = |name: &str| {
        std::env::args().find_map(|a| a.strip_prefix(name).and_then(|v| v.parse::<f64>().ok()))
    };
    let rounds = arg("rounds=").map_or(5, |r| r as usize);
    let mp_gbps = arg("mp_gbps=").unwrap_or(0.27);
    let names = [
        "fork + exit + reap (µs)",
        "fork-server shape: start 2, one job, shut down (µs)",
        "direct shape, no fork server (µs)",
        "fresh 4 KiB pages (µs per MiB)",
        "fresh huge pages (µs per MiB)",
        "copy (µs per MiB)",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut huge_faults = Vec::new();
    for round in 0..rounds {
        // Rotate the order between rounds, so slow drifts hit all alike.
        for k in 0..names.len() {
            let which = (k + round) % names.len();
            match which {
                0 => samples[0].extend((0..SHAPES_PER_ROUND).map(|_| fork_reap())),
                1 => samples[1].extend((0..SHAPES_PER_ROUND).map(|_| shape(true))),
                2 => samples[2].extend((0..SHAPES_PER_ROUND).map(|_| shape(false))),
                3 => samples[3].push(fresh_pages(false).0),
                4 => {
                    let (us, faults) = fresh_pages(true);
                    samples[4].push(us);
                    huge_faults.push(faults);
                }
                _ => samples[5].push(copy_per_mib()),
            }
        }
    }
    println!("| floor | median | spread |");
    println!("| --- | --- | --- |");
    let mut medians = Vec::new();
    for (name, v) in names.iter().zip(&mut samples) {
        v.sort_by(f64::total_cmp);
        let m = v[v.len() / 2];
        medians.push(m);
        println!("| {name} | {m:.1} | {:.1}..{:.1} |", v[0], v[v.len() - 1]);
    }
    huge_faults.sort_unstable();
    println!(
        "\nFaults per 64 MiB advised for huge pages: {:?} (16,384 means none were given).",
        huge_faults
    );
    // The payload workload: 200 results of 1 MiB, each fresh memory.
    let mib = 200.0;
    let goal_ms = mib * (1 << 20) as f64 / (10.0 * mp_gbps * 1e9) * 1e3;
    let pages_ms = mib * medians[3] / 1e3;
    let copies_ms = mib * medians[5] / 1e3;
    println!(
        "\n200 MiB of fresh results: {pages_ms:.0} ms of CPU in 4 KiB pages, {:.0} ms in huge \
         pages; one copy hop of 200 MiB, cold: {copies_ms:.0} ms.\n\
         10x an mp payload rate of {mp_gbps} GB/s (`-- mp_gbps=R`) is {goal_ms:.0} ms for the \
         map, {:.0} ms of CPU on 2 CPUs: the fresh 4 KiB pages take {:.0}% of it, leaving \
         {:.0} ms for six copy hops and everything else.",
        mib * medians[4] / 1e3,
        2.0 * goal_ms,
        100.0 * pages_ms / (2.0 * goal_ms),
        2.0 * goal_ms - pages_ms,
    );
}

/// Microseconds for one fork of this process, the child's exit and its reaping.
fn fork_reap() -> f64 {
    let t = Instant::now();
    // SAFETY: the child calls only `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe; ends the child without running anything.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed");
    reap(pid);
    t.elapsed().as_secs_f64() * 1e6
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child, status into a local.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR),
            "waitpid failed"
        );
    }
}

fn pipe() -> [i32; 2] {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    fds
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this function's caller owns.
    unsafe { libc::close(fd) };
}

/// A worker: answers each byte on `job` with a byte on `answer` until
/// `job`'s end, then exits. Only system calls: it runs in a forked child.
fn worker(job: i32, answer: i32) -> ! {
    let mut b = [0u8; 1];
    // SAFETY: reads and writes of a local byte on our own descriptors,
    // then `_exit`; all async-signal-safe.
    unsafe {
        while libc::read(job, b.as_mut_ptr().cast(), 1) == 1 {
            libc::write(answer, b.as_ptr().cast(), 1);
        }
        libc::_exit(0)
    }
}

/// Forks a worker; returns its pid.
fn fork_worker(job: [i32; 2], answer: [i32; 2]) -> libc::pid_t {
    // SAFETY: the child runs only `worker`, which makes system calls only.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        close(job[1]);
        worker(job[0], answer[1]);
    }
    assert!(pid > 0, "fork failed");
    pid
}

/// Microseconds to start two workers (through a fork server or not), run
/// one job and shut everything down, with a thread beside the caller as a
/// pool's supervisor.
fn shape(fork_server: bool) -> f64 {
    let t = Instant::now();
    let (job, answer, thread_pipe) = (pipe(), pipe(), pipe());
    let mut reaped = Vec::new();
    if fork_server {
        // SAFETY: the child forks two workers, waits for them and `_exit`s:
        // system calls only.
        let server = unsafe { libc::fork() };
        if server == 0 {
            close(job[1]);
            let kids = [fork_worker(job, answer), fork_worker(job, answer)];
            kids.into_iter().for_each(reap);
            // SAFETY: async-signal-safe; nothing else to run.
            unsafe { libc::_exit(0) };
        }
        assert!(server > 0, "fork failed");
        reaped.push(server);
    } else {
        reaped.push(fork_worker(job, answer));
        reaped.push(fork_worker(job, answer));
    }
    let r = thread_pipe[0];
    let supervisor = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        // SAFETY: a read into a local byte; returns at the pipe's end.
        unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
    });
    close(job[0]);
    close(answer[1]);
    let mut b = [7u8; 1];
    // SAFETY: a write and a read of a local byte on our own pipes.
    unsafe {
        assert_eq!(libc::write(job[1], b.as_ptr().cast(), 1), 1);
        assert_eq!(libc::read(answer[0], b.as_mut_ptr().cast(), 1), 1);
    }
    close(job[1]);
    reaped.into_iter().for_each(reap);
    close(thread_pipe[1]);
    supervisor
        .join()
        .expect("the thread ends at its pipe's end");
    close(answer[0]);
    close(thread_pipe[0]);
    t.elapsed().as_secs_f64() * 1e6
}

fn minor_faults() -> i64 {
    // SAFETY: an all-zero rusage is a valid value of this C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into a local struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt
}

/// Microseconds per MiB to fault in `REGION` of fresh memory, one write per
/// 4 KiB, and the faults it took; `huge` advises huge pages first.
fn fresh_pages(huge: bool) -> (f64, i64) {
    let len = REGION + HUGE;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap failed");
    let start = (map as usize).next_multiple_of(HUGE);
    if huge {
        // SAFETY: advice on our own mapping; it changes the page size only.
        unsafe { libc::madvise(start as *mut libc::c_void, REGION, libc::MADV_HUGEPAGE) };
    }
    let faults = minor_faults();
    let t = Instant::now();
    for offset in (0..REGION).step_by(4096) {
        // SAFETY: inside our mapping, which is readable and writable.
        unsafe { std::ptr::write_volatile((start + offset) as *mut u8, 1) };
    }
    let us = t.elapsed().as_secs_f64() * 1e6;
    let faults = minor_faults() - faults;
    // SAFETY: unmapping what we mapped; nothing refers to it any more.
    unsafe { libc::munmap(map, len) };
    (us / (REGION >> 20) as f64, faults)
}

/// Microseconds per MiB for copying 1 MiB buffers into others already
/// faulted in, through more buffers than the caches hold (as a payload's
/// bytes are when they arrive).
fn copy_per_mib() -> f64 {
    const BUFFERS: usize = 64;
    let from: Vec<Vec<u8>> = (1..=BUFFERS).map(|i| vec![i as u8; 1 << 20]).collect();
    // Not zeros: `vec![0; n]` maps pages lazily, and the copy would fault.
    let mut to: Vec<Vec<u8>> = (0..BUFFERS).map(|_| vec![0xa5u8; 1 << 20]).collect();
    let t = Instant::now();
    for (dst, src) in to.iter_mut().zip(&from) {
        dst.copy_from_slice(std::hint::black_box(src));
        std::hint::black_box(&mut *dst);
    }
    t.elapsed().as_secs_f64() * 1e6 / BUFFERS as f64
}
