//! What a worker holds and does, as inspection reports it: the item it
//! runs, the items reserved behind it, and its state.
//!
//! Items are read from the books, not guessed: an item the worker has
//! started (its status word's `started_through`) and not yet answered is
//! running; one it has not started is reserved. A job settled early
//! (withdrawn by a cancellation, an expiry or a revoke) was counted as
//! finished when it was withdrawn, so it is neither.

use super::{Conn, ExitRequest};
use crate::batch::Batch;
use crate::batch::progress::Progress;
use crate::control::events::{Bus, EventKind};
use crate::control::inspection::WorkerState;

/// A worker's jobs, from its books.
pub(in crate::supervisor) struct Held<'a> {
    /// The item it runs now: its batch, since when (precise clock, as the
    /// supervisor saw the worker free for it), its progress, and the items
    /// of its batch left (it included).
    pub active: Option<(&'a Batch, u64, Option<Progress>, u32)>,
    /// Items started and not answered (usually 0 or 1; more only while
    /// answers wait unread in the ring).
    pub running: u64,
    /// Batches (with their unstarted items) queued behind it.
    pub reserved: Vec<(&'a Batch, u32)>,
}

impl Conn {
    /// What the worker holds now.
    pub(in crate::supervisor) fn held(&self) -> Held<'_> {
        let page = self.page();
        let current = page.worker.current.load();
        let started_through = current.started_through().min(self.next_seq);
        let running_seq = current.running();
        let mut held = Held {
            active: None,
            running: 0,
            reserved: Vec::new(),
        };
        for (i, f) in self.book.inflight.iter().enumerate() {
            if f.settled || f.batch.count() == 0 {
                continue;
            }
            let from = f.seq0
                + if i == 0 {
                    u64::from(self.book.out_count)
                } else {
                    0
                };
            let end = f.seq0 + u64::from(f.batch.count());
            let started = started_through.clamp(from, end) - from;
            held.running += started;
            let unstarted = (end - from - started) as u32;
            if unstarted > 0 {
                held.reserved.push((&f.batch, unstarted));
            }
            if let Some(seq) = running_seq
                && (from..end).contains(&seq)
            {
                let progress = page
                    .progress
                    .read(seq + 1)
                    .map(|(done, total)| Progress { done, total });
                let since = f.sent_at.max(self.book.answered_at);
                held.active = Some((&f.batch, since, progress, (end - seq) as u32));
            }
        }
        held
    }

    /// Tells `bus` of the job it runs, if that is news: started, or new
    /// progress.
    pub(in crate::supervisor) fn watch(&mut self, bus: &Bus) {
        let page = self.region.page();
        let Some(seq) = page.worker.current.load().running() else {
            return;
        };
        let pid = self.book.pid;
        let Some(f) = self
            .book
            .inflight
            .iter_mut()
            .find(|f| (f.seq0..f.seq0 + u64::from(f.batch.count())).contains(&seq))
        else {
            return;
        };
        let Some(id) = f.batch.job else { return };
        if !f.told_started {
            f.told_started = true;
            bus.publish(EventKind::Started {
                id,
                function: f.batch.name,
                worker_pid: pid,
                attempt: f.batch.sink.attempt(),
            });
        }
        let progress = page
            .progress
            .read(seq + 1)
            .map(|(done, total)| Progress { done, total });
        if let Some(p) = progress
            && f.progress != progress
        {
            f.progress = progress;
            bus.publish(EventKind::Progress { id, progress: p });
        }
    }

    /// What the worker is doing.
    pub(in crate::supervisor) fn state(&self) -> WorkerState {
        if self.finished() || self.status.is_some() || self.gone || self.hup {
            WorkerState::Exited
        } else if self.standby {
            WorkerState::Standby
        } else if !self.book.ready {
            WorkerState::Starting
        } else if self.dying()
            || self.book.retiring
            || self.exit != ExitRequest::None
            || self.tasks_left == Some(0)
        {
            WorkerState::Leaving
        } else if self.busy() {
            WorkerState::Busy
        } else {
            WorkerState::Idle
        }
    }

    /// Items it has answered.
    pub(in crate::supervisor) fn jobs_done(&self) -> u64 {
        self.book.answered
    }

    /// Coarse-clock instant it was created (forked a moment later).
    pub(in crate::supervisor) fn born(&self) -> u64 {
        self.born
    }
}
