//! Job signatures: [`Job`], one function with its options, built by
//! [`Pool::job`](crate::Pool::job) or [`Pool::try_job`](crate::Pool::try_job) and submitted any number of times.
//!
//! A `Job` is what Celery calls a signature: the function plus how to run
//! it — when to start ([`countdown`](Job::countdown), [`eta`](Job::eta)),
//! when to give up if not started ([`expires`](Job::expires)), time limits,
//! a [`RetryPolicy`], callbacks, a rate limit, whether to send the result
//! back. Each `submit`, `detach` or `spawn` turns it into one job with a
//! fresh id; the `Job` itself is unchanged and can be cloned and kept.
//!
//! Everything is translated here into the core's terms: a batch of one
//! item with its options (start time, expiry, limits), a sink (the job's
//! slot, behind a retry sink if it has a policy), and a finisher on the
//! slot that runs the callbacks and keeps, stores or drops the outcome.

use crate::batch::gate::{Refused, Ticket};
use crate::batch::outcome;
use crate::batch::slot::{Finisher, Slot};
use crate::batch::{Batch, JobId, JobOpts, Sink};
use crate::client::handle::JobHandle;
use crate::client::shared::{Feed, Shared};
use crate::config::PoolConfig;
use crate::control::events::Bus;
use crate::error::JobError;
use crate::options::Layers;
use crate::options::callbacks::{
    self, Failure, JobCallbacks, OnError, OnSuccess, RawFailure, Task,
};
use crate::options::rate::RateLimit;
use crate::options::results::Store;
use crate::options::retry::{RetryPolicy, RetrySink};
use crate::sys::clock;
use crate::transport::codec::Codec;
use crate::transport::wire::{self, Tag};
use crate::worker::call::Call;
use crossbeam_channel::Sender;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The error type of a job that cannot fail by itself (one built with
/// [`Pool::job`](crate::Pool::job)). It has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoError {}

/// When a job expires: after a time from its submission, or at a time.
/// Built from a [`Duration`] or a [`SystemTime`]; see [`Job::expires`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This long after the job is submitted.
    After(Duration),
    /// At this time.
    At(SystemTime),
}

impl From<Duration> for Expiry {
    fn from(d: Duration) -> Expiry {
        Expiry::After(d)
    }
}

impl From<SystemTime> for Expiry {
    fn from(t: SystemTime) -> Expiry {
        Expiry::At(t)
    }
}

/// When a job may start: a countdown from submission, or a time (a
/// pool's job and a broker's alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Countdown(Duration),
    Eta(SystemTime),
}

/// Where a job's outcome goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// To a [`JobHandle`].
    Handle,
    /// To the pool's result store, by id.
    Store,
    /// Nowhere (fire and forget).
    Nowhere,
}

/// Told once a job's outcome is final (after its retries and callbacks
/// were queued): `Ok(())` if it succeeded, else why not, in words. It
/// runs on the resolving thread (often the supervisor's): it must be
/// quick and must not block. For producers above this layer (the
/// scheduler) that follow their jobs without holding their results.
pub(crate) type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A job's final outcome in brief, for a [`Done`].
pub(crate) fn ended(outcome: &Result<Vec<u8>, JobError>) -> Result<(), String> {
    match outcome {
        Err(e) => Err(e.to_string()),
        Ok(buf) => match wire::records(buf).next() {
            Some(rec) if rec.tag == Tag::Ok => Ok(()),
            Some(rec) if rec.tag == Tag::Err => Err("the job returned an error".into()),
            Some(rec) => Err(outcome::outcome(rec)
                .err()
                .map_or_else(|| "unexpected record".into(), |e| e.to_string())),
            None => Err("empty result record".into()),
        },
    }
}

/// A success callback and whether it needs the job's real result (it was
/// set before [`Job::ignore_result`]).
#[derive(Clone)]
struct Success {
    call: OnSuccess,
    needs_body: bool,
}

/// A function with its options: a job to submit, once or many times.
///
/// Built by [`Pool::job`](crate::Pool::job) for `fn(A) -> R`, or [`Pool::try_job`](crate::Pool::try_job) for a
/// fallible `fn(A) -> Result<R, E>`. Options are set by chaining; a job
/// then goes to the pool with [`submit`](Job::submit) (a handle),
/// [`detach`](Job::detach) (an id, for [`Pool::status`](crate::Pool::status) and
/// [`Pool::take_result`](crate::Pool::take_result)) or [`spawn`](Job::spawn) (fire and forget).
///
/// ```
/// use forkpool::{Pool, RetryPolicy};
/// use std::time::Duration;
/// # fn main() -> Result<(), forkpool::Error> {
/// fn resize(px: u32) -> u32 { px / 2 }
/// let pool = Pool::new(2)?;
/// let thumbnail = pool
///     .job(resize)
///     .countdown(Duration::from_millis(50))   // not before 50 ms from now
///     .expires(Duration::from_secs(60))       // not after a minute
///     .time_limit(Duration::from_secs(10))    // per attempt
///     .retry(RetryPolicy::new(3).backoff(Duration::from_millis(100)))
///     .on_error(|e| eprintln!("thumbnail failed: {e}"));
/// let a = thumbnail.submit(640);
/// let b = thumbnail.submit(1024);  // the same options, another job
/// assert_eq!((a.get(), b.get()), (Ok(320), Ok(512)));
/// # Ok(()) }
/// ```
#[must_use = "a job does nothing until it is submitted"]
pub struct Job<A, R, E = NoError> {
    shared: Arc<Shared>,
    layers: Arc<Layers>,
    /// The function's name (see [`name`](Job::name)).
    name: &'static str,
    /// Sends the result back.
    call: Call,
    /// Drops the result in the worker.
    call_ignoring: Call,
    fallible: bool,
    ignore: bool,
    start: Option<Start>,
    expires: Option<Expiry>,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    retry: Option<RetryPolicy>,
    rate_limit: Option<RateLimit>,
    /// Where the job goes: a queue of the pool (`Ok`), a name the pool
    /// does not have (`Err`, refused at submission), or its function's
    /// route (`None`).
    queue: Option<Result<usize, String>>,
    priority: i32,
    on_success: Option<Success>,
    on_error: Option<OnError>,
    _types: PhantomData<fn(A) -> (R, E)>,
}

impl<A, R, E> Clone for Job<A, R, E> {
    fn clone(&self) -> Self {
        Job {
            shared: self.shared.clone(),
            layers: self.layers.clone(),
            name: self.name,
            call: self.call,
            call_ignoring: self.call_ignoring,
            fallible: self.fallible,
            ignore: self.ignore,
            start: self.start,
            expires: self.expires,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            retry: self.retry.clone(),
            rate_limit: self.rate_limit,
            queue: self.queue.clone(),
            priority: self.priority,
            on_success: self.on_success.clone(),
            on_error: self.on_error.clone(),
            _types: PhantomData,
        }
    }
}

impl<A, R, E> fmt::Debug for Job<A, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("function", &self.name)
            .field("fallible", &self.fallible)
            .field("ignore_result", &self.ignore)
            .field("start", &self.start)
            .field("expires", &self.expires)
            .field("time_limit", &self.time_limit)
            .field("soft_time_limit", &self.soft_time_limit)
            .field("retry", &self.retry)
            .field("rate_limit", &self.rate_limit)
            .field("on_success", &self.on_success.is_some())
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}

/// Options, and submissions that give an id.
impl<A, R, E> Job<A, R, E>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
    E: Send + 'static,
{
    /// A job of the function `call` runs, called `name`; `call_ignoring`
    /// is the same function with its value dropped in the worker.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        layers: &Arc<Layers>,
        name: &'static str,
        call: Call,
        call_ignoring: Call,
        fallible: bool,
    ) -> Self {
        Job {
            shared: shared.clone(),
            layers: layers.clone(),
            name,
            call,
            call_ignoring,
            fallible,
            ignore: false,
            start: None,
            expires: None,
            time_limit: None,
            soft_time_limit: None,
            retry: layers.retry.clone(),
            rate_limit: None,
            queue: None,
            priority: 0,
            on_success: None,
            on_error: None,
            _types: PhantomData,
        }
    }

    /// Starts the job no sooner than `delay` after it is submitted
    /// (Celery's `countdown`). Meanwhile it waits in the pool's timers, not
    /// in a worker, and counts in [`Stats::scheduled`](crate::Stats::scheduled).
    /// Replaces an [`eta`](Self::eta).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::{Duration, Instant};
    /// fn now(_: ()) -> () {}
    /// let pool = forkpool::Pool::new(1)?;
    /// let submitted = Instant::now();
    /// pool.job(now).countdown(Duration::from_millis(200)).submit(()).get()?;
    /// assert!(submitted.elapsed() >= Duration::from_millis(200));
    /// # Ok(()) }
    /// ```
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.start = Some(Start::Countdown(delay));
        self
    }

    /// Starts the job no sooner than `at` (Celery's `eta`); a time in the
    /// past means now. Replaces a [`countdown`](Self::countdown).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::{Duration, SystemTime};
    /// fn stamp(_: ()) -> SystemTime { SystemTime::now() }
    /// let pool = forkpool::Pool::new(1)?;
    /// let at = SystemTime::now() + Duration::from_millis(200);
    /// let started = pool.job(stamp).eta(at).submit(()).get()?;
    /// assert!(started >= at);
    /// # Ok(()) }
    /// ```
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.start = Some(Start::Eta(at));
        self
    }

    /// A job that has not started by then never runs: it resolves to
    /// [`JobError::Expired`]. A [`Duration`] counts from submission; a
    /// [`SystemTime`] is a time. A job that has started runs on; a retry
    /// that could only start after the expiry is not made.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forkpool::JobError;
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// let pool = forkpool::Pool::new(1)?;
    /// let busy = pool.submit(nap, 500);               // the only worker is busy
    /// let late = pool.job(nap).expires(Duration::from_millis(100)).submit(0);
    /// assert_eq!(late.get(), Err(JobError::Expired));
    /// busy.get()?;
    /// # Ok(()) }
    /// ```
    pub fn expires(mut self, when: impl Into<Expiry>) -> Self {
        self.expires = Some(when.into());
        self
    }

    /// This job's hard time limit, in place of the pool's
    /// ([`PoolBuilder::time_limit`](crate::PoolBuilder::time_limit)).
    /// Each attempt gets the whole limit.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// This job's soft time limit, in place of the pool's
    /// ([`PoolBuilder::soft_time_limit`](crate::PoolBuilder::soft_time_limit)).
    /// A soft limit above the hard one makes the job fail with
    /// [`JobError::InvalidOptions`].
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }

    /// Retries the job as `policy` says, in place of the pool's default
    /// ([`PoolBuilder::retry`](crate::PoolBuilder::retry)).
    /// `RetryPolicy::new(0)` turns retries off.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Limits how fast jobs of this function start, across all workers. The
    /// limit belongs to the function in this pool, as if set with
    /// [`Pool::set_rate_limit`](crate::Pool::set_rate_limit) when this job is submitted: it holds for
    /// every job of the function, however submitted.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn fetch(id: u32) -> u32 { id }
    /// let pool = forkpool::Pool::new(2)?;
    /// let fetch_job = pool.job(fetch).rate_limit("50/s".parse()?);
    /// let handles: Vec<_> = (0..3).map(|i| fetch_job.submit(i)).collect();
    /// for (i, h) in handles.into_iter().enumerate() {
    ///     assert_eq!(h.get()?, i as u32);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Calls the job's function `name` in the pool's inspection and
    /// statistics, instead of its name from the type system
    /// (`my_crate::resize`).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn resize(px: u32) -> u32 { px / 2 }
    /// let pool = forkpool::Pool::new(1)?;
    /// let job = pool.job(resize);
    /// assert!(job.function().ends_with("resize"));
    /// assert_eq!(job.name("thumbnail").function(), "thumbnail");
    /// # Ok(()) }
    /// ```
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The name of the job's function, as inspection and statistics show it.
    pub fn function(&self) -> &'static str {
        self.name
    }

    /// Sends the job to queue `name` instead of its function's route (or
    /// the default queue). A name the pool does not have fails the job
    /// with [`JobError::NoSuchQueue`] when it is submitted — it never falls
    /// back to another queue.
    ///
    /// ```
    /// use forkpool::{JobError, Pool, Queue};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn work(x: u32) -> u32 { x + 1 }
    /// let pool = Pool::builder().workers(1).queue("slow", Queue::new().workers(1)).build()?;
    /// assert_eq!(pool.job(work).queue("slow").submit(1).get(), Ok(2));
    /// assert_eq!(
    ///     pool.job(work).queue("slwo").submit(1).get(),
    ///     Err(JobError::NoSuchQueue { queue: "slwo".into() })
    /// );
    /// # Ok(()) }
    /// ```
    pub fn queue(mut self, name: &str) -> Self {
        self.queue = Some(
            self.shared
                .config
                .queue_index(name)
                .ok_or_else(|| name.to_string()),
        );
        self
    }

    /// The job goes to the queue with this index (already checked).
    pub(crate) fn on_queue(mut self, queue: usize) -> Self {
        self.queue = Some(Ok(queue));
        self
    }

    /// The job's priority within its queue: higher runs first, and jobs of
    /// equal priority run in the order they were submitted. Default 0;
    /// negative values are fine. A job waits for at most one job of its
    /// queue to finish before it starts ahead of every job of a lower
    /// priority — queued work is never left in a busy worker ahead of it
    /// (see the README's "Queues, priorities and autoscaling").
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn report(n: u32) -> u32 { n }
    /// let pool = forkpool::Pool::new(1)?;
    /// let urgent = pool.job(report).priority(10).submit(1);
    /// assert_eq!(urgent.get(), Ok(1));
    /// # Ok(()) }
    /// ```
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Drops the job's value in the worker: nothing is sent back or kept
    /// but whether it succeeded (Celery's `ignore_result`). The job's
    /// result type becomes `()` — `Result<(), E>` for a fallible job, whose
    /// error still comes back. A success callback set *before* this still
    /// gets the value: then it travels back for the callback only.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn big(n: usize) -> Vec<u8> { vec![7; n] }
    /// let pool = forkpool::Pool::builder().workers(1).max_message_size(4096).build()?;
    /// // Sending 1 MB back would fail with TooLarge; nothing is sent.
    /// assert_eq!(pool.job(big).ignore_result().submit(1 << 20).get(), Ok(()));
    /// # Ok(()) }
    /// ```
    pub fn ignore_result(self) -> Job<A, (), E> {
        Job {
            shared: self.shared,
            layers: self.layers,
            name: self.name,
            call: self.call,
            call_ignoring: self.call_ignoring,
            fallible: self.fallible,
            ignore: true,
            start: self.start,
            expires: self.expires,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            retry: self.retry,
            rate_limit: self.rate_limit,
            queue: self.queue,
            priority: self.priority,
            on_success: self.on_success,
            on_error: self.on_error,
            _types: PhantomData,
        }
    }

    /// Calls `f` with the job's value when it succeeds, once, after any
    /// retries. It runs in this process, on the pool's callback thread (not
    /// the thread that submitted, and never holding up dispatch); replaces
    /// an earlier success callback.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use std::sync::mpsc;
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = forkpool::Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let job = pool.job(square).on_success(move |v: &u64| tx.send(*v).unwrap());
    /// for x in 1..=3 {
    ///     job.spawn(x); // fire and forget: the callback sees the value
    /// }
    /// let mut got: Vec<u64> = rx.iter().take(3).collect();
    /// got.sort();
    /// assert_eq!(got, [1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn on_success(mut self, f: impl Fn(&R) + Send + Sync + 'static) -> Self {
        let fallible = self.fallible;
        let codec = self.shared.codec;
        let call: OnSuccess = Arc::new(move |body: &[u8]| {
            let value: R = if fallible {
                match codec.decode::<Result<R, IgnoredAny>>(body) {
                    Ok(Ok(v)) => v,
                    Ok(Err(_)) => {
                        return Err(JobError::Codec("success record holds an error".into()));
                    }
                    Err(e) => return Err(JobError::Codec(format!("result: {e}"))),
                }
            } else {
                codec
                    .decode::<R>(body)
                    .map_err(|e| JobError::Codec(format!("result: {e}")))?
            };
            f(&value);
            Ok(())
        });
        self.on_success = Some(Success {
            call,
            needs_body: !self.ignore,
        });
        self
    }

    /// Submits the job and returns only its id: its result is kept in the
    /// pool (for [`PoolBuilder::result_expires`](crate::PoolBuilder::result_expires)
    /// once it finishes) for [`Pool::status`](crate::Pool::status) and [`Pool::take_result`](crate::Pool::take_result) —
    /// how a web handler hands work off and a later request collects it.
    pub fn detach(&self, arg: A) -> JobId {
        self.launch(&arg, Target::Store, None, false, None).id
    }

    /// Submits the job and forgets it: its value is dropped in the worker
    /// (as with [`ignore_result`](Self::ignore_result)) and nothing is
    /// kept. Its callbacks still run, and the pool's stats count it.
    pub fn spawn(&self, arg: A) -> JobId {
        self.launch(&arg, Target::Nowhere, None, false, None).id
    }

    /// Submits the job as [`spawn`](Self::spawn) does, but never blocks:
    /// refused when the pool is closed or its bounded queue is full. `done`
    /// is told when the job's outcome is final; the handle (which never
    /// gives a value: the result is dropped) tells whether it is over and
    /// cancels it. For a producer inside the pool — the scheduler's thread
    /// — which must not wait for room.
    pub(crate) fn try_spawn_watched(&self, arg: &A, done: Done) -> Result<JobHandle<()>, Refused> {
        if self.shared.is_closed() {
            return Err(Refused::Closed);
        }
        let ticket = self.shared.try_admit()?;
        let slot = self.launch(arg, Target::Nowhere, ticket, false, Some(done));
        Ok(JobHandle::new(
            slot,
            Arc::downgrade(&self.shared),
            self.shared.codec,
        ))
    }

    /// Whether this job was made by the pool whose core is `shared`.
    pub(crate) fn belongs_to(&self, shared: &Arc<Shared>) -> bool {
        Arc::ptr_eq(&self.shared, shared)
    }

    /// Why this job could never run with `arg`, if it could not: options
    /// that do not go together, a queue the pool does not have, an
    /// argument that does not encode or is too large. What every
    /// submission would find, found once ahead (for a schedule).
    pub(crate) fn check(&self, arg: &A) -> Result<(), JobError> {
        self.job_opts()?;
        self.shared.encode_arg(arg).map(drop)
    }

    /// Turns the options into the core's.
    fn job_opts(&self) -> Result<JobOpts, JobError> {
        self.core_options()
            .resolve(&self.shared.config, self.call.func)
    }

    /// The options the core enforces, as set on this job.
    fn core_options(&self) -> CoreOptions {
        CoreOptions {
            start: self.start,
            expires: self.expires,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            queue: self.queue.clone(),
            priority: self.priority,
        }
    }

    /// The job's callbacks, ready to be told an outcome.
    fn callbacks(&self) -> JobCallbacks {
        JobCallbacks {
            on_success: self.on_success.as_ref().map(|s| s.call.clone()),
            on_error: self.on_error.clone(),
        }
    }

    /// What runs when the job's outcome is final: callbacks, then keep it
    /// (for a handle), store it, or drop it.
    fn finisher(&self, id: JobId, target: Target, strip: bool, done: Option<Done>) -> Finisher {
        let layers = &self.layers;
        let cbs = self.callbacks();
        let runner = if cbs.is_empty() {
            None
        } else {
            layers.callbacks.sender()
        };
        let unit = strip.then(|| unit_record(self.fallible, self.shared.codec));
        let told = shared_events(&self.shared).map(|bus| (bus, id, self.name));
        let keep: Finisher = match target {
            Target::Handle => Box::new(|outcome| outcome),
            Target::Store => Box::new(Store::finisher(&layers.store, id)),
            // Nobody will read it.
            Target::Nowhere => Box::new(|_| Err(JobError::Cancelled)),
        };
        // A producer following the job (the scheduler) is told last.
        let keep: Finisher = match done {
            None => keep,
            Some(done) => Box::new(move |outcome| {
                done(ended(&outcome));
                keep(outcome)
            }),
        };
        finisher(cbs, runner, unit, keep, told)
    }

    /// Submits one job; returns its slot. `ticket`: places in the bounded
    /// queue the caller already holds; `quiet`: the caller helps right away;
    /// `done`: told when the outcome is final.
    fn launch(
        &self,
        arg: &A,
        target: Target,
        ticket: Option<Ticket>,
        quiet: bool,
        done: Option<Done>,
    ) -> Arc<Slot> {
        let shared = &self.shared;
        let id = shared.next_job_id();
        let slot = Arc::new(Slot::new(id));
        let ignore = self.ignore || target == Target::Nowhere;
        let needs_body = self.on_success.as_ref().is_some_and(|s| s.needs_body);
        slot.set_finisher(self.finisher(id, target, ignore && needs_body, done));
        if target == Target::Store {
            self.layers.store.insert(slot.clone());
        }
        if shared.is_closed() {
            slot.resolve(Err(JobError::PoolClosed));
            return slot;
        }
        let encoded = self
            .job_opts()
            .and_then(|opts| Ok((opts, shared.encode_arg(arg)?)));
        let (opts, items) = match encoded {
            Ok(x) => x,
            Err(error) => {
                shared.refuse(&slot, error);
                return slot;
            }
        };
        if let Some(limit) = self.rate_limit {
            self.layers.rates.set(self.call.func, Some(limit));
        }
        let call = if ignore && !needs_body {
            self.call_ignoring
        } else {
            self.call
        };
        let sink: Arc<dyn Sink> = match &self.retry {
            Some(policy) if policy.max_retries() > 0 => RetrySink::new(
                &shared.feed(),
                slot.clone(),
                policy.clone(),
                (call, self.name),
                items.clone(),
                opts,
            ),
            _ => slot.clone(),
        };
        let mut batch = Batch::new(call, items, 1, 0, sink, opts, Some(id));
        batch.name = self.name;
        batch.ticket = ticket.map(Box::new);
        shared.submit(batch, quiet);
        slot
    }
}

/// The pool's event bus, if anyone listens now.
fn shared_events(shared: &Shared) -> Option<Arc<Bus>> {
    shared.events.watching().then(|| shared.events.clone())
}

/// Callbacks and handles of jobs built with [`Pool::job`](crate::Pool::job).
impl<A, R> Job<A, R, NoError>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// Calls `f` with the error when the job fails, once, after any
    /// retries (cancellation and expiry included). It runs in this
    /// process, on the pool's callback thread; replaces an earlier error
    /// callback.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::JobError;
    /// use std::sync::mpsc;
    /// fn boom(_: ()) { panic!("boom") }
    /// let pool = forkpool::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// pool.job(boom).on_error(move |e: &JobError| tx.send(e.clone()).unwrap()).spawn(());
    /// assert!(matches!(rx.recv().unwrap(), JobError::Panicked { .. }));
    /// # Ok(()) }
    /// ```
    pub fn on_error(mut self, f: impl Fn(&JobError) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(move |failure| match failure {
            RawFailure::Job(e) => f(&e),
            RawFailure::Returned(_) => f(&JobError::Codec(
                "an infallible job returned an error record".into(),
            )),
        }));
        self
    }

    /// Submits the job; returns a handle to its result.
    pub fn submit(&self, arg: A) -> JobHandle<R> {
        self.submit_admitted(arg, None, false)
    }

    /// `submit` for `Pool::submit`, `try_submit` and `apply` when the pool
    /// has a default retry policy: with the queue places they may hold.
    pub(crate) fn submit_admitted(
        &self,
        arg: A,
        ticket: Option<Ticket>,
        quiet: bool,
    ) -> JobHandle<R> {
        let slot = self.launch(&arg, Target::Handle, ticket, quiet, None);
        JobHandle::new(slot, Arc::downgrade(&self.shared), self.shared.codec)
    }
}

/// Callbacks and handles of fallible jobs, built with [`Pool::try_job`](crate::Pool::try_job).
impl<A, T, E> Job<A, T, E>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// Calls `f` when the job fails, once, after any retries: with
    /// [`Failure::Err`] and the job's own error, or [`Failure::Job`] when
    /// it produced nothing (panic, crash, timeout, cancellation, expiry).
    /// It runs on the pool's callback thread; replaces an earlier one.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::Failure;
    /// use std::sync::mpsc;
    /// fn check(x: i32) -> Result<i32, String> {
    ///     if x < 0 { Err(format!("{x} is negative")) } else { Ok(x) }
    /// }
    /// let pool = forkpool::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let job = pool.try_job(check).on_error(move |f: &Failure<String>| tx.send(f.clone()).unwrap());
    /// assert_eq!(job.submit(-1).get(), Ok(Err("-1 is negative".to_string())));
    /// assert_eq!(rx.recv().unwrap(), Failure::Err("-1 is negative".to_string()));
    /// # Ok(()) }
    /// ```
    pub fn on_error(mut self, f: impl Fn(&Failure<E>) + Send + Sync + 'static) -> Self {
        let codec = self.shared.codec;
        self.on_error = Some(Arc::new(move |failure| {
            let failure = match failure {
                RawFailure::Job(e) => Failure::Job(e),
                RawFailure::Returned(body) => match codec.decode::<Result<IgnoredAny, E>>(&body) {
                    Ok(Err(e)) => Failure::Err(e),
                    Ok(Ok(_)) => Failure::Job(JobError::Codec("error record holds a value".into())),
                    Err(e) => Failure::Job(JobError::Codec(format!("error: {e}"))),
                },
            };
            f(&failure)
        }));
        self
    }

    /// Submits the job; returns a handle to its result: `Ok(Ok(value))`,
    /// `Ok(Err(e))` with the job's own error, or `Err(JobError)`.
    pub fn submit(&self, arg: A) -> JobHandle<Result<T, E>> {
        let slot = self.launch(&arg, Target::Handle, None, false, None);
        JobHandle::new(slot, Arc::downgrade(&self.shared), self.shared.codec)
    }
}

/// The options the core enforces — start time, expiry, time limits — as
/// set on a job, resolved into the core's [`JobOpts`] at each submission
/// (a countdown or an expiry given as a duration counts from then). A
/// `Job` and a workflow step (`canvas/`) resolve them the same way. Options
/// the supervisor will carry per job (a queue, a priority) belong here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CoreOptions {
    start: Option<Start>,
    expires: Option<Expiry>,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    /// The queue named on the job (`Err`: a name the pool does not have);
    /// `None`: its function's route, or the default queue.
    queue: Option<Result<usize, String>>,
    priority: i32,
}

impl CoreOptions {
    /// Whether the job has a start time (a countdown or an ETA).
    pub(crate) fn has_start(&self) -> bool {
        self.start.is_some()
    }

    /// The core's options for a job of function `func` (its identity, for
    /// routes) submitted now to a pool with `config`, or why they cannot
    /// work together.
    pub(crate) fn resolve(&self, config: &PoolConfig, func: usize) -> Result<JobOpts, JobError> {
        let invalid = |message: String| Err(JobError::InvalidOptions { message });
        let queue = match &self.queue {
            Some(Ok(q)) => *q,
            Some(Err(name)) => {
                return Err(JobError::NoSuchQueue {
                    queue: name.clone(),
                });
            }
            None => config.route(func),
        };
        let defaults = JobOpts::for_queue(config, queue);
        if self.time_limit == Some(Duration::ZERO) || self.soft_time_limit == Some(Duration::ZERO) {
            return invalid("time limits must be above zero".into());
        }
        let hard = self.time_limit.or(defaults.time_limit);
        let soft = self.soft_time_limit.or(defaults.soft_time_limit);
        if let (Some(s), Some(h)) = (soft, hard)
            && s > h
        {
            return invalid(format!(
                "soft_time_limit ({s:?}) is above time_limit ({h:?})"
            ));
        }
        let from_now = |t: SystemTime| t.duration_since(SystemTime::now()).unwrap_or_default();
        let delay = match self.start {
            None => Duration::ZERO,
            Some(Start::Countdown(d)) => d,
            Some(Start::Eta(t)) => from_now(t),
        };
        // Deadlines on the coarse clock get a tick added, so that neither
        // fires before its time (see `sys/clock.rs`).
        let expires_at = self.expires.map(|e| {
            let d = match e {
                Expiry::After(d) => d,
                Expiry::At(t) => from_now(t),
            };
            clock::coarse_deadline(d)
        });
        Ok(JobOpts {
            time_limit: hard,
            soft_time_limit: soft,
            not_before: (!delay.is_zero()).then(|| clock::coarse_deadline(delay)),
            expires_at,
            priority: self.priority,
            ..defaults
        })
    }
}

/// The record a stripped success becomes: the encoding (in `codec`) of
/// `()`, or of `Ok::<(), E>(())` for a fallible job.
fn unit_record(fallible: bool, codec: Codec) -> Vec<u8> {
    let mut body = Vec::new();
    let encoded = if fallible {
        codec.encode_into(&mut body, &Ok::<(), ()>(()))
    } else {
        codec.encode_into(&mut body, &())
    };
    debug_assert!(encoded.is_ok());
    let mut rec = wire::header(Tag::Ok, body.len() as u32).to_vec();
    rec.extend_from_slice(&body);
    rec
}

/// A finisher that runs `cbs` (on `runner`), replaces a success by `unit`
/// if given (a result kept only for a success callback), then hands the
/// outcome to `keep`.
fn finisher(
    cbs: JobCallbacks,
    runner: Option<Sender<Task>>,
    unit: Option<Vec<u8>>,
    keep: Finisher,
    told: Option<(Arc<Bus>, JobId, &'static str)>,
) -> Finisher {
    callbacks::finisher(cbs, runner, move |outcome| {
        if let Some((events, id, name)) = &told {
            events.ended(*id, name, &outcome);
        }
        let outcome = match (outcome, unit) {
            (Ok(buf), Some(unit))
                if wire::records(&buf).next().is_some_and(|r| r.tag == Tag::Ok) =>
            {
                Ok(unit)
            }
            (outcome, _) => outcome,
        };
        keep(outcome)
    })
}

/// A job without the pool: its function and options, as a workflow step
/// keeps them (see `canvas/`). Taken from a [`Job`] on the caller's thread
/// ([`Job::spec`]); nothing in it holds the pool, so it can live on the
/// supervisor's thread, and every option of the job applies to each
/// submission made from it.
#[derive(Clone)]
pub(crate) struct Spec {
    /// The function to run: with its result sent back, or dropped in the
    /// worker for a job with `ignore_result` and no success callback.
    pub(crate) call: Call,
    /// The function's name (see [`Job::name`]).
    pub(crate) name: &'static str,
    pub(crate) core: CoreOptions,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) callbacks: JobCallbacks,
    /// For `ignore_result` with a success callback: the result travels
    /// back for the callback only, and a success is then this record.
    pub(crate) unit: Option<Arc<[u8]>>,
    /// A step that goes through a broker (`broker/workflow.rs`) keeps its
    /// registered name and options here; `None` for a pool's job. A local
    /// workflow refuses a step that has it (`canvas/launch.rs`).
    pub(crate) remote: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("call", &self.call)
            .field("core", &self.core)
            .field("retry", &self.retry)
            .field("rate_limit", &self.rate_limit)
            .field("callbacks", &!self.callbacks.is_empty())
            .field("unit", &self.unit.is_some())
            .finish()
    }
}

impl PartialEq for Spec {
    /// The same function with the same options and the very same callbacks:
    /// jobs of equal specs may travel in one batch.
    fn eq(&self, other: &Spec) -> bool {
        fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        }
        self.call == other.call
            && self.core == other.core
            && self.retry == other.retry
            && self.rate_limit == other.rate_limit
            && same(&self.callbacks.on_success, &other.callbacks.on_success)
            && same(&self.callbacks.on_error, &other.callbacks.on_error)
            && self.unit.is_some() == other.unit.is_some()
            && same(&self.remote, &other.remote)
    }
}

impl Spec {
    /// What runs when job `id` of this spec has its final outcome: its
    /// end told to `feed`'s event subscribers (if any listen), its
    /// callbacks (on `runner`, the pool's callback thread when it has
    /// one), then `keep`.
    pub(crate) fn finisher(
        &self,
        feed: &Feed,
        id: JobId,
        runner: Option<&Sender<Task>>,
        keep: Finisher,
    ) -> Finisher {
        let runner = if self.callbacks.is_empty() {
            None
        } else {
            runner.cloned()
        };
        let unit = self.unit.as_ref().map(|u| u.to_vec());
        let told = feed
            .events
            .watching()
            .then(|| (feed.events.clone(), id, self.name));
        finisher(self.callbacks.clone(), runner, unit, keep, told)
    }

    /// The sink of one job of this spec whose outcome lands in `slot`: the
    /// slot itself, or a retry sink that resubmits through `feed` with the
    /// kept argument `item` (one `[len][bytes]` item) and options `opts`.
    pub(crate) fn sink(
        &self,
        feed: &Feed,
        slot: &Arc<Slot>,
        item: &[u8],
        opts: JobOpts,
    ) -> Arc<dyn Sink> {
        match &self.retry {
            Some(policy) if policy.max_retries() > 0 => RetrySink::new(
                feed,
                slot.clone(),
                policy.clone(),
                (self.call, self.name),
                item.to_vec(),
                opts,
            ),
            _ => slot.clone(),
        }
    }
}

/// What workflows (`canvas/`) take from a job.
impl<A, R, E> Job<A, R, E>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
    E: Send + 'static,
{
    /// The job without the pool, as a workflow step keeps it.
    pub(crate) fn spec(&self) -> Spec {
        let needs_body = self.on_success.as_ref().is_some_and(|s| s.needs_body);
        let call = if self.ignore && !needs_body {
            self.call_ignoring
        } else {
            self.call
        };
        Spec {
            call,
            name: self.name,
            core: self.core_options(),
            retry: self.retry.clone(),
            rate_limit: self.rate_limit,
            callbacks: self.callbacks(),
            unit: (self.ignore && needs_body)
                .then(|| unit_record(self.fallible, self.shared.codec).into()),
            remote: None,
        }
    }

    /// The pool's core this job submits to.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The pool's job options state.
    pub(crate) fn layers(&self) -> &Arc<Layers> {
        &self.layers
    }
}
