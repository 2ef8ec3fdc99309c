//! The named queues: what waits in each, in which order, and how each
//! queue hands work to its workers.
//!
//! # Order
//!
//! Within a queue, a job of higher priority runs first, and jobs of equal
//! priority run in the order they were submitted ([`Rank`]). With aging
//! (`Queue::aging(every)`), a waiting job rises one level per `every` it
//! waits: its rank is `priority × every − submitted at`, which compares
//! two jobs the same way at any later moment, so the order needs no
//! re-sorting as time passes. A batch handed back (by a dead worker, a
//! recall, a throttle, a task limit) keeps its rank and goes back exactly
//! where it was.
//!
//! [`Pending`] keeps priority-0 jobs of a queue without aging — the common
//! case — in a plain FIFO, as cheap as before queues existed, and every
//! other job in an ordered map; the next job is the better of the two
//! fronts.
//!
//! # Prefetch or exact
//!
//! A queue of fixed size whose jobs all have priority 0 dispatches as the
//! pool always has: a few batches queue in a busy worker's ring, so a
//! worker never waits for the supervisor between jobs. Once a queue sees a
//! job of another priority, has aging, or autoscales, it dispatches
//! *exactly* ([`QueueState::exact`]): work goes only to idle workers, so
//! whatever waits is in this queue, in rank order, visible to the
//! autoscaler; and a batch running below the rank of the best waiting job
//! is recalled (see `transport/status.rs`, `Recall`): its worker hands the
//! items it has not started back after the item in progress. A job of
//! higher priority therefore waits for at most one job of its queue to
//! finish before it starts. The switch is one way; at the switch, work
//! already queued in busy workers is recalled too.

use super::autoscale::Bounds;
use super::standby::Standby;
use crate::batch::{Batch, JobId};
use crate::config::QueueConfig;
use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

/// Where a batch stands in its queue: smaller runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank {
    /// Priority (with aging, `priority × every − submitted at`), higher
    /// first.
    urgency: Reverse<i128>,
    /// Submission order.
    order: u64,
    /// Position of the batch's first item within its submission.
    base: u64,
}

impl Rank {
    /// The rank of `batch` in a queue with `aging` (nanoseconds).
    pub(super) fn of(batch: &Batch, aging: Option<u64>) -> Rank {
        let p = i128::from(batch.opts.priority);
        let urgency = match aging {
            None => p,
            Some(every) => p * i128::from(every) - i128::from(batch.since),
        };
        Rank {
            urgency: Reverse(urgency),
            order: batch.order,
            base: batch.base(),
        }
    }
}

/// The batches waiting in one queue for a worker.
pub(super) struct Pending {
    /// Nanoseconds per priority level of aging (`None`: strict).
    aging: Option<u64>,
    /// Priority-0 batches of a queue without aging, by (order, base).
    fifo: VecDeque<Batch>,
    /// Every other batch, by rank.
    ranked: BTreeMap<Rank, Batch>,
    /// Items waiting in all.
    items: u64,
}

impl Pending {
    pub(super) fn new(aging: Option<u64>) -> Pending {
        Pending {
            aging,
            fifo: VecDeque::new(),
            ranked: BTreeMap::new(),
            items: 0,
        }
    }

    /// Puts `batch` in its place.
    #[inline]
    pub(super) fn push(&mut self, batch: Batch) {
        self.items += u64::from(batch.count());
        if batch.opts.priority != 0 || self.aging.is_some() {
            self.ranked.insert(Rank::of(&batch, self.aging), batch);
            return;
        }
        let key = |b: &Batch| (b.order, b.base());
        let k = key(&batch);
        if self.fifo.back().is_none_or(|b| key(b) <= k) {
            self.fifo.push_back(batch);
        } else {
            // Handed back: it goes back where it was (usually the front).
            let at = self.fifo.partition_point(|b| key(b) < k);
            self.fifo.insert(at, batch);
        }
    }

    /// Whether the next batch is the ranked map's first (else the FIFO's).
    #[inline]
    fn ranked_first(&self) -> bool {
        if self.ranked.is_empty() {
            return false;
        }
        match (self.ranked.first_key_value(), self.fifo.front()) {
            (Some((rank, _)), Some(b)) => *rank < Rank::of(b, None),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The batch that runs next.
    #[inline]
    pub(super) fn front(&self) -> Option<&Batch> {
        if self.ranked_first() {
            self.ranked.first_key_value().map(|(_, b)| b)
        } else {
            self.fifo.front()
        }
    }

    /// The rank of the batch that runs next.
    pub(super) fn front_rank(&self) -> Option<Rank> {
        self.front().map(|b| Rank::of(b, self.aging))
    }

    /// Takes the batch that runs next.
    #[inline]
    pub(super) fn pop(&mut self) -> Option<Batch> {
        let batch = if self.ranked_first() {
            self.ranked.pop_first().map(|(_, b)| b)
        } else {
            self.fifo.pop_front()
        }?;
        self.items -= u64::from(batch.count());
        Some(batch)
    }

    /// Takes single job `id` out, if it waits here.
    pub(super) fn take_job(&mut self, id: JobId) -> Option<Batch> {
        let batch = if let Some(at) = self.fifo.iter().position(|b| b.job == Some(id)) {
            self.fifo.remove(at)
        } else {
            let rank = *self.ranked.iter().find(|(_, b)| b.job == Some(id))?.0;
            self.ranked.remove(&rank)
        }?;
        self.items -= u64::from(batch.count());
        Some(batch)
    }

    /// Every batch, in the order they will run.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Batch> {
        let mut fifo = self.fifo.iter().peekable();
        let mut ranked = self.ranked.iter().peekable();
        std::iter::from_fn(move || match (ranked.peek(), fifo.peek()) {
            (Some((rank, _)), Some(b)) if **rank < Rank::of(b, None) => {
                ranked.next().map(|(_, b)| b)
            }
            (_, Some(_)) => fifo.next(),
            (Some(_), None) => ranked.next().map(|(_, b)| b),
            (None, None) => None,
        })
    }

    /// Whether single job `id` waits here.
    pub(super) fn has_job(&self, id: JobId) -> bool {
        self.fifo
            .iter()
            .chain(self.ranked.values())
            .any(|b| b.job == Some(id))
    }

    /// Takes every batch out, in no particular order.
    pub(super) fn drain(&mut self) -> Vec<Batch> {
        self.items = 0;
        let mut all: Vec<Batch> = self.fifo.drain(..).collect();
        all.extend(std::mem::take(&mut self.ranked).into_values());
        all
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.ranked.is_empty()
    }

    /// Items waiting.
    #[inline]
    pub(super) fn items(&self) -> u64 {
        self.items
    }

    /// Nanoseconds per level of aging, if the queue ages.
    pub(super) fn aging(&self) -> Option<u64> {
        self.aging
    }
}

/// One queue as the supervisor runs it.
pub(super) struct QueueState {
    /// What waits for a worker.
    pub pending: Pending,
    /// Worker bounds now (a resize changes them) and the keep-alive.
    pub bounds: Bounds,
    /// Dispatch exactly: only to idle workers, recalling work ranked below
    /// the best waiting job (see the module docs). Starts true for a queue
    /// that autoscales or ages; becomes true for good when a job of a
    /// priority other than 0 arrives.
    pub exact: bool,
    /// Whether to keep a spare worker forked (`standby.rs`).
    pub standby: Standby,
    /// The next standby is held back until then (coarse ns).
    pub standby_hold: Option<u64>,
    /// Workers taking work at the end of the last `maintain`: fewer now
    /// means workers were lost (not asked to leave by the autoscaler, which
    /// `maintain` accounts for), and forking their replacements counts as
    /// restarts.
    pub strength: usize,
    /// Items this queue's workers may still run (`max_tasks_per_worker`).
    pub tasks_per_worker: Option<u64>,
}

impl QueueState {
    pub(super) fn new(config: &QueueConfig, standby: Option<bool>) -> QueueState {
        let aging = config
            .aging
            .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        let bounds = Bounds::new(config.min_workers, config.max_workers, config.keep_alive);
        QueueState {
            pending: Pending::new(aging),
            exact: bounds.scales() || aging.is_some(),
            bounds,
            standby: Standby::new(standby),
            standby_hold: None,
            strength: 0,
            tasks_per_worker: config.max_tasks_per_worker.map(|t| t as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{JobOpts, Outcome, Sink};
    use crate::worker::call::Call;
    use std::sync::Arc;

    struct Nowhere;
    impl Sink for Nowhere {
        fn deliver(&self, _: u64, _: Outcome) {}
    }

    fn batch(order: u64, priority: i32, since: u64) -> Batch {
        let call = Call {
            trampoline: 0,
            func: 0,
        };
        let opts = JobOpts {
            priority,
            ..JobOpts::default()
        };
        let mut b = Batch::new(call, vec![0; 4], 1, 0, Arc::new(Nowhere), opts, None);
        b.order = order;
        b.since = since;
        b
    }

    fn orders(p: &mut Pending) -> Vec<u64> {
        std::iter::from_fn(|| p.pop()).map(|b| b.order).collect()
    }

    #[test]
    fn higher_priority_first_then_submission_order() {
        let mut p = Pending::new(None);
        for (order, prio) in [(1, 0), (2, 5), (3, -1), (4, 5), (5, 0), (6, 9)] {
            p.push(batch(order, prio, 0));
        }
        assert_eq!(p.items(), 6);
        assert_eq!(orders(&mut p), [6, 2, 4, 1, 5, 3]);
        assert!(p.is_empty() && p.items() == 0);
    }

    #[test]
    fn a_batch_handed_back_goes_back_to_its_place() {
        let mut p = Pending::new(None);
        for order in 1..=4 {
            p.push(batch(order, 0, 0));
        }
        let first = p.pop().unwrap();
        let second = p.pop().unwrap();
        p.push(second);
        p.push(first);
        assert_eq!(orders(&mut p), [1, 2, 3, 4]);
    }

    #[test]
    fn aging_lets_a_patient_job_pass_a_higher_one() {
        let level = 1_000; // ns per priority level
        let mut p = Pending::new(Some(level));
        // Priority 0 submitted at t=0 against priority 1 submitted later.
        p.push(batch(1, 0, 0));
        p.push(batch(2, 1, 1_500)); // waited 1,500 ns less: one level is not enough
        p.push(batch(3, 1, 500)); // waited only 500 ns less: it goes first
        assert_eq!(orders(&mut p), [3, 1, 2]);
    }

    #[test]
    fn single_jobs_are_found_and_taken_out() {
        let mut p = Pending::new(None);
        let mut a = batch(1, 0, 0);
        a.job = Some(JobId(7));
        let mut b = batch(2, 3, 0);
        b.job = Some(JobId(8));
        p.push(a);
        p.push(b);
        assert!(p.has_job(JobId(7)) && p.has_job(JobId(8)) && !p.has_job(JobId(9)));
        assert_eq!(p.take_job(JobId(8)).map(|b| b.order), Some(2));
        assert!(p.take_job(JobId(8)).is_none());
        assert_eq!(p.items(), 1);
        assert_eq!(p.drain().len(), 1);
        assert!(p.is_empty());
    }
}
