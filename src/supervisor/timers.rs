//! The supervisor's timers: batches that may not start yet, and the expiry
//! times of jobs that must not start late.
//!
//! A delayed job (a countdown or ETA, a retry's backoff, a rate limit's
//! next slot) waits here, in a min-heap on its start time, until it is due;
//! then it joins the dispatch queue like any other. No worker is held while
//! it waits. Expiry times sit in a second heap, so a job that has not
//! started by its expiry is resolved at that moment — wherever it is — and
//! not only when a worker frees up.
//!
//! Promises: every batch put in is given back exactly once, by
//! [`Timers::pop_due`], [`Timers::take_job`] or [`Timers::drain`] (a batch
//! dropped here would resolve as cancelled, as every batch does).

use crate::batch::Batch;
use crate::batch::JobId;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A batch waiting for its start time.
struct Delayed {
    at: u64,
    /// Arrival order, so batches due at the same instant leave in order.
    seq: u64,
    batch: Batch,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    /// Reversed, so the max-heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
pub(super) struct Timers {
    delayed: BinaryHeap<Delayed>,
    seq: u64,
    /// Items (not batches) waiting in `delayed`.
    items: u64,
    /// `(expires_at, job)` of single jobs with an expiry; entries of jobs
    /// that finished first are dropped when they come up.
    expiries: BinaryHeap<Reverse<(u64, JobId)>>,
}

impl Timers {
    /// Holds `batch` until `at` (coarse-clock ns).
    pub(super) fn schedule(&mut self, at: u64, batch: Batch) {
        self.items += u64::from(batch.count());
        self.seq += 1;
        self.delayed.push(Delayed {
            at,
            seq: self.seq,
            batch,
        });
    }

    /// Remembers that job `id` expires at `at`.
    pub(super) fn watch_expiry(&mut self, at: u64, id: JobId) {
        self.expiries.push(Reverse((at, id)));
    }

    /// The next instant something here falls due.
    pub(super) fn next_wake(&self) -> Option<u64> {
        let a = self.delayed.peek().map(|d| d.at);
        let b = self.expiries.peek().map(|Reverse((at, _))| *at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next batch whose start time has come, earliest first.
    pub(super) fn pop_due(&mut self, now: u64) -> Option<Batch> {
        if self.delayed.peek()?.at > now {
            return None;
        }
        let d = self.delayed.pop().expect("peeked");
        self.items -= u64::from(d.batch.count());
        Some(d.batch)
    }

    /// The next job whose expiry has come.
    pub(super) fn pop_expired(&mut self, now: u64) -> Option<JobId> {
        let Reverse((at, _)) = self.expiries.peek()?;
        if *at > now {
            return None;
        }
        self.expiries.pop().map(|Reverse((_, id))| id)
    }

    /// Takes job `id`'s batch out, if it waits here.
    pub(super) fn take_job(&mut self, id: JobId) -> Option<Batch> {
        if !self.contains(id) {
            return None;
        }
        let mut found = None;
        let rest: Vec<Delayed> = std::mem::take(&mut self.delayed)
            .into_vec()
            .into_iter()
            .filter_map(|d| {
                if found.is_none() && d.batch.job == Some(id) {
                    found = Some(d.batch);
                    None
                } else {
                    Some(d)
                }
            })
            .collect();
        self.delayed = BinaryHeap::from(rest);
        if let Some(b) = &found {
            self.items -= u64::from(b.count());
        }
        found
    }

    /// Every waiting batch with its start time (coarse ns), soonest first.
    pub(super) fn scheduled(&self) -> Vec<(u64, &Batch)> {
        let mut all: Vec<&Delayed> = self.delayed.iter().collect();
        all.sort_by_key(|d| (d.at, d.seq));
        all.into_iter().map(|d| (d.at, &d.batch)).collect()
    }

    /// Whether job `id` waits here.
    pub(super) fn contains(&self, id: JobId) -> bool {
        self.delayed.iter().any(|d| d.batch.job == Some(id))
    }

    /// Items waiting for their start time.
    pub(super) fn items(&self) -> u64 {
        self.items
    }

    pub(super) fn is_empty(&self) -> bool {
        self.delayed.is_empty()
    }

    /// Takes every waiting batch out.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Batch> + use<> {
        self.items = 0;
        self.expiries.clear();
        std::mem::take(&mut self.delayed)
            .into_vec()
            .into_iter()
            .map(|d| d.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{JobOpts, Outcome, Sink};
    use crate::worker::call::Call;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);
    impl Sink for Record {
        fn deliver(&self, base: u64, outcome: Outcome) {
            self.0.lock().unwrap().push(format!("{base}: {outcome:?}"));
        }
    }

    fn batch(sink: &Arc<Record>, id: u64) -> Batch {
        fn f(x: u8) -> u8 {
            x
        }
        Batch::new(
            Call::new(f, crate::transport::codec::Codec::Bincode),
            vec![1, 0, 0, 0, 7],
            1,
            id,
            sink.clone(),
            JobOpts::default(),
            Some(JobId(id)),
        )
    }

    #[test]
    fn batches_leave_in_time_order_and_only_when_due() {
        let sink = Arc::new(Record::default());
        let mut t = Timers::default();
        t.schedule(30, batch(&sink, 3));
        t.schedule(10, batch(&sink, 1));
        t.schedule(30, batch(&sink, 4));
        t.schedule(20, batch(&sink, 2));
        assert_eq!((t.items(), t.next_wake()), (4, Some(10)));
        assert!(t.pop_due(9).is_none());
        let order: Vec<_> = std::iter::from_fn(|| t.pop_due(30))
            .map(|mut b| {
                let id = b.job.unwrap().0;
                b.forget(1);
                id
            })
            .collect();
        assert_eq!(order, [1, 2, 3, 4], "same instant: arrival order");
        assert!(t.is_empty());
        assert_eq!(t.items(), 0);
        assert!(sink.0.lock().unwrap().is_empty(), "nothing was resolved");
    }

    #[test]
    fn jobs_can_be_taken_out_and_expiries_come_due() {
        let sink = Arc::new(Record::default());
        let mut t = Timers::default();
        t.schedule(100, batch(&sink, 1));
        t.schedule(200, batch(&sink, 2));
        t.watch_expiry(50, JobId(2));
        assert_eq!(t.next_wake(), Some(50));
        assert_eq!(t.pop_expired(49), None);
        assert_eq!(t.pop_expired(50), Some(JobId(2)));
        let mut b = t.take_job(JobId(2)).expect("waiting");
        b.forget(1);
        assert!(t.take_job(JobId(2)).is_none());
        assert!(t.contains(JobId(1)));
        assert_eq!(t.items(), 1);
        // Whatever is left resolves as cancelled when dropped.
        drop(t.drain().collect::<Vec<_>>());
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("Cancelled"), "{got:?}");
    }
}
