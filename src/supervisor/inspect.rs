//! The answer to `Pool::inspect`: a snapshot of everything the supervisor
//! holds, taken between two steps (see `control/inspection.rs` for what it
//! promises).
//!
//! It walks the timers, every queue and every worker's books once. With
//! 10,000 jobs waiting that is a few hundred microseconds, during which
//! the supervisor dispatches nothing — the price of a picture in which
//! every job is in exactly one place. Reading workers' memory from
//! `/proc` is left to the caller's thread (`client/shared.rs`), so the
//! supervisor never waits on the file system.

use super::Supervisor;
use crate::batch::Batch;
use crate::control::inspection::{
    ActiveJob, FunctionStats, Inspection, QueueView, ScheduledJob, Totals, WaitingJob, WorkerView,
};
use std::time::{Duration, SystemTime};

impl Supervisor {
    /// Everything the supervisor holds, now.
    pub(super) fn snapshot(&mut self) -> Inspection {
        let coarse = self.clock.coarse();
        let precise = self.clock.precise();
        let wall = SystemTime::now();
        let name = |q: usize| self.config.queues[q].name.clone();
        let mut queues: Vec<QueueView> = (0..self.queues.len())
            .map(|q| QueueView {
                name: name(q),
                stats: self.tallies.of_queue(q),
                ..QueueView::default()
            })
            .collect();
        let waiting = |b: &Batch, items: u32| WaitingJob {
            id: b.job,
            function: b.name,
            priority: b.opts.priority,
            items,
            waited: Duration::from_nanos(precise.saturating_sub(b.since)),
        };
        let mut totals = Totals {
            submitted: self.taken_in,
            finished: self.tallies.finished(),
            ..Totals::default()
        };
        for (at, b) in self.timers.scheduled() {
            totals.scheduled += u64::from(b.count());
            let q = self.queue_of(b);
            queues[q].scheduled.push(ScheduledJob {
                id: b.job,
                function: b.name,
                priority: b.opts.priority,
                items: b.count(),
                due_in: Duration::from_nanos(at.saturating_sub(coarse)),
            });
        }
        for b in &self.returned {
            totals.waiting += u64::from(b.count());
            queues[self.queue_of(b)].waiting.push(waiting(b, b.count()));
        }
        for (q, state) in self.queues.iter().enumerate() {
            totals.waiting += state.pending.items();
            queues[q]
                .waiting
                .extend(state.pending.iter().map(|b| waiting(b, b.count())));
        }
        let mut active = Vec::new();
        let mut workers = Vec::with_capacity(self.conns.len());
        for c in &self.conns {
            let held = c.held();
            totals.running += held.running;
            for &(b, n) in &held.reserved {
                totals.reserved += u64::from(n);
                queues[c.queue].reserved.push(waiting(b, n));
            }
            let pid = c.pid().map_or(0, |p| p as u32);
            if let Some((b, since, progress, items_left)) = held.active {
                let running_for = Duration::from_nanos(precise.saturating_sub(since));
                active.push(ActiveJob {
                    id: b.job,
                    function: b.name,
                    queue: name(c.queue),
                    worker_pid: pid,
                    running_for,
                    started_at: wall.checked_sub(running_for).unwrap_or(wall),
                    progress,
                    attempt: if b.job.is_some() { b.sink.attempt() } else { 1 },
                    items_left,
                });
            }
            workers.push(WorkerView {
                pid,
                queue: name(c.queue),
                state: c.state(),
                jobs_done: c.jobs_done(),
                rss_bytes: None,
                uptime: Duration::from_nanos(coarse.saturating_sub(c.born())),
            });
        }
        Inspection {
            taken_at: Some(wall),
            totals,
            active,
            queues,
            workers,
            functions: self
                .tallies
                .by_function()
                .into_iter()
                .map(|(name, stats)| FunctionStats { name, stats })
                .collect(),
            // The pool adds them: the scheduler is above the supervisor.
            schedules: Vec::new(),
        }
    }

    /// The queue a batch waits in (its index, bounded as `enqueue` bounds it).
    pub(super) fn queue_of(&self, b: &Batch) -> usize {
        usize::from(b.opts.queue).min(self.queues.len() - 1)
    }
}
