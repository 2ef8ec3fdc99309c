//! Taking jobs in and handing them to workers.
//!
//! A submitted batch waits in the timers if it may not start yet, else in
//! its queue's pending work, in rank order (`queues.rs`). Dispatch hands
//! each queue's next batch to the least-loaded worker of that queue that
//! may take it, preferring workers already up. A queue that dispatches by
//! prefetch lets a few batches queue in a busy worker's ring when jobs are
//! small ([`PREFETCH_BATCHES`], [`PREFETCH_SINGLES`]), so a worker never
//! waits for the supervisor between jobs; an exact queue hands work only to
//! idle workers and recalls work ranked below what waits. Work a caller
//! gave up on (a cancelled workflow, a dropped `imap`) is recalled from the
//! workers that hold it, so it does not run. Before a batch goes out, expired
//! jobs are resolved, a function's throttle (its rate limit) is asked —
//! throttled items go one at a time, only to a worker with nothing queued
//! — and a worker near its `max_tasks_per_worker` gets only what it may
//! still run.

use super::Supervisor;
use super::queues::Rank;
use crate::batch::Batch;
use crate::error::JobError;
use crate::metrics::fate::Fate;
use crate::sys::clock;

/// Most batches of several items queued at one worker.
const PREFETCH_BATCHES: usize = 2;
/// Most single-item batches queued at one worker.
const PREFETCH_SINGLES: usize = 32;

impl Supervisor {
    /// Takes in a submitted batch: to the timers if it may not start yet,
    /// else to its queue.
    pub(super) fn accept(&mut self, mut batch: Batch) {
        let queue = (self.queues.len() - 1).min(usize::from(batch.opts.queue)) as u16;
        batch.tally = self.tallies.key(batch.call.func, batch.name, queue);
        self.taken_in += u64::from(batch.count());
        self.tell_submitted(&batch);
        let Some(mut batch) = self.drop_revoked(batch) else {
            return;
        };
        batch.throttle = self.throttles.get(batch.call.func);
        batch.order = self.next_order;
        self.next_order += 1;
        if let (Some(at), Some(id)) = (batch.opts.expires_at, batch.job) {
            self.timers.watch_expiry(at, id);
        }
        match batch.opts.not_before {
            Some(at) if at > self.clock.coarse() => self.timers.schedule(at, batch),
            _ => self.enqueue(batch),
        }
    }

    /// Puts `batch` in its queue's pending work, in its place. A job of a
    /// priority other than 0 turns its queue exact for good (see
    /// `queues.rs`): work already queued in busy workers is recalled, so
    /// that it cannot run ahead of it.
    #[inline]
    pub(super) fn enqueue(&mut self, mut batch: Batch) {
        let q = usize::from(batch.opts.queue).min(self.queues.len() - 1);
        if batch.since == 0 {
            // The wait for a worker counts from a job's first arrival here,
            // for aging and for statistics (a countdown's wait is not
            // counted; a batch handed back keeps its time).
            batch.since = self.clock.precise();
        }
        if batch.opts.priority != 0 && !self.queues[q].exact {
            self.queues[q].exact = true;
            for c in self.conns.iter_mut().filter(|c| c.queue == q) {
                c.recall();
            }
        }
        self.queues[q].pending.push(batch);
    }

    /// Moves batches whose start time came to their queue, and expires
    /// jobs whose expiry came before they started.
    pub(super) fn run_timers(&mut self) {
        let now = self.clock.coarse();
        while let Some(batch) = self.timers.pop_due(now) {
            self.enqueue(batch);
        }
        while let Some(id) = self.timers.pop_expired(now) {
            self.expire(id);
        }
    }

    /// Hands pending batches to workers, queue by queue.
    pub(super) fn dispatch(&mut self) {
        for batch in std::mem::take(&mut self.returned) {
            self.enqueue(batch);
        }
        for q in 0..self.queues.len() {
            self.dispatch_queue(q);
            if self.queues[q].exact {
                self.recall_below(q);
            }
        }
    }

    fn dispatch_queue(&mut self, q: usize) {
        let now = self.clock.coarse();
        while let Some(front) = self.queues[q].pending.front() {
            if !front.sink.claim() {
                // Cancelled by its caller, or its iterator was dropped: it
                // ends here, unrun (counted by its caller, if it counts).
                let mut batch = self.queues[q].pending.pop().expect("front exists");
                let n = u64::from(batch.count());
                if batch.sink.counts_declined() {
                    self.tallies.count(batch.tally, Fate::Cancelled, n);
                } else {
                    self.count(batch.tally, Fate::Cancelled, n);
                }
                batch.forget(n as u32);
                continue;
            }
            if front.opts.expires_at.is_some_and(|at| at <= now) {
                let mut batch = self.queues[q].pending.pop().expect("front exists");
                let n = batch.count();
                self.count(batch.tally, Fate::Expired, u64::from(n));
                batch.fail(n, JobError::Expired);
                continue;
            }
            let Some(i) = self.pick(q, front) else { return };
            let mut batch = self.queues[q].pending.pop().expect("front exists");
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
                self.queues[q].pending.push(batch);
                batch = front_part;
            }
            let job = batch.job;
            let key = self.conns[i].key;
            let sent = self.clock.precise();
            // Handed to a worker, the items leave the bounded queue.
            let ticket = batch.ticket.take();
            match self.conns[i].try_send(batch, sent) {
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
                    self.queues[q].pending.push(batch);
                    return;
                }
            }
        }
    }

    /// Exact dispatch: when a batch waits that ranks above work a busy
    /// worker of the queue holds but has not started, recall that work —
    /// the worker hands it back after the item in progress and takes the
    /// better batch. So a waiting job waits for at most one job of its
    /// queue to finish.
    fn recall_below(&mut self, q: usize) {
        let Some(best) = self.queues[q].pending.front_rank() else {
            return;
        };
        let aging = self.queues[q].pending.aging();
        for c in self.conns.iter_mut().filter(|c| c.queue == q) {
            if c.in_flight().any(|b| Rank::of(b, aging) > best) {
                c.recall();
            }
        }
    }

    /// Takes back, from every worker that holds a batch its caller gave up
    /// on (`Sink::claim` is false: a cancelled workflow's members, a
    /// dropped `imap`'s items), what the worker has not started. The items
    /// come back through `returned`, reach the front of their queue and are
    /// dropped there unrun, as declined batches that never left are. Other
    /// work recalled with them keeps its rank and goes out again. An item
    /// the worker started before it saw the recall runs on.
    pub(super) fn recall_declined(&mut self) {
        for c in &mut self.conns {
            // Single jobs are not looked at: a cancelled one is withdrawn
            // through its cancel slot (`conn/limits.rs`).
            if c.in_flight()
                .any(|b| b.job.is_none() && b.count() > 0 && !b.sink.claim())
            {
                c.recall();
            }
        }
    }

    /// Asks the batch's throttle whether its first item may start now. Throttled
    /// items go one at a time: the rest of the batch goes back to its
    /// queue. An item refused waits in the timers until the instant the
    /// throttle gave, then queues again.
    pub(super) fn pass_throttle(&mut self, mut batch: Batch, now: u64) -> Option<Batch> {
        if batch.count() > 1 {
            let one = batch.split_front(1);
            self.enqueue(batch);
            batch = one;
        }
        let throttle = batch.throttle.as_ref().expect("throttled batch");
        // Starts are spaced on the precise clock: two coarse readings may
        // each trail the real time by up to a tick, which would let two
        // starts come closer than the limit. The instant handed back is
        // then waited for on the coarse clock, which never passes it early.
        match throttle.admit(clock::precise_ns(), batch.throttle_waited) {
            Ok(()) => Some(batch),
            Err(at) => {
                batch.throttle_waited = true;
                self.timers.schedule(at.max(now + 1), batch);
                None
            }
        }
    }

    /// The worker of queue `q` to send `batch` to: the least loaded that
    /// may take it, preferring workers that are already up. A gated item,
    /// or any batch of an exact queue, goes only to a worker with nothing
    /// queued, so that it starts when it is sent.
    pub(super) fn pick(&self, q: usize, batch: &Batch) -> Option<usize> {
        let single = batch.count() == 1;
        let queue_limit = if self.queues[q].exact || batch.throttle.is_some() {
            1
        } else if single {
            PREFETCH_SINGLES
        } else {
            PREFETCH_BATCHES
        };
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.queue == q && c.accepts(batch.job.is_some()))
            .filter(|(_, c)| c.inflight_batches() < queue_limit)
            .min_by_key(|(_, c)| (c.inflight_items(), !c.is_ready()))
            .map(|(i, _)| i)
    }
}
