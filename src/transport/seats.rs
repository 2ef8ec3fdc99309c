//! Spin seats: how many of a pool's workers may spin at once.
//!
//! A worker that ran out of work spins a little before it sleeps (see
//! `crate::sys::spin`), so that a frame sent soon after finds it awake. That
//! pays while the worker has a CPU to itself. In a pool larger than the
//! machine — `workers(64)` or `workers(256)` on two CPUs, sized for jobs
//! that wait — every worker that finishes a batch would spin while others
//! that have work wait for a CPU, and the more workers, the more CPU goes
//! to waiting instead of work.
//!
//! So a worker spins only in one of the pool's seats, one per CPU the pool
//! may use; with none free it sleeps at once. A seat is a word in the
//! pool's shared page ([`PoolPage`]) holding the pid of the worker in it
//! (0: free), taken and left by compare-and-swap, so no count can drift:
//! a seat's holder is always named, and the supervisor frees the seat of
//! a worker that died in it ([`SpinSeats::vacate`]).
//!
//! The worker side is untrusted like the rest of the shared memory: a
//! seat holds only a number, which the supervisor only ever compares with
//! the pid of a worker that ended. A worker that never leaves its seat
//! costs the others their spin, never a job: without a seat a worker
//! sleeps and is woken by its doorbell, as any worker after its spin.

use crate::transport::shm::PoolPage;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// Most seats a pool has, whatever the machine (one cache line each fills
/// the page).
const MAX_SEATS: usize = 64;

/// 4-byte words in a 64-byte cache line.
const WORDS_PER_LINE: usize = 16;

/// The seats of one pool, in its shared page. Made by the supervisor
/// before the fork server is forked; every worker inherits the mapping.
pub(crate) struct SpinSeats {
    page: PoolPage,
    count: usize,
}

impl SpinSeats {
    /// `count` seats (1 to [`MAX_SEATS`]), all free.
    pub(crate) fn new(count: usize) -> io::Result<SpinSeats> {
        Ok(SpinSeats {
            page: PoolPage::new()?,
            count: count.clamp(1, MAX_SEATS),
        })
    }

    /// One seat per CPU this process may run on (`num_cpus`, as the
    /// pool's default size: its cgroup reading is made once per process;
    /// `std`'s `available_parallelism` reads the cgroup files at every
    /// call, some 40 µs of a pool's start-up).
    pub(crate) fn per_cpu() -> io::Result<SpinSeats> {
        SpinSeats::new(num_cpus::get())
    }

    /// The seats' words, one per cache line: workers on different CPUs
    /// take and leave seats at once, and must not bounce one line.
    fn words(&self) -> impl Iterator<Item = &AtomicU32> {
        self.page
            .words(self.count * WORDS_PER_LINE)
            .iter()
            .step_by(WORDS_PER_LINE)
    }

    /// Worker: takes a free seat for `pid`, if there is one. The seat is
    /// left when the returned guard drops.
    pub(crate) fn take(&self, pid: u32) -> Option<Seat<'_>> {
        self.words()
            .find(|w| {
                w.load(Ordering::Relaxed) == 0
                    && w.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
            .map(|word| Seat { word, pid })
    }

    /// Supervisor: frees any seat worker `pid` held when it ended. A
    /// worker can die while it spins (a kill, the OOM killer); without
    /// this, its seat would stay taken for the pool's life.
    pub(crate) fn vacate(&self, pid: u32) {
        if pid == 0 {
            return;
        }
        for w in self.words() {
            let _ = w.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// A seat taken by a worker; left on drop. If the supervisor vacated it
/// meanwhile (it took the worker for dead), leaving does nothing.
pub(crate) struct Seat<'a> {
    word: &'a AtomicU32,
    pid: u32,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let _ = self
            .word
            .compare_exchange(self.pid, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_spinners_than_seats_and_a_dead_holder_is_vacated() {
        let seats = SpinSeats::new(2).unwrap();
        let a = seats.take(10).expect("first seat");
        let b = seats.take(11).expect("second seat");
        assert!(seats.take(12).is_none(), "a third worker must not spin");
        drop(a);
        let c = seats.take(12).expect("a left seat is free again");
        // Worker 11 dies in its seat: the supervisor frees it.
        std::mem::forget(b);
        seats.vacate(11);
        let d = seats.take(13).expect("the dead worker's seat");
        drop((c, d));
        let all: Vec<_> = (20..22).filter_map(|pid| seats.take(pid)).collect();
        assert_eq!(all.len(), 2, "every seat was left");
    }
}
