//! Revoking a job by id, wherever it is.
//!
//! A revoke first marks the job's record (`Sink::revoke`), so no later
//! attempt of it can run: a retry checks the mark before it is submitted,
//! and `accept` drops an attempt that arrives marked. Then it takes the
//! job out of the timers or its queue, or withdraws it from its worker —
//! skipped if it has not started; if it runs, killed only on `terminate`
//! and only while the worker is still on it (the `RUNNING → KILL` claim of
//! `conn/limits.rs`).
//!
//! Why a revoke is never lost: commands reach the supervisor in the order
//! they were sent, and `commands()` applies the revokes of one drain after
//! its submissions. So an attempt submitted before the revoke — a retry a
//! worker's failure queued while the revoke was on its way — is in the
//! supervisor's hands when the revoke is applied. An id found nowhere is
//! over: its last attempt ended and queued no other.

use super::Supervisor;
use super::conn::{Ctx, Withdrawal};
use crate::batch::{Batch, JobId};
use crate::control::revoke::{Revoked, Stage};
use crate::error::JobError;

impl Supervisor {
    /// Revokes job `id`; kills its worker if it runs and `terminate`.
    pub(super) fn revoke(&mut self, id: JobId, terminate: bool) -> Revoked {
        let stage = if self.timers.contains(id) {
            Stage::Scheduled
        } else {
            Stage::Waiting
        };
        if let Some(batch) = self.take_undispatched(id) {
            batch.sink.revoke();
            self.end_unstarted(batch, JobError::Revoked);
            return Revoked::BeforeStart(stage);
        }
        let Some(&key) = self.dispatched_jobs.get(&id) else {
            return Revoked::NotFound;
        };
        let Some(conn) = self.conns.iter_mut().find(|c| c.key == key) else {
            return Revoked::NotFound;
        };
        if let Some(b) = conn.in_flight().find(|b| b.job == Some(id)) {
            b.sink.revoke();
        }
        let mut ctx = Ctx {
            counters: &self.counters,
            done_jobs: &mut self.done_jobs,
            spares: &self.spares,
            returned: &mut self.returned,
            tallies: &mut self.tallies,
            clock: &mut self.clock,
            events: &self.events,
        };
        match conn.withdraw(id, JobError::Revoked, terminate, &mut ctx) {
            Withdrawal::Skipped => Revoked::BeforeStart(Stage::Reserved),
            Withdrawal::Killed => Revoked::Terminated,
            Withdrawal::Running => Revoked::LeftRunning,
            Withdrawal::NotHere => Revoked::NotFound,
        }
    }

    /// Gives `batch` back, unless it is an attempt of a job revoked while
    /// it was on its way here: that ends unrun.
    pub(super) fn drop_revoked(&mut self, batch: Batch) -> Option<Batch> {
        if batch.job.is_none() || !batch.sink.is_revoked() {
            return Some(batch);
        }
        self.end_unstarted(batch, JobError::Revoked);
        None
    }
}
