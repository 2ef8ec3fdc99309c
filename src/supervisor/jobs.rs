//! One job, wherever it is: where it is, cancelling it, expiring it.
//!
//! A single job (`submit`, `Job`) may be in the timers, in the dispatch
//! queue, or in a worker (queued in its ring, or running). Until it is
//! handed to a worker it is taken out and resolved here; once it is, the
//! worker's conn withdraws it (`conn/limits.rs`): skipped if it has not
//! started, killed for a cancellation if it has, left alone by an expiry.

use super::Supervisor;
use super::command::Whereabouts;
use super::conn::Ctx;
use crate::batch::{Batch, JobId};
use crate::error::JobError;
use crate::metrics::fate::Fate;

impl Supervisor {
    /// Takes job `id` out of the timers or its queue, if it waits there (not
    /// yet handed to a worker, or handed back).
    pub(super) fn take_undispatched(&mut self, id: JobId) -> Option<Batch> {
        if let Some(batch) = self.timers.take_job(id) {
            return Some(batch);
        }
        if let Some(at) = self.returned.iter().position(|b| b.job == Some(id)) {
            return Some(self.returned.swap_remove(at));
        }
        self.queues.iter_mut().find_map(|q| q.pending.take_job(id))
    }

    /// Resolves job `id` as expired if it has not started; a job already
    /// running (or finished) is left alone.
    pub(super) fn expire(&mut self, id: JobId) {
        if let Some(batch) = self.take_undispatched(id) {
            self.end_unstarted(batch, JobError::Expired);
            return;
        }
        let Some(&key) = self.dispatched_jobs.get(&id) else {
            return;
        };
        if let Some(conn) = self.conns.iter_mut().find(|c| c.key == key) {
            let mut ctx = Ctx {
                counters: &self.counters,
                done_jobs: &mut self.done_jobs,
                spares: &self.spares,
                returned: &mut self.returned,
                tallies: &mut self.tallies,
                clock: &mut self.clock,
                events: &self.events,
            };
            conn.withdraw(id, JobError::Expired, false, &mut ctx);
        }
    }

    /// Resolves a single job taken out before it started with `error`,
    /// and counts it — as cancelled in the tallies only if its caller
    /// resolved (and counted) it first.
    pub(super) fn end_unstarted(&mut self, mut batch: Batch, error: JobError) {
        if batch.sink.fail_now(error.clone()) {
            self.count(batch.tally, Fate::of_error(&error), 1);
        } else {
            self.tallies.count(batch.tally, Fate::Cancelled, 1);
        }
        batch.forget(batch.count());
    }

    pub(super) fn whereabouts(&self, id: JobId) -> Whereabouts {
        if self.timers.contains(id) {
            return Whereabouts::Scheduled;
        }
        let handed_back = self.returned.iter().any(|b| b.job == Some(id));
        if handed_back || self.queues.iter().any(|q| q.pending.has_job(id)) {
            return Whereabouts::Queued;
        }
        self.dispatched_jobs
            .get(&id)
            .and_then(|key| self.conns.iter().find(|c| c.key == *key))
            .and_then(|c| c.whereabouts(id))
            .unwrap_or(Whereabouts::Elsewhere)
    }

    pub(super) fn cancel(&mut self, id: JobId) -> bool {
        if let Some(batch) = self.take_undispatched(id) {
            self.end_unstarted(batch, JobError::Cancelled);
            return true;
        }
        let Some(&key) = self.dispatched_jobs.get(&id) else {
            return false;
        };
        let Some(conn) = self.conns.iter_mut().find(|c| c.key == key) else {
            return false;
        };
        let mut ctx = Ctx {
            counters: &self.counters,
            done_jobs: &mut self.done_jobs,
            spares: &self.spares,
            returned: &mut self.returned,
            tallies: &mut self.tallies,
            clock: &mut self.clock,
            events: &self.events,
        };
        conn.cancel(id, &mut ctx)
    }
}
