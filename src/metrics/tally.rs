//! What the supervisor keeps about each function and each queue: how many
//! jobs ended each way, how long they waited for a worker, and how long
//! they ran — in bounded memory (two HDR histograms each, whatever the
//! number of jobs).
//!
//! A function is told apart by its identity in the pool (the address its
//! jobs are called through) and its name, so two names given to jobs of
//! one function keep two tallies. The number of tallies is bounded by the
//! program's functions: names are `&'static str`.
//!
//! What a tally does not see: a job refused before it reached the
//! supervisor (its argument did not encode, the pool was closed), which
//! the pool's own counters count.

use super::durations::{DurationSummary, Durations};
use super::fate::Fate;
use serde::Serialize;
use std::collections::HashMap;

/// How many jobs ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Outcomes {
    /// Returned a result.
    pub completed: u64,
    /// Failed: the sum of the kinds below, and other failures.
    pub failed: u64,
    /// Their function panicked.
    pub panicked: u64,
    /// Their worker died under them.
    pub crashed: u64,
    /// Ran past their hard time limit.
    pub timed_out: u64,
    /// Their argument or result did not (de)serialize, or was too large.
    pub codec_errors: u64,
    /// A fallible job returned its own `Err`.
    pub errored: u64,
    /// Had not started by their expiry.
    pub expired: u64,
    /// Cancelled or revoked before they produced a result.
    pub cancelled: u64,
}

impl Outcomes {
    /// Jobs that ended, every way.
    pub fn total(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }

    fn count(&mut self, fate: Fate, n: u64) {
        let kind = match fate {
            Fate::Completed => return self.completed += n,
            Fate::Cancelled => return self.cancelled += n,
            Fate::Panicked => Some(&mut self.panicked),
            Fate::Crashed => Some(&mut self.crashed),
            Fate::TimedOut => Some(&mut self.timed_out),
            Fate::Codec => Some(&mut self.codec_errors),
            Fate::Errored => Some(&mut self.errored),
            Fate::Expired => Some(&mut self.expired),
            Fate::Failed => None,
        };
        if let Some(k) = kind {
            *k += n;
        }
        self.failed += n;
    }
}

/// The statistics of one function or one queue: outcomes, and the
/// distributions of the time jobs waited for a worker and ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct JobStats {
    /// How many jobs ended each way.
    pub outcomes: Outcomes,
    /// From the moment a job could start (submitted, or its countdown
    /// over) until a worker was given it.
    pub waited: DurationSummary,
    /// From the moment a worker started a job until its answer came back,
    /// as the supervisor saw it (answers of a batch are shared out evenly
    /// among its items).
    pub ran: DurationSummary,
}

/// One tally: the live side of [`JobStats`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    outcomes: Outcomes,
    waited: Durations,
    ran: Durations,
}

impl Tally {
    pub(crate) fn stats(&self) -> JobStats {
        JobStats {
            outcomes: self.outcomes,
            waited: self.waited.summary(),
            ran: self.ran.summary(),
        }
    }
}

/// Which tallies a batch counts in: its function's and its queue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TallyKey {
    pub function: u32,
    pub queue: u16,
}

impl TallyKey {
    /// The key of a batch the supervisor has not taken in (only tests
    /// hand such batches to workers): it counts in no tally.
    pub(crate) const NONE: TallyKey = TallyKey {
        function: u32::MAX,
        queue: u16::MAX,
    };
}

/// Every function's and queue's tally.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    /// By function: its name, and its tally.
    functions: Vec<(&'static str, Tally)>,
    /// (function identity, name address, name length) → index.
    index: HashMap<(usize, usize, usize), u32>,
    /// The last lookup: jobs come in runs of one function, so this spares
    /// the hash of almost every one.
    last: Option<((usize, usize, usize), u32)>,
    queues: Vec<Tally>,
}

impl Tallies {
    /// Tallies for `queues` queues.
    pub(crate) fn new(queues: usize) -> Tallies {
        Tallies {
            queues: vec![Tally::default(); queues],
            ..Tallies::default()
        }
    }

    /// The key of a batch of function `func` called `name`, in `queue`.
    pub(crate) fn key(&mut self, func: usize, name: &'static str, queue: u16) -> TallyKey {
        let id = (func, name.as_ptr() as usize, name.len());
        if let Some((last, function)) = self.last
            && last == id
        {
            return TallyKey { function, queue };
        }
        let functions = &mut self.functions;
        let function = *self.index.entry(id).or_insert_with(|| {
            functions.push((name, Tally::default()));
            (functions.len() - 1) as u32
        });
        self.last = Some((id, function));
        TallyKey { function, queue }
    }

    /// The tallies `key` names (none for [`TallyKey::NONE`]).
    fn both(&mut self, key: TallyKey) -> impl Iterator<Item = &mut Tally> {
        let f = self
            .functions
            .get_mut(key.function as usize)
            .map(|(_, t)| t);
        let q = self.queues.get_mut(usize::from(key.queue));
        f.into_iter().chain(q)
    }

    /// `n` jobs ended with `fate`.
    #[inline]
    pub(crate) fn count(&mut self, key: TallyKey, fate: Fate, n: u64) {
        if n > 0 {
            for t in self.both(key) {
                t.outcomes.count(fate, n);
            }
        }
    }

    /// `n` jobs waited `waited` ns each to start, then ran `ran` ns each.
    pub(crate) fn timed(&mut self, key: TallyKey, waited: u64, ran: u64, n: u64) {
        if n > 0 {
            for t in self.both(key) {
                t.waited.record(waited, n);
                t.ran.record(ran, n);
            }
        }
    }

    /// Jobs that ended, in every queue.
    pub(crate) fn finished(&self) -> u64 {
        self.queues.iter().map(|t| t.outcomes.total()).sum()
    }

    /// Every function's statistics, by name.
    pub(crate) fn by_function(&self) -> Vec<(&'static str, JobStats)> {
        self.functions
            .iter()
            .map(|(n, t)| (*n, t.stats()))
            .collect()
    }

    /// Queue `q`'s statistics.
    pub(crate) fn of_queue(&self, q: usize) -> JobStats {
        self.queues.get(q).map(Tally::stats).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_in_its_function_and_its_queue() {
        let mut t = Tallies::new(2);
        let a = t.key(1, "a", 0);
        let b = t.key(2, "b", 1);
        assert_eq!(
            t.key(1, "a", 1).function,
            a.function,
            "same function, other queue"
        );
        t.count(a, Fate::Completed, 3);
        t.count(b, Fate::Crashed, 1);
        t.count(b, Fate::Cancelled, 2);
        t.timed(a, 5_000_000, 0, 3);
        t.timed(b, 0, 1_000_000, 1);
        let f = t.by_function();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].0, "a");
        assert_eq!(f[0].1.outcomes.completed, 3);
        assert_eq!(f[0].1.waited.count, 3);
        let b_stats = &f[1].1;
        assert_eq!(
            (
                b_stats.outcomes.crashed,
                b_stats.outcomes.failed,
                b_stats.outcomes.cancelled
            ),
            (1, 1, 2)
        );
        assert_eq!(t.of_queue(0).outcomes.completed, 3);
        assert_eq!(t.of_queue(1).outcomes.failed, 1);
        assert_eq!(t.of_queue(1).ran.count, 1);
        let max = t.of_queue(1).ran.max;
        assert!(
            max.abs_diff(std::time::Duration::from_millis(1))
                .as_micros()
                <= 10,
            "{max:?}"
        );
        assert_eq!(t.of_queue(7), JobStats::default());
    }
}
