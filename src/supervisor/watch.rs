//! Telling event subscribers what the supervisor sees (`control/events.rs`):
//! jobs taken in, jobs seen started and their progress, workers forked and
//! exited. Jobs' ends are told by their records as they resolve (the slot
//! finishers of `client/` and `options/`), so an end is told exactly once.
//!
//! Nothing here runs unless someone listens. While someone does and a
//! worker is busy, the supervisor looks at least every [`LOOK_EVERY_NS`],
//! so that a long job's start and progress are told while it runs.

use super::Supervisor;
use super::conn::Conn;
use crate::batch::Batch;
use crate::control::events::EventKind;

/// How often the supervisor looks at busy workers while someone listens.
const LOOK_EVERY_NS: u64 = 100_000_000;

impl Supervisor {
    /// Tells of jobs seen started and of new progress; returns when to look
    /// again (coarse ns), if someone listens and a worker is busy.
    pub(super) fn watch(&mut self) -> Option<u64> {
        if !self.events.watching() {
            return None;
        }
        let mut busy = false;
        for c in &mut self.conns {
            busy |= c.busy();
            c.watch(&self.events);
        }
        busy.then(|| self.clock.coarse() + LOOK_EVERY_NS)
    }

    /// Tells that the supervisor took in `batch` (a job with an id).
    pub(super) fn tell_submitted(&self, batch: &Batch) {
        if let Some(id) = batch.job
            && self.events.watching()
        {
            self.events.publish(EventKind::Submitted {
                id,
                function: batch.name,
                queue: self.queue_names[self.queue_of(batch)].clone(),
                priority: batch.opts.priority,
            });
        }
    }

    /// Tells that worker `c` was forked.
    pub(super) fn tell_forked(&self, c: &Conn) {
        if self.events.watching() {
            self.events.publish(EventKind::WorkerForked {
                pid: c.pid().map_or(0, |p| p as u32),
                queue: self.queue_names[c.queue].clone(),
                replacing: c.replacing,
            });
        }
    }

    /// Tells that worker `c` exited.
    pub(super) fn tell_exited(&self, c: &Conn) {
        if self.events.watching() {
            let status = c.status;
            self.events.publish(EventKind::WorkerExited {
                pid: c.pid().map_or(0, |p| p as u32),
                queue: self.queue_names[c.queue].clone(),
                signal: status.and_then(|s| s.signal()),
                exit_code: status.and_then(|s| s.code()),
                by_the_pool: c.ended_on_purpose() || c.shrunk,
            });
        }
    }
}
