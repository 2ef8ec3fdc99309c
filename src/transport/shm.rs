//! One worker's shared memory: a status page and two byte rings.
//!
//! Each worker gets one `memfd` that both it and the supervisor map. It holds
//!
//! ```text
//! [ status page (4 KiB) ][ ring to the worker ][ ring to the supervisor ]
//! ```
//!
//! Each ring is mapped twice, back to back ("mirrored"), so that any run of up
//! to `ring_size` bytes starting anywhere in the ring is contiguous in memory:
//! a frame that wraps around the end can still be read or written with one
//! copy, and decoded in place.
//!
//! The status page is the scoreboard the design asks for: which item the
//! worker is on and since when (so the supervisor can enforce time limits and
//! charge the right item when a worker dies, without a message per item),
//! the soft-limit flag, cancel slots, the rings' positions and sleep flags,
//! and the running job's latest progress report. Every field is an atomic;
//! the worker's side is untrusted, so the supervisor validates whatever it
//! reads from here.
//!
//! This module owns `memfd_create`, `ftruncate`, `mmap` and `munmap`. The
//! mapping functions use raw system calls only, so a freshly forked worker
//! may call them before it enters its loop.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Size of the status page; also the alignment of every part of the file.
pub(crate) const PAGE: usize = 4096;

/// Number of cancel slots: the most cancellable jobs one worker may hold.
pub(crate) const CANCEL_SLOTS: usize = 64;

/// Default size of each ring.
pub(crate) const DEFAULT_RING: usize = 2 << 20;

/// A cache line of its own, so that fields written by different processes
/// never share one.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct Line<T>(pub T);

/// Positions and sleep flags of one ring.
#[repr(C)]
#[derive(Default)]
pub(crate) struct RingCtl {
    /// Bytes ever published by the producer.
    pub write: Line<AtomicU64>,
    /// Bytes ever consumed by the consumer.
    pub read: Line<AtomicU64>,
    /// Set by the consumer before it sleeps; the producer clears it and
    /// rings the consumer's doorbell.
    pub consumer_sleeping: Line<AtomicU32>,
    /// Set by the producer when it waits for space; the consumer clears it
    /// and rings the producer's doorbell.
    pub producer_waiting: Line<AtomicU32>,
}

/// `current` low bits: the item is running.
pub(crate) const RUNNING: u64 = 1;
/// `current` low bits: the item finished (its record is in the ring).
pub(crate) const DONE: u64 = 2;
/// `current` low bits: the supervisor claimed the item to kill the worker.
pub(crate) const KILL: u64 = 3;

/// Cancel slot state: the job is queued in the worker's ring.
pub(crate) const SLOT_QUEUED: u64 = 1;
/// Cancel slot state: the worker took the job and will run it.
pub(crate) const SLOT_TAKEN: u64 = 2;
/// Cancel slot state: the supervisor cancelled the job; the worker skips it.
pub(crate) const SLOT_CANCELLED: u64 = 3;

/// `WorkerStatus::started_ns` while a finished item's record waits for
/// room: the supervisor reads a start later than now as "started just
/// now" (`Conn::check_running`), so no time limit falls due meanwhile.
pub(crate) const DELIVERING: u64 = u64::MAX;

/// What the worker publishes about itself.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct WorkerStatus {
    /// `(seq << 2) | RUNNING / DONE / KILL` for the latest item started.
    pub current: AtomicU64,
    /// `CLOCK_MONOTONIC_COARSE` nanoseconds when that item started (only
    /// written for batches with a time limit), or [`DELIVERING`] once its
    /// job is over and its record waits for room in the ring.
    pub started_ns: AtomicU64,
    /// The CPU the worker last ran on, as it started to wait for work (see
    /// `crate::sys::spin`).
    pub cpu: AtomicU32,
}

/// The latest progress a job reported (`forkpool::report_progress`): plain
/// stores, no message. A seqlock: the worker makes `version` odd, writes the
/// three fields, then makes it even; a reader that sees the same even
/// version before and after read a consistent triple.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct ProgressCell {
    pub version: AtomicU64,
    /// `seq + 1` of the item that reported.
    pub item: AtomicU64,
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl ProgressCell {
    /// Worker side: publishes `done` of `total` for item `item` (`seq + 1`).
    pub(crate) fn write(&self, item: u64, done: u64, total: u64) {
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.item.store(item, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.version
            .store((v | 1).wrapping_add(1), Ordering::Release);
    }

    /// Supervisor side: `(done, total)` last reported by item `item`, if a
    /// consistent reading shows one. The worker is untrusted: a few tries,
    /// then give up.
    pub(crate) fn read(&self, item: u64) -> Option<(u64, u64)> {
        for _ in 0..16 {
            let v1 = self.version.load(Ordering::Acquire);
            if v1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let (it, done, total) = (
                self.item.load(Ordering::Relaxed),
                self.done.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if self.version.load(Ordering::Relaxed) == v1 {
                return (it == item).then_some((done, total));
            }
        }
        None
    }
}

/// The status page at the start of a worker's shared memory.
#[repr(C)]
pub(crate) struct StatusPage {
    pub worker: WorkerStatus,
    /// `seq + 1` of the item whose soft time limit has passed (0: none).
    pub soft_expired: Line<AtomicU64>,
    /// The CPU of the thread that last stepped the supervisor — the one that
    /// will hand the worker its next frame (see `crate::sys::spin`).
    pub driver_cpu: Line<AtomicU32>,
    /// `(job_id << 2) | SLOT_*` for each cancellable job in flight.
    pub cancel: [AtomicU64; CANCEL_SLOTS],
    /// The ring that carries batches to the worker.
    pub to_worker: RingCtl,
    /// The ring that carries records to the supervisor.
    pub to_supervisor: RingCtl,
    /// Progress reported by the running job (last, so that the offsets
    /// above stay put).
    pub progress: ProgressCell,
}

const _: () = assert!(std::mem::size_of::<StatusPage>() <= PAGE);
// tests/hostile.rs forges a worker's result-ring write position at this
// offset (a test outside the crate cannot name the field): keep them in step.
const _: () = assert!(std::mem::offset_of!(StatusPage, to_supervisor) == 960);

/// A worker's shared memory, mapped into this process.
pub(crate) struct Region {
    base: *mut u8,
    ring_size: usize,
}

// SAFETY: the mapping is plain shared memory whose shared fields are atomics;
// the region can be used from any thread of the process that maps it.
unsafe impl Send for Region {}

impl Region {
    /// Creates a new zeroed memfd for rings of `ring_size` bytes (a multiple
    /// of the page size) and maps it. Returns the mapping and the file, which
    /// is handed to the worker.
    pub(crate) fn create(ring_size: usize) -> io::Result<(Region, OwnedFd)> {
        debug_assert!(ring_size.is_multiple_of(PAGE) && ring_size.is_power_of_two());
        // SAFETY: the name is a valid NUL-terminated string; the returned fd
        // is checked and owned exactly once.
        let fd = unsafe { libc::memfd_create(c"forkpool-worker".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by memfd_create and nothing else owns it.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = (PAGE + 2 * ring_size) as libc::off_t;
        // SAFETY: ftruncate on a valid fd we own.
        if unsafe { libc::ftruncate(fd, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let region = Region::map(fd, ring_size).map_err(io::Error::from_raw_os_error)?;
        Ok((region, file))
    }

    /// Maps an existing worker memfd. Uses system calls only (no allocation,
    /// no locks), so it is safe in a freshly forked child. On failure returns
    /// the errno.
    pub(crate) fn map(fd: RawFd, ring_size: usize) -> Result<Region, i32> {
        let total = PAGE + 4 * ring_size;
        // SAFETY: reserving fresh address space with PROT_NONE touches no
        // existing mapping.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(errno());
        }
        let base = base.cast::<u8>();
        // (address offset, file offset, length) of the five views.
        let views = [
            (0, 0, PAGE),
            (PAGE, PAGE, ring_size),
            (PAGE + ring_size, PAGE, ring_size),
            (PAGE + 2 * ring_size, PAGE + ring_size, ring_size),
            (PAGE + 3 * ring_size, PAGE + ring_size, ring_size),
        ];
        for (at, off, len) in views {
            // SAFETY: each view lies inside the reservation made above, which
            // this function owns; MAP_FIXED replaces only reserved pages.
            let p = unsafe {
                libc::mmap(
                    base.add(at).cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    off as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                let e = errno();
                // SAFETY: unmapping our own reservation.
                unsafe { libc::munmap(base.cast(), total) };
                return Err(e);
            }
        }
        Ok(Region { base, ring_size })
    }

    /// The status page.
    pub(crate) fn page(&self) -> &StatusPage {
        // SAFETY: the first PAGE bytes are mapped read-write for as long as
        // self lives, are aligned to a page, and a zeroed StatusPage (all
        // atomics) is a valid value; all later access goes through atomics.
        unsafe { &*self.base.cast::<StatusPage>() }
    }

    /// Start of the data area of the ring to the worker (`to_worker == true`)
    /// or to the supervisor; `2 * ring_size` bytes are mapped from there.
    pub(crate) fn ring_data(&self, to_worker: bool) -> *mut u8 {
        let at = if to_worker {
            PAGE
        } else {
            PAGE + 2 * self.ring_size
        };
        // SAFETY: stays inside the mapping (see `map`).
        unsafe { self.base.add(at) }
    }

    pub(crate) fn ring_size(&self) -> usize {
        self.ring_size
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len describe exactly the reservation made in `map`,
        // and no reference into it outlives self (rings borrow from the
        // struct that owns the region and are dropped with it).
        unsafe { libc::munmap(self.base.cast(), PAGE + 4 * self.ring_size) };
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_whole_and_per_item() {
        let cell = ProgressCell::default();
        assert_eq!(cell.read(1), None, "nothing reported");
        cell.write(1, 3, 10);
        assert_eq!(cell.read(1), Some((3, 10)));
        assert_eq!(cell.read(2), None, "another item's report");
        cell.write(2, 7, 8);
        assert_eq!(cell.read(2), Some((7, 8)));
        // A writer caught mid-update (odd version) is not believed.
        cell.version.fetch_add(1, Ordering::Relaxed);
        assert_eq!(cell.read(2), None);
    }

    #[test]
    fn mirrored_views_alias() {
        let (r, fd) = Region::create(64 * 1024).unwrap();
        let data = r.ring_data(true);
        // SAFETY: both offsets are inside the mapping; writes go through raw
        // pointers only.
        unsafe {
            *data.add(10) = 42;
            assert_eq!(*data.add(64 * 1024 + 10), 42);
        }
        r.page().worker.current.store(7, Ordering::Relaxed);
        let other = Region::map(std::os::fd::AsRawFd::as_raw_fd(&fd), 64 * 1024).unwrap();
        assert_eq!(other.page().worker.current.load(Ordering::Relaxed), 7);
    }
}
