//! Time limits, cancellation and expiry of jobs a worker holds.
//!
//! The supervisor reads the worker's status page: which item runs and
//! since when. Past a soft limit it flags the item and sends `SIGUSR1`;
//! past a hard limit it claims the item with the compare-and-swap
//! `RUNNING → KILL` and kills the worker — the worker's own `RUNNING →
//! DONE` for that item then fails, so exactly one side decides and a kill
//! never lands on the next, innocent item. A job still queued in the
//! worker's inbox is withdrawn through its cancel slot (`QUEUED →
//! CANCELLED`) and skipped; an expiry never kills a job that has started.

use super::book::InFlight;
use super::{Conn, Ctx};
use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::error::JobError;
use crate::metrics::fate::Fate;
use crate::supervisor::Whereabouts;
use crate::sys::clock;
use crate::transport::status::ItemState;
use std::sync::atomic::Ordering;

impl Conn {
    /// Enforces time limits. Returns the next instant (coarse ns) at which
    /// the supervisor must look again: when the running item's limit falls
    /// due, or — for a timed batch whose items have not started — when the
    /// earliest of them could.
    pub(in crate::supervisor) fn check_deadlines(&mut self, now: u64) -> Option<u64> {
        if self.dying() {
            return None;
        }
        let waiting = self
            .book
            .inflight
            .iter()
            .filter_map(
                |f| match (f.batch.opts.soft_time_limit, f.batch.opts.time_limit) {
                    (Some(s), Some(h)) => Some(s.min(h)),
                    (s, h) => s.or(h),
                },
            )
            .min()
            .map(|limit| now.saturating_add(clock::ns(limit)));
        let running = self.check_running(now);
        match (waiting, running) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn check_running(&mut self, now: u64) -> Option<u64> {
        // Reading the worker's status line makes its next store to it miss
        // the cache: look only when something in flight has a limit.
        let timed = |f: &InFlight| {
            f.batch.opts.time_limit.is_some() || f.batch.opts.soft_time_limit.is_some()
        };
        if !self.book.inflight.iter().any(timed) {
            return None;
        }
        let page = self.region.page();
        let cur = page.worker.current.load();
        if cur.state() != ItemState::Running {
            return None;
        }
        let seq = cur.seq();
        let entry = self
            .book
            .inflight
            .iter()
            .find(|f| seq >= f.seq0 && seq < f.seq0 + u64::from(f.batch.count()))?;
        let opts = entry.batch.opts;
        if opts.time_limit.is_none() && opts.soft_time_limit.is_none() {
            return None;
        }
        // Started no earlier than this, in real time (see clock::coarse_tick_ns).
        let started =
            page.worker.started_ns.load(Ordering::Relaxed).min(now) + clock::coarse_tick_ns();
        let mut next = None;
        let mut notify_soft = false;
        if let Some(soft) = opts.soft_time_limit {
            let at = started.saturating_add(clock::ns(soft));
            if now < at {
                next = Some(at);
            } else {
                notify_soft = page.soft_expired.0.swap(seq + 1, Ordering::AcqRel) != seq + 1;
            }
        }
        let mut timed_out = None;
        if let Some(hard) = opts.time_limit {
            let at = started.saturating_add(clock::ns(hard));
            if now < at {
                next = Some(next.map_or(at, |n: u64| n.min(at)));
            } else if page.worker.current.claim_kill(seq) {
                timed_out = Some(hard);
            }
        }
        if notify_soft {
            self.signal(libc::SIGUSR1);
        }
        if let Some(limit) = timed_out {
            self.kill(seq, JobError::TimedOut { limit });
            return None;
        }
        next
    }

    /// Cancels dispatched job `id`. True if it will not produce a result.
    pub(in crate::supervisor) fn cancel(&mut self, id: JobId, ctx: &mut Ctx<'_>) -> bool {
        matches!(
            self.withdraw(id, JobError::Cancelled, true, ctx),
            Withdrawal::Skipped | Withdrawal::Killed
        )
    }

    /// Where dispatched job `id` is: running (with its latest progress
    /// report) or still queued in the worker's inbox.
    pub(in crate::supervisor) fn whereabouts(&self, id: JobId) -> Option<Whereabouts> {
        let entry = self
            .book
            .inflight
            .iter()
            .find(|f| f.batch.job == Some(id))?;
        if entry.batch.count() == 0 {
            return None;
        }
        let seq = entry.seq0;
        let page = self.page();
        if page.worker.current.load().running() == Some(seq) {
            let progress = page
                .progress
                .read(seq + 1)
                .map(|(done, total)| Progress { done, total });
            Some(Whereabouts::Running { progress })
        } else {
            Some(Whereabouts::Queued)
        }
    }

    /// Takes dispatched job `id` back with `why`: a job still queued in the
    /// worker's inbox is skipped; a running one is killed only if `kill`
    /// (a cancellation or a terminating revoke; an expiry spares a job that
    /// has started), and only while the worker is still on it.
    pub(in crate::supervisor) fn withdraw(
        &mut self,
        id: JobId,
        why: JobError,
        kill: bool,
        ctx: &mut Ctx<'_>,
    ) -> Withdrawal {
        let Some(entry) = self
            .book
            .inflight
            .iter_mut()
            .find(|f| f.batch.job == Some(id) && !f.settled)
        else {
            return Withdrawal::NotHere;
        };
        let (Some(slot), true) = (entry.slot, entry.batch.count() > 0) else {
            return Withdrawal::NotHere;
        };
        let seq = entry.seq0;
        let page = self.region.page();
        let skipped = page.cancel[slot as usize].cancel(id.0);
        let killed = !skipped && kill && page.worker.current.claim_kill(seq);
        if !skipped && !killed {
            return Withdrawal::Running;
        }
        entry.settled = true;
        if entry.batch.sink.fail_now(why.clone()) {
            ctx.count_error(entry.batch.tally, &why, 1);
        } else {
            // Resolved already by its caller, who counted it.
            ctx.tallies.count(entry.batch.tally, Fate::Cancelled, 1);
        }
        if killed {
            self.kill(seq, why);
            Withdrawal::Killed
        } else {
            Withdrawal::Skipped
        }
    }
}

/// What became of a job taken back from a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::supervisor) enum Withdrawal {
    /// It had not started: the worker skips it.
    Skipped,
    /// It was running: the worker was killed over it, and is replaced.
    Killed,
    /// It has started and runs on (or has just answered): its own outcome
    /// stands.
    Running,
    /// The worker does not hold it (unsettled).
    NotHere,
}
