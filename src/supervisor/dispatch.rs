//! Taking jobs in and handing them to workers.
//!
//! A submitted batch waits in the timers if it may not start yet, else in
//! the dispatch queue (`pending`, oldest first). Dispatch hands the front
//! batch to the least-loaded worker that may take it, preferring workers
//! already up; a few batches may queue in a worker's ring when jobs are
//! small ([`PREFETCH_BATCHES`], [`PREFETCH_SINGLES`]), so a worker never
//! waits for the supervisor between jobs. Before a batch goes out, expired
//! jobs are resolved, a function's throttle (its rate limit) is asked —
//! throttled items go one at a time, only to a worker with nothing queued
//! — and a worker near its `max_tasks_per_worker` gets only what it may
//! still run.

use super::Supervisor;
use crate::batch::Batch;
use crate::error::JobError;
use crate::sys::clock;

/// Most batches of several items queued at one worker.
const PREFETCH_BATCHES: usize = 2;
/// Most single-item batches queued at one worker.
const PREFETCH_SINGLES: usize = 32;

impl Supervisor {
    /// Takes in a submitted batch: to the timers if it may not start yet,
    /// else to the dispatch queue.
    pub(super) fn accept(&mut self, mut batch: Batch) {
        batch.throttle = self.throttles.get(batch.call.func);
        if let (Some(at), Some(id)) = (batch.opts.expires_at, batch.job) {
            self.timers.watch_expiry(at, id);
        }
        match batch.opts.not_before {
            Some(at) if at > clock::coarse_ns() => self.timers.schedule(at, batch),
            _ => self.pending.push_back(batch),
        }
    }

    /// Moves batches whose start time came to the dispatch queue, and
    /// expires jobs whose expiry came before they started.
    pub(super) fn run_timers(&mut self) {
        let now = clock::coarse_ns();
        while let Some(batch) = self.timers.pop_due(now) {
            self.pending.push_back(batch);
        }
        while let Some(id) = self.timers.pop_expired(now) {
            self.expire(id);
        }
    }

    /// Hands pending batches to workers.
    pub(super) fn dispatch(&mut self) {
        let now = clock::coarse_ns();
        while let Some(front) = self.pending.front() {
            if !front.sink.claim() {
                let mut batch = self.pending.pop_front().expect("front exists");
                batch.forget(batch.count());
                continue;
            }
            if front.opts.expires_at.is_some_and(|at| at <= now) {
                let mut batch = self.pending.pop_front().expect("front exists");
                let n = batch.count();
                self.counters.count_error(&JobError::Expired, u64::from(n));
                batch.fail(n, JobError::Expired);
                continue;
            }
            let Some(i) = self.pick(front) else { return };
            let mut batch = self.pending.pop_front().expect("front exists");
            if batch.throttle.is_some() {
                match self.pass_throttle(batch, now) {
                    Some(admitted) => batch = admitted,
                    None => continue,
                }
            }
            if let Some(left) = self.conns[i].tasks_left()
                && left < u64::from(batch.count())
            {
                let front_part = batch.split_front(left as u32);
                self.pending.push_front(batch);
                batch = front_part;
            }
            let job = batch.job;
            let key = self.conns[i].key;
            // Handed to a worker, the items leave the bounded queue.
            let ticket = batch.ticket.take();
            match self.conns[i].try_send(batch) {
                Ok(()) => {
                    drop(ticket);
                    if let Some(id) = job {
                        self.dispatched_jobs.insert(id, key);
                    }
                    if self.conns[i].tasks_left() == Some(0) {
                        self.conns[i].request_exit();
                    }
                }
                Err(mut batch) => {
                    batch.ticket = ticket;
                    self.pending.push_front(batch);
                    return;
                }
            }
        }
    }

    /// Asks the batch's throttle whether its first item may start now. Throttled
    /// items go one at a time: the rest of the batch goes back to the
    /// queue's front. An item refused waits in the timers until the instant
    /// the throttle gave, then queues again.
    pub(super) fn pass_throttle(&mut self, mut batch: Batch, now: u64) -> Option<Batch> {
        if batch.count() > 1 {
            let one = batch.split_front(1);
            self.pending.push_front(batch);
            batch = one;
        }
        let throttle = batch.throttle.as_ref().expect("throttled batch");
        match throttle.admit(now, batch.throttle_waited) {
            Ok(()) => Some(batch),
            Err(at) => {
                batch.throttle_waited = true;
                self.timers.schedule(at.max(now + 1), batch);
                None
            }
        }
    }

    /// The worker to send `batch` to: the least loaded that may take it,
    /// preferring workers that are already up. A gated item goes only to a
    /// worker with nothing queued, so that it starts when it is sent.
    pub(super) fn pick(&self, batch: &Batch) -> Option<usize> {
        let single = batch.count() == 1;
        let queue_limit = if single {
            PREFETCH_SINGLES
        } else {
            PREFETCH_BATCHES
        };
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.accepts(batch.job.is_some()) && c.inflight_batches() < queue_limit)
            .filter(|(_, c)| batch.throttle.is_none() || !c.busy())
            .min_by_key(|(_, c)| (c.inflight_items(), !c.is_ready()))
            .map(|(i, _)| i)
    }
}
