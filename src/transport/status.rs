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
    /// Where the producer last went back to the ring's start: its bytes
    /// stop at this position and go on at the next multiple of the ring's
    /// size (0: never). Written by the producer, before it publishes a
    /// position past it (see `ring.rs`).
    pub wrap: Line<AtomicU64>,
}

/// The state bits of a status word: the low two bits, beside a 62-bit
/// number (an item's sequence number, or a job id).
const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// How the latest item a worker started stands ([`ItemWord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemState {
    /// Nothing started yet (the word is still zero).
    Idle,
    /// The item is running.
    Running,
    /// The item finished: its record is committed to the ring.
    Done,
    /// The supervisor claimed the item to kill the worker over it.
    Kill,
}

impl ItemState {
    const fn bits(self) -> u64 {
        match self {
            ItemState::Idle => 0,
            ItemState::Running => 1,
            ItemState::Done => 2,
            ItemState::Kill => 3,
        }
    }
}

/// A reading of an [`ItemWord`]: an item's sequence number and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item(u64);

impl Item {
    const fn new(seq: u64, state: ItemState) -> Item {
        Item(seq << STATE_BITS | state.bits())
    }

    /// The item's sequence number within the worker.
    pub(crate) fn seq(self) -> u64 {
        self.0 >> STATE_BITS
    }

    pub(crate) fn state(self) -> ItemState {
        match self.0 & STATE_MASK {
            0 => ItemState::Idle,
            1 => ItemState::Running,
            2 => ItemState::Done,
            _ => ItemState::Kill,
        }
    }

    /// The sequence number of the item whose user code may be running —
    /// running, or claimed for a kill that has not landed yet.
    pub(crate) fn running(self) -> Option<u64> {
        matches!(self.state(), ItemState::Running | ItemState::Kill).then(|| self.seq())
    }

    /// How many items the worker has started: every item up to this one,
    /// and this one unless nothing has started.
    pub(crate) fn started_through(self) -> u64 {
        match self.state() {
            ItemState::Idle => 0,
            _ => self.seq().saturating_add(1),
        }
    }
}

/// Which item a worker is on, and how it stands: `seq << 2 | state`.
///
/// The worker [`start`](Self::start)s each item and, when it is over,
/// [`finish`](Self::finish)es it (a killable item) or
/// [`mark_done`](Self::mark_done)s it (a timed one). The supervisor reads
/// it and may [`claim_kill`](Self::claim_kill) the running item. `finish`
/// and `claim_kill` are both compare-and-swaps from `Running`: exactly one
/// of them wins, so a worker that lost waits for its kill instead of
/// starting another item, and a kill never hits an innocent item.
#[repr(transparent)]
#[derive(Default)]
pub(crate) struct ItemWord(AtomicU64);

/// The supervisor claimed the item first: the worker is about to be killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claimed;

impl ItemWord {
    /// Worker: item `seq` starts now.
    #[inline(always)]
    pub(crate) fn start(&self, seq: u64) {
        self.0
            .store(Item::new(seq, ItemState::Running).0, Ordering::Release);
    }

    /// Worker: killable item `seq` is over (its record committed), unless
    /// the supervisor claimed it first.
    #[inline(always)]
    pub(crate) fn finish(&self, seq: u64) -> Result<(), Claimed> {
        self.0
            .compare_exchange(
                Item::new(seq, ItemState::Running).0,
                Item::new(seq, ItemState::Done).0,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(drop)
            .map_err(|_| Claimed)
    }

    /// Worker: item `seq` is over, for the supervisor's limit checks (an
    /// item that cannot be killed needs no compare-and-swap).
    #[inline(always)]
    pub(crate) fn mark_done(&self, seq: u64) {
        self.0
            .store(Item::new(seq, ItemState::Done).0, Ordering::Release);
    }

    /// The supervisor's reading (the worker wrote it).
    pub(crate) fn load(&self) -> Item {
        Item(self.0.load(Ordering::Acquire))
    }

    /// The worker's reading of its own word.
    pub(crate) fn load_own(&self) -> Item {
        Item(self.0.load(Ordering::Relaxed))
    }

    /// Supervisor: claims running item `seq` to kill the worker over it.
    /// False if the item is no longer running (it finished first).
    pub(crate) fn claim_kill(&self, seq: u64) -> bool {
        self.0
            .compare_exchange(
                Item::new(seq, ItemState::Running).0,
                Item::new(seq, ItemState::Kill).0,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// How a cancellable job queued at a worker stands ([`CancelSlot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Queued in the worker's ring.
    Queued,
    /// The worker took it and will run it.
    Taken,
    /// The supervisor cancelled it; the worker skips it.
    Cancelled,
}

impl SlotState {
    const fn word(self, job: u64) -> u64 {
        job << STATE_BITS
            | match self {
                SlotState::Queued => 1,
                SlotState::Taken => 2,
                SlotState::Cancelled => 3,
            }
    }
}

/// One cancellable job in a worker's inbox: `job_id << 2 | state`.
///
/// The supervisor [`queue`](Self::queue)s the job when it sends it. The
/// worker [`take`](Self::take)s it before running it; the supervisor may
/// [`cancel`](Self::cancel) it until then. Both are compare-and-swaps from
/// `Queued`: a job is either run or skipped, never both. A job the worker
/// took can only be stopped by killing the worker (see [`ItemWord`]).
#[repr(transparent)]
#[derive(Default)]
pub(crate) struct CancelSlot(AtomicU64);

impl CancelSlot {
    /// Supervisor: job `job` is queued in the worker's inbox.
    pub(crate) fn queue(&self, job: u64) {
        self.0.store(SlotState::Queued.word(job), Ordering::Relaxed);
    }

    /// Worker: takes job `job` to run it. False if it was cancelled.
    #[inline(always)]
    pub(crate) fn take(&self, job: u64) -> bool {
        self.transition(job, SlotState::Taken)
    }

    /// Supervisor: cancels job `job` before the worker takes it. False if
    /// the worker took it first.
    pub(crate) fn cancel(&self, job: u64) -> bool {
        self.transition(job, SlotState::Cancelled)
    }

    #[inline(always)]
    fn transition(&self, job: u64, to: SlotState) -> bool {
        self.0
            .compare_exchange(
                SlotState::Queued.word(job),
                to.word(job),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// `WorkerStatus::started_ns` while a finished item's record waits for
/// room: the supervisor reads a start later than now as "started just
/// now" (`conn/limits.rs`), so no time limit falls due meanwhile.
pub(crate) const DELIVERING: u64 = u64::MAX;

/// What the worker publishes about itself.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct WorkerStatus {
    /// The latest item started, and how it stands.
    pub current: ItemWord,
    /// `CLOCK_MONOTONIC_COARSE` nanoseconds when that item started (only
    /// written for batches with a time limit), or [`DELIVERING`] once its
    /// job is over and its record waits for room in the ring.
    pub started_ns: AtomicU64,
    /// The CPU the worker last ran on, as it started to wait for work (see
    /// `crate::sys::spin`).
    pub cpu: AtomicU32,
    /// How long the worker spent on its last batch of several items (see
    /// [`BatchTime`]).
    pub batch_time: BatchTime,
}

/// How long a worker spent on its last batch of several items, from
/// starting the first to answering the last: written before the last
/// answer is committed, so a supervisor that has read that answer reads
/// this too. The time excludes waiting to be woken and waiting in the
/// ring, which the supervisor cannot tell apart; `map` sizes its batches
/// from it. Untrusted, like all the worker writes: it only ever steers
/// batch sizes.
#[derive(Default)]
pub(crate) struct BatchTime(AtomicU64);

impl BatchTime {
    /// Bits of the batch's first sequence number kept, above the time.
    const SEQ_BITS: u32 = 24;
    const NS_BITS: u32 = 64 - Self::SEQ_BITS;

    /// Worker: the batch whose first item is `seq0` took `ns`.
    pub(crate) fn set(&self, seq0: u64, ns: u64) {
        let ns = ns.min((1 << Self::NS_BITS) - 1);
        self.0.store(seq0 << Self::NS_BITS | ns, Ordering::Relaxed);
    }

    /// Supervisor: the time of the batch whose first item is `seq0`, if
    /// that is the batch the word speaks of (never zero: a word never
    /// written says nothing).
    pub(crate) fn get(&self, seq0: u64) -> Option<u64> {
        let word = self.0.load(Ordering::Relaxed);
        let mask = (1u64 << Self::SEQ_BITS) - 1;
        let ns = word & ((1 << Self::NS_BITS) - 1);
        (word >> Self::NS_BITS == seq0 & mask && ns > 0).then_some(ns)
    }
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

/// Work the supervisor takes back from a worker before it starts:
/// every item numbered below the word (`0`: none).
///
/// The supervisor [`recall`](Self::recall)s what it has sent so far when
/// better work waits (a higher priority) or a queue dispatches exactly; the
/// worker looks before it starts each item ([`returns`](Self::returns))
/// and hands back, unstarted, the items below the word — a `Returned`
/// record — instead of running them. An item the worker started before it
/// saw the word runs: the recall costs at most the item in progress. The
/// word only grows, and items sent after a recall are numbered above it,
/// so they run.
#[repr(transparent)]
#[derive(Default)]
pub(crate) struct Recall(AtomicU64);

impl Recall {
    /// Supervisor: take back every item numbered below `seq` that has not
    /// started.
    pub(crate) fn recall(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::Relaxed);
    }

    /// Worker: how many of the `left` items from `seq` on must go back (0:
    /// run item `seq`). One relaxed load, per item.
    #[inline(always)]
    pub(crate) fn returns(&self, seq: u64, left: u32) -> u32 {
        let below = self.0.load(Ordering::Relaxed);
        if seq < below {
            (below - seq).min(u64::from(left)) as u32
        } else {
            0
        }
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
    /// One slot for each cancellable job in flight.
    pub cancel: [CancelSlot; CANCEL_SLOTS],
    /// The ring that carries batches to the worker.
    pub to_worker: RingCtl,
    /// The ring that carries records to the supervisor.
    pub to_supervisor: RingCtl,
    /// Progress reported by the running job (last, so that the offsets
    /// above stay put).
    pub progress: ProgressCell,
    /// Items the supervisor took back before they started.
    pub recall: Line<Recall>,
}

const _: () = assert!(std::mem::size_of::<StatusPage>() <= PAGE);
// tests/hostile.rs forges a worker's result-ring write position at this
// offset (a test outside the crate cannot name the field): keep them in step.
const _: () = assert!(std::mem::offset_of!(StatusPage, to_supervisor) == 1024);
// tests/hostile.rs forges the result ring's wrap position too.
const _: () = assert!(
    std::mem::offset_of!(StatusPage, to_supervisor) + std::mem::offset_of!(RingCtl, wrap) == 1280
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_time_is_read_only_for_its_batch() {
        let t = BatchTime::default();
        assert_eq!(t.get(0), None, "nothing written says nothing");
        t.set(5, 1234);
        assert_eq!(t.get(5), Some(1234));
        assert_eq!(t.get(6), None);
        t.set(1 << 30 | 7, u64::MAX);
        assert_eq!(
            t.get(7),
            Some((1 << 40) - 1),
            "sequence numbers wrap, times saturate"
        );
    }

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
    fn an_item_is_finished_or_claimed_never_both() {
        let w = ItemWord::default();
        assert_eq!(w.load().state(), ItemState::Idle);
        assert_eq!(w.load().started_through(), 0);
        assert_eq!(w.load().running(), None);
        w.start(5);
        assert_eq!((w.load().seq(), w.load().state()), (5, ItemState::Running));
        assert_eq!(w.load().running(), Some(5));
        assert!(!w.claim_kill(4), "not the running item");
        assert!(w.claim_kill(5));
        assert_eq!(w.load().state(), ItemState::Kill);
        assert_eq!(w.load().running(), Some(5), "its code may still run");
        assert_eq!(w.finish(5), Err(Claimed), "the worker lost");
        assert_eq!(w.load().started_through(), 6);
        w.start(6);
        assert_eq!(w.finish(6), Ok(()));
        assert!(!w.claim_kill(6), "the supervisor lost");
        assert_eq!((w.load().seq(), w.load().state()), (6, ItemState::Done));
        assert_eq!(w.load().running(), None);
        w.start(7);
        w.mark_done(7);
        assert_eq!(w.load_own().state(), ItemState::Done);
        assert_eq!(w.load_own().started_through(), 8);
    }

    #[test]
    fn a_queued_job_is_taken_or_cancelled_never_both() {
        let slot = CancelSlot::default();
        slot.queue(41);
        assert!(!slot.take(40), "another job's id");
        assert!(slot.take(41));
        assert!(!slot.cancel(41), "taken: too late to cancel");
        slot.queue(42);
        assert!(slot.cancel(42));
        assert!(!slot.take(42), "cancelled: the worker skips it");
        assert!(!slot.cancel(42), "cancelled once");
    }
}
