//! A batch: consecutive items of one submission, bound for one worker frame.
//!
//! This is the unit the pool's front (`submit`, `map`, `imap`) hands to the
//! supervisor, and the small internal interface higher layers build on: a
//! function ([`Call`]), encoded arguments, per-job options ([`JobOpts`]:
//! time limits, a start time, an expiry), and a [`Sink`] that receives each
//! item's outcome. A function may also have a [`Throttle`] (see
//! `throttle.rs`), which the supervisor attaches by itself.
//!
//! A `Batch` always describes the items *not yet delivered*: delivering
//! items advances it, and whatever is left when it is dropped is delivered
//! as [`JobError::Cancelled`]. So no code path — a crash, a terminate, a
//! panic in the supervisor — can leave a job unresolved: nothing hangs.

pub(crate) mod gate;
pub(crate) mod outcome;
pub(crate) mod progress;
pub(crate) mod slot;
pub(crate) mod throttle;

use crate::batch::gate::Ticket;
use crate::batch::throttle::Throttle;
use crate::config::PoolConfig;
use crate::error::JobError;
use crate::metrics::tally::TallyKey;
use crate::sys::prefault::Spares;
use crate::transport::wire;
use crate::worker::call::Call;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Identifies one submitted job within its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The id as a number (unique within the pool, increasing).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id whose number is `n`, as [`as_u64`](Self::as_u64) gave it:
    /// for an id kept outside the program (in a URL, a database) and read
    /// back. A broker's ids are unique across all its clients, so any of
    /// them can look a job up by its id.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(1)?;
    /// let id = pool.job(|x: u32| x + 1).detach(1);
    /// let kept = id.as_u64().to_string();               // sent to a browser...
    /// let back = forkpool::JobId::from_u64(kept.parse().unwrap());
    /// assert_eq!(back, id);
    /// # Ok(()) }
    /// ```
    pub fn from_u64(n: u64) -> JobId {
        JobId(n)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Reads an id back from the text a web client sends: `"job-17"` (as
/// [`Display`](fmt::Display) writes it) or `"17"` (its number). An id
/// read this way names a job only in the pool that gave it out; asking
/// another pool, or about an id never given out, is harmless
/// ([`JobStatus::Unknown`](crate::JobStatus::Unknown),
/// [`Revoked::NotFound`](crate::Revoked::NotFound)).
///
/// ```
/// use forkpool::JobId;
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(1)?;
/// let id = pool.submit(|x: u32| x, 1).id();
/// assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
/// assert_eq!(id.as_u64().to_string().parse::<JobId>(), Ok(id));
/// assert!("job-x".parse::<JobId>().is_err());
/// for bad in ["", "job-", "-1", "+1", "job-1 ", "99999999999999999999"] {
///     assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
/// }
/// # Ok(()) }
/// ```
impl std::str::FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<JobId, ParseJobIdError> {
        let digits = s.strip_prefix("job-").unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseJobIdError::new(s));
        }
        digits
            .parse()
            .map(JobId)
            .map_err(|_| ParseJobIdError::new(s))
    }
}

/// A job id serializes as its number.
impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A text that is not a [`JobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a job id: {input:?} (expected \"job-17\" or \"17\")")]
pub struct ParseJobIdError {
    /// The text (its first 64 characters).
    input: String,
}

impl ParseJobIdError {
    fn new(input: &str) -> ParseJobIdError {
        ParseJobIdError {
            input: input.chars().take(64).collect(),
        }
    }
}

/// How items of a batch resolved, as delivered to its [`Sink`].
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `count` consecutive items answered by the worker: `buf` holds their
    /// records (see [`wire::records`]), already validated.
    Records { count: u32, buf: Vec<u8> },
    /// `count` consecutive items failed with the same error.
    Failed { count: u32, error: JobError },
}

/// Receives the outcomes of a submission's items.
pub(crate) trait Sink: Send + Sync {
    /// Items starting at index `base` of the submission resolved.
    fn deliver(&self, base: u64, outcome: Outcome);

    /// Called before the supervisor dispatches a batch: false means the
    /// submission no longer wants its items run (cancelled, or its iterator
    /// was dropped), and the batch is discarded.
    fn claim(&self) -> bool {
        true
    }

    /// Whether the submission counts the items it declines (see
    /// [`claim`](Self::claim)) as cancelled itself — a job's handle when
    /// it cancels, a workflow for its batches — or leaves it to the
    /// supervisor that drops them (an `imap` that was dropped cannot tell
    /// which of its items ran).
    fn counts_declined(&self) -> bool {
        true
    }

    /// Resolves the (single) job with `error` right away, ahead of the
    /// worker's own answer (which will be a skip). Returns false if it was
    /// already resolved, or if this sink cannot be resolved early.
    fn fail_now(&self, _error: JobError) -> bool {
        false
    }

    /// Which attempt of the (single) job this is: 1, plus one per retry.
    fn attempt(&self) -> u32 {
        1
    }

    /// Marks the (single) job revoked on its record, for as long as the
    /// record lives: it is never retried, and an attempt still on its way
    /// to the supervisor is dropped when it arrives.
    fn revoke(&self) {}

    /// Whether the job was revoked.
    fn is_revoked(&self) -> bool {
        false
    }

    /// A batch of its `n` items was answered in full, and its worker
    /// says they took about `ns` each (from starting the first to
    /// answering the last: more than they took if the worker was kept off
    /// its CPU meanwhile; untrusted, like anything a worker says).
    fn timed(&self, _ns: u64, _n: u64) {}
}

/// Per-job options that reach the supervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JobOpts {
    /// Hard limit per item: the worker is killed past it.
    pub time_limit: Option<Duration>,
    /// Soft limit per item: the job is told it is over time.
    pub soft_time_limit: Option<Duration>,
    /// Coarse-clock instant before which no item starts: until then the
    /// batch waits in the supervisor's timers, not in a worker.
    pub not_before: Option<u64>,
    /// Coarse-clock instant after which an item that has not started never
    /// runs: it resolves to [`JobError::Expired`].
    pub expires_at: Option<u64>,
    /// The queue whose workers run it (an index into the pool's queues,
    /// resolved from the job's queue name or its function's route).
    pub queue: u16,
    /// Higher runs first within its queue; equal priorities run in the
    /// order they were submitted.
    pub priority: i32,
}

impl JobOpts {
    /// The options of a job that sets none, bound for queue `queue`: that
    /// queue's time limits, priority 0.
    pub(crate) fn for_queue(config: &PoolConfig, queue: usize) -> JobOpts {
        let q = &config.queues[queue];
        JobOpts {
            time_limit: q.time_limit,
            soft_time_limit: q.soft_time_limit,
            queue: queue as u16,
            ..JobOpts::default()
        }
    }
}

/// Undelivered items of one submission, with everything needed to run them.
pub(crate) struct Batch {
    pub call: Call,
    /// `[len: u32][bytes]` per item; the first `skip` of them are delivered.
    items: Vec<u8>,
    skip: u32,
    count: u32,
    /// Index of the first undelivered item within its submission.
    base: u64,
    pub sink: Arc<dyn Sink>,
    pub opts: JobOpts,
    /// Set for a single cancellable job (`submit`).
    pub job: Option<JobId>,
    /// Places in the pool's bounded queue (see `crate::batch::gate`), held until
    /// the items are handed to a worker or resolved.
    pub ticket: Option<Box<Ticket>>,
    /// The throttle of the batch's function (its rate limit), attached by
    /// the supervisor.
    pub throttle: Option<Arc<dyn Throttle>>,
    /// The throttle already gave this batch a start time it waited for.
    pub throttle_waited: bool,
    /// Where the items' buffer goes when the batch is dropped, if it is big
    /// enough to be worth keeping (see `prefault.rs`).
    pub recycle: Option<Spares>,
    /// The supervisor's submission number (0 until it takes the batch in):
    /// equal priorities run in this order. Kept by every part of the batch
    /// and across requeues, so work handed back returns to its place.
    pub order: u64,
    /// Precise-clock instant the batch first waited in its queue (0: not
    /// yet): what aging and the statistics of waits count from.
    pub since: u64,
    /// The job's function, by name (`std::any::type_name`, or the name
    /// given on the job): what inspection and statistics call it.
    pub name: &'static str,
    /// The tallies its jobs count in (its function's and its queue's),
    /// given by the supervisor when it takes the batch in.
    pub tally: TallyKey,
}

impl Batch {
    pub(crate) fn new(
        call: Call,
        items: Vec<u8>,
        count: u32,
        base: u64,
        sink: Arc<dyn Sink>,
        opts: JobOpts,
        job: Option<JobId>,
    ) -> Batch {
        Batch {
            call,
            items,
            skip: 0,
            count,
            base,
            sink,
            opts,
            job,
            ticket: None,
            throttle: None,
            throttle_waited: false,
            recycle: None,
            order: 0,
            since: 0,
            name: "",
            tally: TallyKey::NONE,
        }
    }

    /// Index of the first undelivered item within its submission.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Undelivered items.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The encoded undelivered items.
    pub(crate) fn items(&mut self) -> &[u8] {
        if self.skip > 0 {
            let off = wire::item_offset(&self.items, self.skip);
            self.items.drain(..off);
            self.skip = 0;
        }
        &self.items
    }

    /// Bytes the items take: exact until some are delivered, an upper
    /// bound after (use `items().len()` for the exact figure).
    pub(crate) fn items_len(&self) -> usize {
        self.items.len()
    }

    fn advance(&mut self, n: u32) {
        debug_assert!(n <= self.count);
        let n = n.min(self.count);
        self.skip += n;
        self.count -= n;
        self.base += u64::from(n);
    }

    /// Delivers worker records for the next `n` items.
    pub(crate) fn deliver_records(&mut self, n: u32, buf: Vec<u8>) {
        if n > 0 {
            self.sink
                .deliver(self.base, Outcome::Records { count: n, buf });
            self.advance(n);
        }
    }

    /// Fails the next `n` items with `error`.
    pub(crate) fn fail(&mut self, n: u32, error: JobError) {
        let n = n.min(self.count);
        if n > 0 {
            self.sink
                .deliver(self.base, Outcome::Failed { count: n, error });
            self.advance(n);
        }
    }

    /// Drops the next `n` items without a word to the sink (their outcome
    /// was already delivered some other way).
    pub(crate) fn forget(&mut self, n: u32) {
        self.advance(n.min(self.count));
    }

    /// Splits off the first `n` undelivered items as their own batch.
    pub(crate) fn split_front(&mut self, n: u32) -> Batch {
        let n = n.min(self.count);
        let items = self.items();
        let off = wire::item_offset(items, n);
        let front = items[..off].to_vec();
        let batch = Batch {
            call: self.call,
            items: front,
            skip: 0,
            count: n,
            base: self.base,
            sink: self.sink.clone(),
            opts: self.opts,
            job: self.job,
            ticket: self
                .ticket
                .as_mut()
                .map(|t| Box::new(t.split(u64::from(n)))),
            throttle: self.throttle.clone(),
            throttle_waited: self.throttle_waited,
            recycle: None,
            order: self.order,
            since: self.since,
            name: self.name,
            tally: self.tally,
        };
        self.items.drain(..off);
        self.count -= n;
        self.base += u64::from(n);
        batch
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.fail(self.count, JobError::Cancelled);
        if let Some(spares) = self.recycle.take() {
            spares.give(std::mem::take(&mut self.items));
        }
    }
}
