//! Where one job's outcome lands: the [`Slot`] a job's handle waits on
//! and the supervisor (or whoever resolves the job) fills, exactly once.
//!
//! A slot's state word goes `PENDING → DISPATCHED → RESOLVED`, or
//! `PENDING → CANCELLED` when the caller cancels a job the supervisor has
//! not handed to a worker yet. `resolve` stores the first outcome and
//! ignores every later one, which is what makes every handle resolve
//! exactly once whatever races (a worker's answer, a cancellation, an
//! expiry, a terminate) end a job.

use crate::batch::JobId;
use crate::batch::{Outcome, Sink};
use crate::error::JobError;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

const PENDING: u8 = 0;
const DISPATCHED: u8 = 1;
const RESOLVED: u8 = 2;
const CANCELLED: u8 = 3;

/// Runs once, with a job's final outcome, on the thread that resolves it
/// (often the supervisor's: it must be quick and must not panic), and
/// returns what the slot keeps. Layers use it for callbacks, stored
/// results and stripping ignored results.
pub(crate) type Finisher =
    Box<dyn FnOnce(Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> + Send>;

/// Where one job's outcome lands.
pub(crate) struct Slot {
    pub(crate) id: JobId,
    state: AtomicU8,
    /// Attempts made so far: 1, plus one per retry.
    attempts: AtomicU32,
    /// Revoked: no attempt of it may start or be retried any more.
    revoked: AtomicBool,
    inner: Mutex<SlotInner>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotInner {
    /// The job's record (header and body), or its failure.
    result: Option<Result<Vec<u8>, JobError>>,
    waker: Option<Waker>,
    finisher: Option<Finisher>,
    /// Threads blocked in `wait_until` (counted under the lock): `resolve`
    /// signals the condition variable only when one is, since a signal is
    /// a system call even with nobody to wake, and the common waiter — a
    /// caller helping the supervisor — spins and never blocks.
    blocked: u32,
}

impl Slot {
    pub(crate) fn new(id: JobId) -> Slot {
        Slot {
            id,
            state: AtomicU8::new(PENDING),
            attempts: AtomicU32::new(1),
            revoked: AtomicBool::new(false),
            inner: Mutex::new(SlotInner::default()),
            ready: Condvar::new(),
        }
    }

    /// Installs the code that sees the final outcome (before it resolves).
    pub(crate) fn set_finisher(&self, finisher: Finisher) {
        self.lock().finisher = Some(finisher);
    }

    /// Counts one more attempt (a retry was scheduled).
    pub(crate) fn add_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the outcome unless one is already there. Returns whether it did.
    pub(crate) fn resolve(&self, result: Result<Vec<u8>, JobError>) -> bool {
        let mut inner = self.lock();
        if inner.result.is_some() {
            return false;
        }
        let result = match inner.finisher.take() {
            Some(finish) => finish(result),
            None => result,
        };
        inner.result = Some(result);
        let _ =
            self.state
                .compare_exchange(DISPATCHED, RESOLVED, Ordering::AcqRel, Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(PENDING, RESOLVED, Ordering::AcqRel, Ordering::Relaxed);
        let waker = inner.waker.take();
        let blocked = inner.blocked > 0;
        drop(inner);
        if blocked {
            self.ready.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Cancels a job the supervisor has not dispatched yet. Returns false if
    /// it already has (then only the supervisor can cancel it).
    pub(crate) fn cancel_pending(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && self.resolve(Err(JobError::Cancelled))
    }

    /// Whether an outcome is in (or about to be): a lock-free check for
    /// spinning.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), RESOLVED | CANCELLED)
    }

    pub(crate) fn is_dispatched(&self) -> bool {
        self.state.load(Ordering::Acquire) == DISPATCHED
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.lock().result.is_some()
    }

    /// Waits for the outcome until `deadline` (`None`: for ever); true
    /// once it is in.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut inner = self.lock();
        while inner.result.is_none() {
            // Counted before the wait releases the lock, so a `resolve`
            // (which holds it to store the result) sees this waiter.
            inner.blocked += 1;
            let timed_out = match deadline {
                None => {
                    inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
                    false
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        true
                    } else {
                        inner = self
                            .ready
                            .wait_timeout(inner, d - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        false
                    }
                }
            };
            inner.blocked -= 1;
            if timed_out {
                return false;
            }
        }
        true
    }

    /// Takes the outcome (`Cancelled` if it was already taken).
    pub(crate) fn take(&self) -> Result<Vec<u8>, JobError> {
        self.lock()
            .result
            .take()
            .unwrap_or(Err(JobError::Cancelled))
    }
}

impl Slot {
    /// Takes the outcome if it is in; otherwise `waker` is woken when it
    /// comes (for a `Future`).
    pub(crate) fn take_or_wake(&self, waker: &Waker) -> Option<Result<Vec<u8>, JobError>> {
        let mut inner = self.lock();
        let taken = inner.result.take();
        if taken.is_none() {
            inner.waker = Some(waker.clone());
        }
        taken
    }
}

impl Sink for Slot {
    fn deliver(&self, _base: u64, outcome: Outcome) {
        match outcome {
            Outcome::Records { buf, .. } => self.resolve(Ok(buf)),
            Outcome::Failed { error, .. } => self.resolve(Err(error)),
        };
    }

    fn claim(&self) -> bool {
        match self
            .state
            .compare_exchange(PENDING, DISPATCHED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == DISPATCHED,
        }
    }

    fn fail_now(&self, error: JobError) -> bool {
        self.resolve(Err(error))
    }

    fn attempt(&self) -> u32 {
        self.attempts()
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}
