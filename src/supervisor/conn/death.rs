//! Closing the books of a worker that died: whose fault it was, and what
//! becomes of each job it held.
//!
//! # Whose fault is it when a worker dies
//!
//! When a worker's books are closed ([`Conn::finalize`]), whatever ended it
//! — a crash, a time limit, a cancellation, or a protocol violation — the
//! same rule applies:
//!
//! - **The records it committed are delivered.** A worker commits each
//!   item's record to its result ring before it marks the item done, so
//!   every item that finished has its answer in shared memory, published
//!   or not. After a violation, only the well-formed records before the
//!   first malformed one are believed: `pump_rx` stops reading a violator
//!   at once, and `salvage` reads what it left once it is dead.
//! - **Every item it started without answering is charged.** The running
//!   one with what killed it (the kill's reason, kept in the books) or the
//!   crash; an earlier one whose record could not be read — possible only
//!   after a violation — with the crash too: it ran, so it must not run
//!   again.
//! - **Items it never started are requeued**, to run elsewhere: nothing
//!   runs twice, nothing is lost.
//! - **A position beyond what was sent is clamped**, so a lying worker can
//!   make us charge at most its own batches.
//! - **A job already settled is left alone.** A single job withdrawn by a
//!   cancellation or an expiry (`limits.rs`) was resolved and counted
//!   then; its entry in the books says so (`InFlight::settled`), and death
//!   neither charges, counts nor requeues it — nor does terminating the
//!   pool count it again (`abandon`).
//!
//! (Before this rule, a violator's committed records were dropped and the
//! first undelivered item — an innocent one that had finished — was
//! charged, while the culprit was requeued and ran twice.)
//!
//! The books may be closed only once the process is known to be dead
//! ([`Conn::finished`]): its exit status reported by the fork server, or —
//! for an orphan of a dead fork server — its pidfd or pipe closed.

use super::{Conn, Ctx};
use crate::batch::Batch;
use crate::error::ExitStatus;
use crate::metrics::fate::Fate;

impl Conn {
    /// Whether the worker is seen leaving (its pipe closed or its pidfd
    /// fired) but the fork server has not yet reported how it ended.
    pub(in crate::supervisor) fn awaiting_exit_status(&self) -> bool {
        (self.hup || self.gone) && !self.finished()
    }

    /// Whether the process is known to be dead and its books can be closed.
    /// An orphan's death is seen by its pidfd (or, without one, its pipe).
    pub(in crate::supervisor) fn finished(&self) -> bool {
        self.spawn_failed
            || self.status.is_some()
            || (self.orphaned && (self.gone || (self.hup && !self.pidfd_registered)))
    }

    /// Closes the books of a dead worker: delivers every result it left
    /// (a worker commits each record before it marks the item done), charges
    /// every item it started without answering, and returns the batches
    /// whose items never started, to be run elsewhere.
    pub(in crate::supervisor) fn finalize(&mut self, ctx: &mut Ctx<'_>) -> Vec<Batch> {
        if self.violated.is_none() {
            self.pump_rx(ctx);
        } else {
            self.salvage(ctx);
        }
        // Items it started: those before its current item, and that one
        // unless the word is still the initial "nothing started". A position
        // past what was sent is a lie; it cannot make us charge more than that.
        let started_through = self
            .page()
            .worker
            .current
            .load()
            .started_through()
            .min(self.next_seq);
        // Every item it started and did not answer is charged: the running
        // one with what killed it; an earlier one whose record could not be
        // read (only after a protocol violation) with the crash too — it
        // ran, so it must not run again. Items it never started are requeued.
        while let Some(first) = self.book.first_undelivered()
            && first < started_through
        {
            let error = match self.book.kill.take_if(|k| k.seq == first) {
                Some(k) => k.reason,
                None => ExitStatus::crashed(self.status),
            };
            let front = self.book.inflight.front_mut().expect("first item exists");
            if front.settled {
                front.batch.forget(1); // resolved and counted when withdrawn
            } else {
                ctx.count_error(front.batch.tally, &error, 1);
                front.batch.fail(1, error);
            }
            front.seq0 += 1;
            self.book.pop_finished(ctx);
        }
        let mut requeue = Vec::new();
        for mut f in self.book.inflight.drain(..) {
            if f.settled {
                f.batch.forget(f.batch.count());
            }
            if let Some(id) = f.batch.job {
                ctx.done_jobs.push(id);
            }
            if f.batch.count() > 0 {
                requeue.push(f.batch);
            }
        }
        self.book.cancel_used = 0;
        requeue
    }

    /// After a protocol violation `pump_rx` believes nothing more; when the
    /// worker is dead, the well-formed records it committed before the first
    /// bad one are still delivered, so that only the item it was running
    /// when caught is not believed. (If its ring position itself is
    /// impossible, nothing more is read.)
    pub(super) fn salvage(&mut self, ctx: &mut Ctx<'_>) {
        if let Ok(n) = self.rx.available() {
            self.pull(n);
            let _ = self.parse(ctx);
        }
        if !self.book.inflight.is_empty() {
            self.book.flush_out(ctx);
        }
    }

    /// Gives up on everything in flight (the pool is terminating): counts
    /// it as cancelled; dropping the conn then resolves it.
    pub(in crate::supervisor) fn abandon(&mut self, ctx: &mut Ctx<'_>) {
        if !self.book.inflight.is_empty() {
            self.book.flush_out(ctx);
        }
        for f in self.book.inflight.iter().filter(|f| !f.settled) {
            ctx.count(f.batch.tally, Fate::Cancelled, u64::from(f.batch.count()));
        }
        self.signal(libc::SIGKILL);
    }
}
