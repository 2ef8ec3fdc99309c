//! Results by id: detached jobs, [`JobStatus`], and the store that keeps
//! finished results until they are taken or expire.
//!
//! A job submitted with [`Job::detach`](crate::Job::detach) gives only its
//! [`JobId`] — something a web handler can return and a later request can
//! ask about. [`Pool::status`](crate::Pool::status) says where the job is (pending, scheduled,
//! running with its progress, succeeded, failed); [`Pool::take_result`](crate::Pool::take_result)
//! hands over the result once. A finished result is kept for
//! [`PoolBuilder::result_expires`](crate::PoolBuilder::result_expires)
//! (default one day, like Celery's `result_expires`), counted from when the
//! job finished, then dropped; expired entries are swept whenever the store
//! is used.
//!
//! A detached workflow (`canvas/`) is kept the same way, under the id of
//! its handle; while it runs, its status is `Running` with its steps done
//! out of its steps in all.
//!
//! The store is shared by the pool and the finishers of its detached jobs,
//! which hold it weakly: it never keeps the pool (or itself) alive.

use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::batch::slot::Slot;
use crate::client::handle::{JobHandle, Tracker};
use crate::client::shared::Shared;
use crate::error::JobError;
use crate::supervisor::Whereabouts;
use crate::transport::codec::Codec;
use crate::transport::wire::{self, Tag};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Where a detached job is, from [`Pool::status`](crate::Pool::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobStatus {
    /// Waiting for a worker.
    Pending,
    /// Waiting for a time: its countdown or ETA, a retry's backoff, or its
    /// function's rate limit.
    Scheduled,
    /// A worker is running it; `progress` is its latest report
    /// ([`report_progress`](crate::report_progress)), if it made one.
    Running {
        /// The latest progress the job reported.
        progress: Option<Progress>,
    },
    /// It finished with a result, which [`Pool::take_result`](crate::Pool::take_result) hands over.
    Succeeded,
    /// It finished without a result, or a fallible job returned `Err`;
    /// [`Pool::take_result`](crate::Pool::take_result) tells why.
    Failed,
    /// No such detached job: never detached, its result was taken, or it
    /// expired.
    Unknown,
}

/// One detached job in the store.
enum Entry {
    /// Not finished: its slot says more (and a workflow's tracker).
    Waiting(Arc<Slot>, Option<Arc<dyn Tracker>>),
    /// Finished: its final record, or its failure.
    Done(Result<Vec<u8>, JobError>),
}

struct Inner {
    jobs: HashMap<JobId, Entry>,
    /// Finished jobs in the order they finished, with when they expire.
    finished: VecDeque<(Instant, JobId)>,
}

/// The detached jobs of one pool.
pub(crate) struct Store {
    keep: Duration,
    inner: Mutex<Inner>,
}

impl Store {
    pub(crate) fn new(keep: Duration) -> Store {
        Store {
            keep,
            inner: Mutex::new(Inner {
                jobs: HashMap::new(),
                finished: VecDeque::new(),
            }),
        }
    }

    /// Locks the store, dropping entries whose time is up.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(&(until, id)) = inner.finished.front() {
            if until > now {
                break;
            }
            inner.finished.pop_front();
            if let Some(Entry::Done(_)) = inner.jobs.get(&id) {
                inner.jobs.remove(&id);
            }
        }
        inner
    }

    /// Registers a detached job, before it can finish.
    pub(crate) fn insert(&self, slot: Arc<Slot>) {
        let id = slot.id;
        self.lock().jobs.insert(id, Entry::Waiting(slot, None));
    }

    /// Registers a detached workflow, before it can finish.
    pub(crate) fn insert_workflow(&self, slot: Arc<Slot>, tracker: Arc<dyn Tracker>) {
        let id = slot.id;
        self.lock()
            .jobs
            .insert(id, Entry::Waiting(slot, Some(tracker)));
    }

    /// Keeps job `id`'s final outcome (called by its finisher).
    fn finish(&self, id: JobId, outcome: Result<Vec<u8>, JobError>) {
        let mut inner = self.lock();
        inner.jobs.insert(id, Entry::Done(outcome));
        let until = Instant::now()
            .checked_add(self.keep)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        inner.finished.push_back((until, id));
    }

    /// The finisher of detached job `id`: moves the outcome here.
    pub(crate) fn finisher(
        store: &Arc<Store>,
        id: JobId,
    ) -> impl FnOnce(Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> + Send + 'static {
        let store: Weak<Store> = Arc::downgrade(store);
        move |outcome| {
            if let Some(store) = store.upgrade() {
                store.finish(id, outcome);
            }
            // The slot of a detached job has no reader.
            Err(JobError::Cancelled)
        }
    }

    /// What the store knows of `id`.
    fn lookup(&self, id: JobId) -> Lookup {
        match self.lock().jobs.get(&id) {
            None => Lookup::Unknown,
            Some(Entry::Waiting(slot, tracker)) => Lookup::Waiting(slot.clone(), tracker.clone()),
            Some(Entry::Done(outcome)) => Lookup::Done(succeeded(outcome)),
        }
    }

    /// Where detached job `id` is now: the store knows finished jobs; for
    /// a waiting one, the supervisor is asked (through `shared`).
    pub(crate) fn status(&self, shared: &Shared, id: JobId) -> JobStatus {
        let (slot, tracker) = match self.lookup(id) {
            Lookup::Unknown => return JobStatus::Unknown,
            Lookup::Done(true) => return JobStatus::Succeeded,
            Lookup::Done(false) => return JobStatus::Failed,
            Lookup::Waiting(slot, tracker) => (slot, tracker),
        };
        let workflow = tracker.is_some();
        let status = match tracker {
            // A workflow is not one job the supervisor knows of.
            Some(tracker) => JobStatus::Running {
                progress: Some(tracker.progress()),
            },
            None => match shared.inspect(id) {
                Whereabouts::Scheduled => JobStatus::Scheduled,
                Whereabouts::Queued => JobStatus::Pending,
                Whereabouts::Running { progress } => JobStatus::Running { progress },
                // Not yet received by the supervisor, or it just finished.
                Whereabouts::Elsewhere => JobStatus::Pending,
            },
        };
        if (status == JobStatus::Pending || workflow) && slot.is_ready() {
            return match self.lookup(id) {
                Lookup::Done(true) => JobStatus::Succeeded,
                Lookup::Done(false) => JobStatus::Failed,
                _ => JobStatus::Unknown,
            };
        }
        status
    }

    /// Takes `id`'s result, if finished and of type `R`. A result that does
    /// not decode as `R` stays in the store.
    pub(crate) fn take<R: DeserializeOwned>(
        &self,
        id: JobId,
        codec: Codec,
    ) -> Option<Result<R, JobError>> {
        let mut inner = self.lock();
        let Entry::Done(outcome) = inner.jobs.get(&id)? else {
            return None;
        };
        let decoded = match outcome {
            Err(e) => Err(e.clone()),
            Ok(buf) => JobHandle::<R>::decode_record(buf, None, codec),
        };
        if !matches!(decoded, Err(JobError::Codec(_))) {
            inner.jobs.remove(&id);
        }
        Some(decoded)
    }
}

enum Lookup {
    Unknown,
    Waiting(Arc<Slot>, Option<Arc<dyn Tracker>>),
    Done(bool),
}

fn succeeded(outcome: &Result<Vec<u8>, JobError>) -> bool {
    matches!(outcome, Ok(buf) if wire::records(buf).next().is_some_and(|r| r.tag == Tag::Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &[u8]) -> Result<Vec<u8>, JobError> {
        let mut v = wire::header(Tag::Ok, body.len() as u32).to_vec();
        v.extend_from_slice(body);
        Ok(v)
    }

    #[test]
    fn results_are_taken_once_and_a_wrong_type_loses_nothing() {
        let store = Arc::new(Store::new(Duration::from_secs(60)));
        let slot = Arc::new(Slot::new(JobId(1)));
        store.insert(slot);
        assert!(matches!(store.lookup(JobId(1)), Lookup::Waiting(_, None)));
        assert!(
            store.take::<u32>(JobId(1), Codec::Bincode).is_none(),
            "not finished"
        );
        let finish = Store::finisher(&store, JobId(1));
        let _ = finish(ok(&7u32.to_le_bytes()));
        assert!(matches!(store.lookup(JobId(1)), Lookup::Done(true)));
        assert!(matches!(
            store.take::<String>(JobId(1), Codec::Bincode),
            Some(Err(JobError::Codec(_)))
        ));
        assert_eq!(store.take::<u32>(JobId(1), Codec::Bincode), Some(Ok(7)));
        assert!(
            store.take::<u32>(JobId(1), Codec::Bincode).is_none(),
            "taken"
        );
        assert!(matches!(store.lookup(JobId(1)), Lookup::Unknown));
    }

    #[test]
    fn failures_are_kept_and_everything_expires() {
        let store = Arc::new(Store::new(Duration::from_millis(50)));
        for id in [1, 2] {
            store.insert(Arc::new(Slot::new(JobId(id))));
        }
        let _ = Store::finisher(&store, JobId(1))(Err(JobError::Expired));
        assert!(matches!(store.lookup(JobId(1)), Lookup::Done(false)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(store.lookup(JobId(1)), Lookup::Unknown), "expired");
        assert!(
            matches!(store.lookup(JobId(2)), Lookup::Waiting(..)),
            "unfinished jobs do not expire"
        );
    }
}
