//! The status page: what a worker and the supervisor tell each other
//! without a message, in the first 4 KiB of the worker's shared memory.
//!
//! Which item the worker is on and since when (so the supervisor can
//! enforce time limits and charge the right item when a worker dies, with
//! no message per item), the soft-limit flag, the cancel slots, the rings'
//! positions and sleep flags, and the running job's latest progress
//! report. Every field is an atomic, on a cache line of its own where two
//! processes write. The worker's side is untrusted: the supervisor
//! validates whatever it reads from here.

use crate::transport::shm::PAGE;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Number of cancel slots: the most cancellable jobs one worker may hold.
pub(crate) const CANCEL_SLOTS: usize = 64;

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
}
