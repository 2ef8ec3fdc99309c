//! Hostile workers: a job that writes to the descriptors or the shared
//! memory the worker uses to talk to the supervisor is not believed. The
//! supervisor kills its worker, charges the running job `Crashed`, replaces
//! the worker, and every other job is unaffected.
//!
//! The jobs here know the worker's insides on purpose: fd 4 is a worker's
//! doorbell to the supervisor, and its shared memory is the memfd named
//! `forkpool-worker` (status page first, ring to the supervisor at file
//! offset 4 KiB + ring size).

mod common;

use common::{wait_until, worker_pid};
use forkpool::{JobError, Pool};
use std::time::Duration;

/// The worker's doorbell to the supervisor (`WORKER_BELL_OUT`).
const BELL_OUT: i32 = 4;
/// The only byte a doorbell may carry.
const BELL: u8 = 0xB1;
/// Default ring size, and where the ring to the supervisor sits.
const RING: u64 = 2 << 20;
/// Offsets in the status page of the result ring's published write
/// position and of its wrap position (asserted at compile time in
/// src/transport/status.rs).
const RESULT_WRITE_POS: usize = 1024;
const RESULT_WRAP_POS: usize = 1280;

fn killed_by_supervisor() -> JobError {
    JobError::Crashed {
        signal: Some(libc::SIGKILL),
        exit_code: None,
    }
}

fn write_fd(fd: i32, bytes: &[u8]) {
    // SAFETY: writing from a valid buffer to a descriptor number.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize, "write to fd {fd}");
}

/// Writes an HTTP request to the doorbell pipe, then carries on as if
/// nothing happened and returns a result that must not be believed.
fn garbage_on_the_pipe(_: ()) -> u64 {
    write_fd(BELL_OUT, b"GET / HTTP/1.1\r\n\r\n");
    std::thread::sleep(Duration::from_millis(1500));
    42
}

/// Closes the doorbell pipe: the worker can no longer be trusted to answer.
fn close_the_pipe(_: ()) -> u64 {
    // SAFETY: closing a descriptor number of this process.
    unsafe { libc::close(BELL_OUT) };
    std::thread::sleep(Duration::from_millis(1500));
    42
}

/// Start address of the worker's shared-memory view at file offset `off`.
fn shm_view(off: u64) -> *mut u8 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines().filter(|l| l.contains("memfd:forkpool-worker")) {
        let mut f = line.split_whitespace();
        let range = f.next().unwrap();
        let offset = u64::from_str_radix(f.nth(1).unwrap(), 16).unwrap();
        if offset == off {
            let start = usize::from_str_radix(range.split('-').next().unwrap(), 16).unwrap();
            return start as *mut u8;
        }
    }
    panic!("no forkpool-worker mapping at offset {off:#x}:\n{maps}");
}

fn result_write_pos() -> *mut u64 {
    // SAFETY: the status page is mapped read-write at this address.
    unsafe { shm_view(0).add(RESULT_WRITE_POS).cast() }
}

/// Lets the supervisor take the records of the items that ran before this
/// one: once the ring's position is impossible, nothing more is read from
/// it, and those items would be charged too (their results unreadable).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// Publishes an impossible write position for the result ring.
fn impossible_ring_position(_: ()) -> u64 {
    settle();
    // SAFETY: a plain store into the mapped status page.
    unsafe { result_write_pos().write_volatile(u64::MAX / 2) };
    write_fd(BELL_OUT, &[BELL]);
    std::thread::sleep(Duration::from_millis(1500));
    42
}

/// Claims a wrap just ahead of the supervisor's read position, then
/// publishes a write position inside the stretch a wrap skips.
fn impossible_wrap(_: ()) -> u64 {
    settle();
    let pos = result_write_pos();
    // SAFETY: plain loads and stores into the mapped status page.
    unsafe {
        let w = pos.read_volatile();
        let wrap = if (w + 1).is_multiple_of(RING) {
            w + 2
        } else {
            w + 1
        };
        shm_view(0)
            .add(RESULT_WRAP_POS)
            .cast::<u64>()
            .write_volatile(wrap);
        pos.write_volatile(wrap + 1);
    }
    write_fd(BELL_OUT, &[BELL]);
    std::thread::sleep(Duration::from_millis(1500));
    42
}

/// Publishes a record with a tag no worker may send (and a huge length).
fn forged_record(_: ()) -> u64 {
    settle();
    let pos = result_write_pos();
    // SAFETY: reads and writes inside the mapped status page and result
    // ring view (`RING` bytes from the view's start).
    unsafe {
        let w = pos.read_volatile();
        let data = shm_view(4096 + RING);
        let at = (w % RING) as usize;
        let forged = [0xff, 0xff, 0xff, 0x7f, 0x01, 0, 0, 0];
        for (i, b) in forged.iter().enumerate() {
            data.add((at + i) % RING as usize).write_volatile(*b);
        }
        pos.write_volatile(w + forged.len() as u64);
    }
    write_fd(BELL_OUT, &[BELL]);
    std::thread::sleep(Duration::from_millis(1500));
    42
}

fn double(x: u64) -> u64 {
    2 * x
}

#[test]
fn a_worker_that_breaks_the_protocol_is_killed_and_its_job_crashed() {
    let pool = Pool::new(2).unwrap();
    type Job = fn(()) -> u64;
    let cases: [(&str, Job); 5] = [
        ("garbage on the doorbell pipe", garbage_on_the_pipe),
        ("doorbell pipe closed", close_the_pipe),
        ("impossible ring position", impossible_ring_position),
        ("impossible wrap position", impossible_wrap),
        ("forged record", forged_record),
    ];
    for (i, (what, job)) in cases.into_iter().enumerate() {
        let bystanders: Vec<_> = (0..50u64).map(|x| pool.submit(double, x)).collect();
        assert_eq!(pool.apply(job, ()), Err(killed_by_supervisor()), "{what}");
        for (x, h) in bystanders.into_iter().enumerate() {
            assert_eq!(h.get(), Ok(2 * x as u64), "{what}: other jobs unaffected");
        }
        assert!(
            wait_until(Duration::from_secs(10), || pool.stats().live_workers == 2),
            "{what}: worker replaced: {:?}",
            pool.stats()
        );
        assert_eq!(pool.map(double, 0..100u64).unwrap()[99], 198, "{what}");
        let s = pool.stats();
        assert_eq!(s.crashed, i as u64 + 1, "{what}: {s:?}");
        assert_eq!(s.worker_restarts, i as u64 + 1, "{what}: {s:?}");
        assert_eq!(s.submitted, s.completed + s.failed + s.cancelled, "{s:?}");
    }
    // Legitimate doorbell bytes are just wake-ups.
    fn ring_the_bell(_: ()) -> u32 {
        write_fd(BELL_OUT, &[BELL; 8]);
        std::process::id()
    }
    let pid = pool.apply(ring_the_bell, ()).unwrap();
    let again: Vec<u32> = (0..20)
        .map(|_| pool.apply(worker_pid, ()).unwrap())
        .collect();
    assert!(again.contains(&pid), "the bell-ringing worker served on");
    assert_eq!(pool.stats().crashed, 5);
}
