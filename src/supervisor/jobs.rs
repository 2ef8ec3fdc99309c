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
use std::sync::atomic::Ordering;

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
        if let Some(mut batch) = self.take_undispatched(id) {
            // Single jobs only: resolved here unless cancelled meanwhile.
            if batch.sink.fail_now(JobError::Expired) {
                self.counters.count_error(&JobError::Expired, 1);
            }
            batch.forget(batch.count());
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
            };
            conn.withdraw(id, JobError::Expired, &mut ctx);
        }
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
        if let Some(mut batch) = self.take_undispatched(id) {
            if batch.sink.cancel_now() {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            batch.forget(batch.count());
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
        };
        conn.cancel(id, &mut ctx)
    }
}
