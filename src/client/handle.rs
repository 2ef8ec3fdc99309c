//! [`JobHandle`]: a submitted job as its caller holds it.
//!
//! The handle waits on the job's [`Slot`] — as a blocking call, with a
//! timeout, or as a `Future` — and decodes the result on the caller's
//! thread: the result stays encoded until the caller asks for it. While a
//! caller blocks in [`get`](JobHandle::get), it first helps the supervisor
//! (see `supervisor/drive.rs`), so a quick job costs no thread wake-up.
//!
//! A workflow's handle (`canvas/`) is the same type with a [`Tracker`]: its
//! slot is the workflow's, filled once by its coordinator; progress is
//! steps done out of steps in all, cancelling cancels every unfinished
//! part, and a waiting caller keeps helping for as long as steps keep
//! finishing (a chain of quick steps is one round trip after another).

use crate::batch::JobId;
use crate::batch::outcome::decode_result;
use crate::batch::progress::Progress;
use crate::batch::slot::Slot;
use crate::client::shared::Shared;
use crate::error::JobError;
use crate::supervisor::{Help, Whereabouts};
use crate::sys::prefault::{self, Spares};
use crate::transport::codec::Codec;
use crate::transport::wire;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a caller waiting for a workflow keeps helping the supervisor
/// without a step finishing, before it leaves the rest to the supervisor
/// thread and sleeps.
const WORKFLOW_PATIENCE: Duration = Duration::from_millis(2);

/// What a workflow's handle asks of the workflow (see `canvas/`).
pub(crate) trait Tracker: Send + Sync {
    /// Steps finished, out of the steps in all.
    fn progress(&self) -> Progress;

    /// Cancels every unfinished part and resolves the workflow as
    /// cancelled; false if it had already finished.
    fn cancel(&self) -> bool;

    /// What [`JobHandle::progress`] says while the job is not ready: a
    /// workflow's steps; a broker job's latest report (`broker/remote.rs`).
    fn reported(&self) -> Option<Progress> {
        Some(self.progress())
    }
}

/// A submitted job: wait for it, poll it, await it, or cancel it.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(2)?;
/// fn double(x: u32) -> u32 { x * 2 }
/// let handle = pool.submit(double, 21);
/// assert_eq!(handle.get(), Ok(42));
/// # Ok(()) }
/// ```
#[must_use = "a job handle does nothing unless waited on; drop it to ignore the result"]
pub struct JobHandle<R> {
    slot: Arc<Slot>,
    /// The pool, for cancelling; a handle does not keep its pool alive.
    pool: Weak<Shared>,
    /// Set for a workflow's handle.
    tracker: Option<Arc<dyn Tracker>>,
    /// How the result is encoded.
    codec: Codec,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for JobHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.slot.id)
            .field("ready", &self.slot.is_ready())
            .field("workflow", &self.tracker.is_some())
            .finish()
    }
}

impl<R: DeserializeOwned> JobHandle<R> {
    pub(crate) fn new(slot: Arc<Slot>, pool: Weak<Shared>, codec: Codec) -> Self {
        JobHandle {
            slot,
            pool,
            tracker: None,
            codec,
            _result: PhantomData,
        }
    }

    /// The handle of a workflow whose outcome lands in `slot` (workflows
    /// run on bincode pools only: see `transport/codec.rs`).
    pub(crate) fn tracked(slot: Arc<Slot>, pool: Weak<Shared>, tracker: Arc<dyn Tracker>) -> Self {
        JobHandle {
            slot,
            pool,
            tracker: Some(tracker),
            codec: Codec::Bincode,
            _result: PhantomData,
        }
    }

    /// The handle of a job submitted through a broker: cancelling and
    /// progress go through `tracker` (`broker/remote.rs`); the result
    /// arrives in `slot` from the client's listener.
    #[cfg(feature = "redis")]
    pub(crate) fn remote(slot: Arc<Slot>, codec: Codec, tracker: Arc<dyn Tracker>) -> Self {
        JobHandle {
            slot,
            pool: Weak::new(),
            tracker: Some(tracker),
            codec,
            _result: PhantomData,
        }
    }

    /// Blocks until the job is done and returns its result.
    ///
    /// While it waits, the calling thread first helps the pool for a short,
    /// adaptive while — handing jobs to workers and collecting answers
    /// itself — so a quick job's result arrives without a thread wake-up.
    pub fn get(self) -> Result<R, JobError> {
        if !self.slot.is_done()
            && let Some(pool) = self.pool.upgrade()
        {
            match &self.tracker {
                None => {
                    pool.driver.help_until(&|| self.slot.is_done());
                }
                Some(tracker) => {
                    // Keep helping while steps keep finishing.
                    let mut seen = tracker.progress().done;
                    pool.driver.help_while(WORKFLOW_PATIENCE, &mut || {
                        if self.slot.is_done() {
                            return Help::Done;
                        }
                        let done = tracker.progress().done;
                        if done == seen {
                            return Help::Idle;
                        }
                        seen = done;
                        Help::Progress
                    });
                }
            }
        }
        self.slot.wait_until(None);
        let raw = self.slot.take();
        // A big result may hold a big byte string: decode it with the
        // pool's stock of faulted-in buffers.
        let big = raw.as_ref().is_ok_and(|b| b.len() >= prefault::MIN);
        let pool = if big { self.pool.upgrade() } else { None };
        Self::decode(
            raw,
            pool.as_deref().map(|p| p.prefault.spares()),
            self.codec,
        )
    }

    fn decode(
        raw: Result<Vec<u8>, JobError>,
        spares: Option<&Spares>,
        codec: Codec,
    ) -> Result<R, JobError> {
        let raw = raw?;
        let result = Self::decode_record(&raw, spares, codec);
        if let Some(spares) = spares {
            spares.give(raw);
        }
        result
    }

    /// Decodes the result from a job's record buffer.
    pub(crate) fn decode_record(
        buf: &[u8],
        spares: Option<&Spares>,
        codec: Codec,
    ) -> Result<R, JobError> {
        match wire::records(buf).next() {
            Some(rec) => decode_result(rec, spares, codec),
            None => Err(JobError::Codec("empty result record".into())),
        }
    }

    /// Waits up to `timeout` for the job to finish; true when it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot.wait_until(Some(Instant::now() + timeout))
    }

    /// Whether the job has finished (with a result or an error).
    pub fn is_ready(&self) -> bool {
        self.slot.is_ready()
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.slot.id
    }

    /// How many times the job was tried: 1, plus one per retry its
    /// [`RetryPolicy`](crate::RetryPolicy) scheduled so far (1 for a
    /// workflow).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::{Pool, RetryPolicy};
    /// fn flaky(attempt_marker: String) -> u32 {
    ///     // Fails the first time: the marker file does not exist yet.
    ///     if std::fs::metadata(&attempt_marker).is_err() {
    ///         std::fs::write(&attempt_marker, b"1").unwrap();
    ///         panic!("first attempt fails");
    ///     }
    ///     7
    /// }
    /// let marker = std::env::temp_dir().join(format!("forkpool-doc-{}", std::process::id()));
    /// let _ = std::fs::remove_file(&marker);
    /// let pool = Pool::new(1)?;
    /// let handle = pool
    ///     .job(flaky)
    ///     .retry(RetryPolicy::new(3))
    ///     .submit(marker.display().to_string());
    /// assert!(handle.wait_timeout(std::time::Duration::from_secs(30)));
    /// assert_eq!(handle.attempts(), 2);
    /// assert_eq!(handle.get(), Ok(7));
    /// # std::fs::remove_file(&marker).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn attempts(&self) -> u32 {
        self.slot.attempts()
    }

    /// The latest progress the running job reported with
    /// [`report_progress`](crate::report_progress); `None` while it waits,
    /// before its first report, and once it is finished. A job run by a
    /// broker's host reports through Redis (sampled every 100 ms; each
    /// call is a round trip). For a workflow:
    /// its steps finished out of its steps in all (a group's members and a
    /// chord's body count one step each).
    pub fn progress(&self) -> Option<Progress> {
        if self.slot.is_ready() {
            return None;
        }
        if let Some(tracker) = &self.tracker {
            return tracker.reported();
        }
        match self.pool.upgrade()?.inspect(self.slot.id) {
            Whereabouts::Running { progress } => progress,
            _ => None,
        }
    }

    /// Cancels the job. A job that has not started never runs; a running
    /// job's worker is killed and replaced. Either way [`get`](Self::get)
    /// then returns `Err(JobError::Cancelled)`, and this returns true. It
    /// returns false when the job had already finished.
    ///
    /// For a workflow, every part not yet finished is cancelled this way,
    /// and no further step starts; group members that a worker had already
    /// taken in a batch run on, their results dropped.
    ///
    /// For a job submitted through a broker (feature `redis`), this is
    /// `Client::revoke(id, true)` on whichever host it is, and `get` gives
    /// `Err(JobError::Revoked)`; false when it was over or could not be
    /// found.
    pub fn cancel(&self) -> bool {
        if let Some(tracker) = &self.tracker {
            return tracker.cancel();
        }
        let pool = self.pool.upgrade();
        if self.slot.cancel_pending() {
            if let Some(p) = &pool {
                p.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                // It may be waiting in the supervisor's timers: free it now.
                p.discard(self.slot.id);
            }
            return true;
        }
        match pool {
            Some(p) if self.slot.is_dispatched() => p.cancel_dispatched(self.slot.id),
            _ => false,
        }
    }
}

impl<R: DeserializeOwned> Future for JobHandle<R> {
    type Output = Result<R, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.take_or_wake(cx.waker()) {
            Some(raw) => Poll::Ready(Self::decode(raw, None, self.codec)),
            None => Poll::Pending,
        }
    }
}
