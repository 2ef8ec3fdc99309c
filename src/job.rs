//! Jobs as the caller sees them: [`JobId`], [`JobHandle`], and the
//! function-pointer trampoline that lets a worker run a plain `fn(A) -> R`.
//!
//! # How a function crosses into a worker
//!
//! Every worker is a fork of the same program image, so a function pointer
//! taken in the caller is valid in every worker. A job carries two addresses:
//! the user's `fn(A) -> R`, and [`trampoline::<A, R>`], a monomorphised shim
//! that decodes `A`, calls the function and encodes `R`. The worker calls
//! the shim with the function's address and the argument bytes; no
//! registration and no macro is needed.
//!
//! # Handles
//!
//! A submitted job's outcome lands in a [`Slot`] shared by the supervisor
//! (which fills it once) and the [`JobHandle`] (which waits on it, as a
//! blocking call or as a `Future`). The result stays encoded until the
//! caller asks for it, so decoding happens on the caller's thread.

use crate::batch::{Outcome, Sink};
use crate::codec;
use crate::error::JobError;
use crate::out::Out;
use crate::pool::Shared;
use crate::prefault::{self, Spares};
use crate::progress::Progress;
use crate::supervisor::Whereabouts;
use crate::wire::{self, Record, Tag};
use crate::worker::{BatchRun, Release};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Identifies one submitted job within its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The id as a number (unique within the pool, increasing).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// The shim a worker calls to run a batch: it loops over the items through
/// [`BatchRun::drive`], with the job's own decode, call and encode inlined
/// in the loop (a shim per argument and result type, so no indirect call
/// per item). Panics propagate to the worker's catch, which resumes the
/// batch after the item that panicked.
pub(crate) type RawCall = unsafe fn(func: usize, run: &mut BatchRun<'_, '_>);

/// A job's function as two addresses valid in every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub trampoline: usize,
    pub func: usize,
}

impl Call {
    pub(crate) fn new<A, R>(f: fn(A) -> R) -> Call
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        let shim: RawCall = batch::<A, R>;
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }

    /// Turns the trampoline address back into a callable shim.
    ///
    /// # Safety
    /// `trampoline` must be the address taken by [`Call::new`] in this
    /// program image (a worker is a fork of it, so the caller's addresses
    /// hold there too).
    pub(crate) unsafe fn shim(trampoline: usize) -> RawCall {
        // SAFETY: per the contract, this is a RawCall's own address.
        unsafe { std::mem::transmute::<usize, RawCall>(trampoline) }
    }
}

/// One item of a plain job: decode, call, encode.
///
/// # Safety
/// `func` must be the address of an `fn(A) -> R`, as stored by [`Call::new`]
/// next to this very instantiation.
#[inline(always)]
unsafe fn trampoline<A, R>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: Call::new stores `f as usize` beside `trampoline::<A, R>`, so
    // `func` is a valid `fn(A) -> R` of the same image.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let Some(arg) = decode_arg::<A>(arg, out, decoded) else {
        return Tag::Codec;
    };
    encode_outcome(out, &f(arg), Tag::Ok)
}

impl Call {
    /// A job whose result is dropped in the worker: its `Ok` record is empty.
    pub(crate) fn ignoring<A, R>(f: fn(A) -> R) -> Call
    where
        A: DeserializeOwned,
    {
        let shim: RawCall = batch_ignoring::<A, R>;
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }

    /// A fallible job: the whole `Result` is encoded, and an `Err` is
    /// recorded under [`Tag::Err`] so the supervisor sees a failure.
    pub(crate) fn fallible<A, T, E>(f: fn(A) -> Result<T, E>) -> Call
    where
        A: DeserializeOwned,
        T: Serialize,
        E: Serialize,
    {
        let shim: RawCall = batch_fallible::<A, T, E>;
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }

    /// A fallible job whose `Ok` value is dropped in the worker: it sends
    /// back `Ok(())`, or its error.
    pub(crate) fn fallible_ignoring<A, T, E>(f: fn(A) -> Result<T, E>) -> Call
    where
        A: DeserializeOwned,
        E: Serialize,
    {
        let shim: RawCall = batch_fallible_ignoring::<A, T, E>;
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }
}

/// Decodes a job's argument, then tells the worker its bytes are free; or
/// writes why it could not into `out`.
#[inline(always)]
fn decode_arg<A: DeserializeOwned>(
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Option<A> {
    let arg = codec::decode::<A>(arg);
    decoded.done();
    match arg {
        Ok(a) => Some(a),
        Err(e) => {
            out.write_bytes(format!("argument: {e}").as_bytes());
            None
        }
    }
}

/// Encodes a job's outcome into `out` under `tag`, or a codec error.
#[inline(always)]
fn encode_outcome<T: Serialize + ?Sized>(out: &mut Out<'_>, value: &T, tag: Tag) -> Tag {
    if let Err(e) = codec::encode_into(&mut *out, value) {
        out.clear();
        out.write_bytes(format!("result: {e}").as_bytes());
        return Tag::Codec;
    }
    tag
}

/// # Safety
/// As [`trampoline`]: `func` is the `fn(A) -> R` stored by [`Call::ignoring`].
#[inline(always)]
unsafe fn trampoline_ignoring<A, R>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
{
    // SAFETY: Call::ignoring stores `f as usize` beside this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let Some(arg) = decode_arg::<A>(arg, out, decoded) else {
        return Tag::Codec;
    };
    drop(f(arg));
    Tag::Ok
}

/// # Safety
/// As [`trampoline`]: `func` is the `fn(A) -> Result<T, E>` stored by
/// [`Call::fallible`].
#[inline(always)]
unsafe fn trampoline_fallible<A, T, E>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
    T: Serialize,
    E: Serialize,
{
    // SAFETY: Call::fallible stores `f as usize` beside this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> Result<T, E>>(func) };
    let Some(arg) = decode_arg::<A>(arg, out, decoded) else {
        return Tag::Codec;
    };
    let result = f(arg);
    let tag = if result.is_ok() { Tag::Ok } else { Tag::Err };
    encode_outcome(out, &result, tag)
}

/// # Safety
/// As [`trampoline`]: `func` is the `fn(A) -> Result<T, E>` stored by
/// [`Call::fallible_ignoring`].
#[inline(always)]
unsafe fn trampoline_fallible_ignoring<A, T, E>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
    E: Serialize,
{
    // SAFETY: Call::fallible_ignoring stores `f as usize` beside this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> Result<T, E>>(func) };
    let Some(arg) = decode_arg::<A>(arg, out, decoded) else {
        return Tag::Codec;
    };
    match f(arg) {
        Ok(value) => {
            drop(value);
            encode_outcome(out, &Ok::<(), E>(()), Tag::Ok)
        }
        Err(e) => encode_outcome(out, &Err::<(), E>(e), Tag::Err),
    }
}

/// The batch shims: a whole batch with one item function inlined.
///
/// # Safety (all four)
/// `func` is the function address stored beside this instantiation by the
/// matching `Call` constructor, so the item function's contract holds.
unsafe fn batch<A: DeserializeOwned, R: Serialize>(func: usize, run: &mut BatchRun<'_, '_>) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe { trampoline::<A, R>(func, arg, out, decoded) })
}

unsafe fn batch_ignoring<A: DeserializeOwned, R>(func: usize, run: &mut BatchRun<'_, '_>) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe { trampoline_ignoring::<A, R>(func, arg, out, decoded) })
}

unsafe fn batch_fallible<A: DeserializeOwned, T: Serialize, E: Serialize>(
    func: usize,
    run: &mut BatchRun<'_, '_>,
) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe {
        trampoline_fallible::<A, T, E>(func, arg, out, decoded)
    })
}

unsafe fn batch_fallible_ignoring<A: DeserializeOwned, T, E: Serialize>(
    func: usize,
    run: &mut BatchRun<'_, '_>,
) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe {
        trampoline_fallible_ignoring::<A, T, E>(func, arg, out, decoded)
    })
}

/// What one item record means for its job.
pub(crate) fn outcome(rec: Record<'_>) -> Result<&[u8], JobError> {
    let text = || String::from_utf8_lossy(rec.body).into_owned();
    match rec.tag {
        // A fallible job's `Err` travels as its encoded `Result`, like `Ok`.
        Tag::Ok | Tag::Err => Ok(rec.body),
        Tag::Panic => Err(JobError::Panicked { message: text() }),
        Tag::Codec => Err(JobError::Codec(text())),
        Tag::Skipped => Err(JobError::Cancelled),
        Tag::TooLarge => {
            let n = |i: usize| {
                rec.body
                    .get(i..i + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
            };
            Err(JobError::TooLarge {
                size: n(0),
                limit: n(8),
            })
        }
        other => Err(JobError::Codec(format!("unexpected record {other:?}"))),
    }
}

/// Decodes a job's result from the bytes of its record.
/// `spares` is the pool's stock of faulted-in buffers, for big byte strings.
pub(crate) fn decode_result<R: DeserializeOwned>(
    rec: Record<'_>,
    spares: Option<&Spares>,
) -> Result<R, JobError> {
    codec::decode_with(outcome(rec)?, spares).map_err(|e| JobError::Codec(format!("result: {e}")))
}

const PENDING: u8 = 0;
const DISPATCHED: u8 = 1;
const RESOLVED: u8 = 2;
const CANCELLED: u8 = 3;

/// Runs once, with a job's final outcome, on the thread that resolves it
/// (often the supervisor's: it must be quick and must not panic), and
/// returns what the slot keeps. Layers use it for callbacks, stored
/// results and stripping ignored results.
pub(crate) type Finisher =
    Box<dyn FnOnce(Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> + Send>;

/// Where one job's outcome lands.
pub(crate) struct Slot {
    pub(crate) id: JobId,
    state: AtomicU8,
    /// Attempts made so far: 1, plus one per retry.
    attempts: AtomicU32,
    inner: Mutex<SlotInner>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotInner {
    /// The job's record (header and body), or its failure.
    result: Option<Result<Vec<u8>, JobError>>,
    waker: Option<Waker>,
    finisher: Option<Finisher>,
}

impl Slot {
    pub(crate) fn new(id: JobId) -> Slot {
        Slot {
            id,
            state: AtomicU8::new(PENDING),
            attempts: AtomicU32::new(1),
            inner: Mutex::new(SlotInner::default()),
            ready: Condvar::new(),
        }
    }

    /// Installs the code that sees the final outcome (before it resolves).
    pub(crate) fn set_finisher(&self, finisher: Finisher) {
        self.lock().finisher = Some(finisher);
    }

    /// Counts one more attempt (a retry was scheduled).
    pub(crate) fn add_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the outcome unless one is already there. Returns whether it did.
    pub(crate) fn resolve(&self, result: Result<Vec<u8>, JobError>) -> bool {
        let mut inner = self.lock();
        if inner.result.is_some() {
            return false;
        }
        let result = match inner.finisher.take() {
            Some(finish) => finish(result),
            None => result,
        };
        inner.result = Some(result);
        let _ =
            self.state
                .compare_exchange(DISPATCHED, RESOLVED, Ordering::AcqRel, Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(PENDING, RESOLVED, Ordering::AcqRel, Ordering::Relaxed);
        let waker = inner.waker.take();
        drop(inner);
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Cancels a job the supervisor has not dispatched yet. Returns false if
    /// it already has (then only the supervisor can cancel it).
    pub(crate) fn cancel_pending(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && self.resolve(Err(JobError::Cancelled))
    }

    /// Whether an outcome is in (or about to be): a lock-free check for
    /// spinning.
    fn is_done(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), RESOLVED | CANCELLED)
    }

    pub(crate) fn is_dispatched(&self) -> bool {
        self.state.load(Ordering::Acquire) == DISPATCHED
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.lock().result.is_some()
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut inner = self.lock();
        while inner.result.is_none() {
            match deadline {
                None => inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    inner = self
                        .ready
                        .wait_timeout(inner, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }

    fn take(&self) -> Result<Vec<u8>, JobError> {
        self.lock()
            .result
            .take()
            .unwrap_or(Err(JobError::Cancelled))
    }
}

impl Sink for Slot {
    fn deliver(&self, _base: u64, outcome: Outcome) {
        match outcome {
            Outcome::Records { buf, .. } => self.resolve(Ok(buf)),
            Outcome::Failed { error, .. } => self.resolve(Err(error)),
        };
    }

    fn claim(&self) -> bool {
        match self
            .state
            .compare_exchange(PENDING, DISPATCHED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == DISPATCHED,
        }
    }

    fn fail_now(&self, error: JobError) -> bool {
        self.resolve(Err(error))
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
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for JobHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.slot.id)
            .field("ready", &self.slot.is_ready())
            .finish()
    }
}

impl<R: DeserializeOwned> JobHandle<R> {
    pub(crate) fn new(slot: Arc<Slot>, pool: Weak<Shared>) -> Self {
        JobHandle {
            slot,
            pool,
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
            pool.driver.help_until(&|| self.slot.is_done());
        }
        self.slot.wait_until(None);
        let raw = self.slot.take();
        // A big result may hold a big byte string: decode it with the
        // pool's stock of faulted-in buffers.
        let big = raw.as_ref().is_ok_and(|b| b.len() >= prefault::MIN);
        let pool = if big { self.pool.upgrade() } else { None };
        Self::decode(raw, pool.as_deref().map(|p| p.prefault.spares()))
    }

    fn decode(raw: Result<Vec<u8>, JobError>, spares: Option<&Spares>) -> Result<R, JobError> {
        let raw = raw?;
        let result = Self::decode_record(&raw, spares);
        if let Some(spares) = spares {
            spares.give(raw);
        }
        result
    }

    /// Decodes the result from a job's record buffer.
    pub(crate) fn decode_record(buf: &[u8], spares: Option<&Spares>) -> Result<R, JobError> {
        match wire::records(buf).next() {
            Some(rec) => decode_result(rec, spares),
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
    /// [`RetryPolicy`](crate::RetryPolicy) scheduled so far.
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
    /// before its first report, and once it is finished.
    pub fn progress(&self) -> Option<Progress> {
        if self.slot.is_ready() {
            return None;
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
    pub fn cancel(&self) -> bool {
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
        let mut inner = self.slot.lock();
        match inner.result.take() {
            Some(raw) => Poll::Ready(Self::decode(raw, None)),
            None => {
                inner.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
