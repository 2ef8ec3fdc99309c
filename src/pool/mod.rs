//! The public facade: [`Pool`] and [`PoolBuilder`], the calls a user makes.
//!
//! Every public method of both types is in this folder; each one is thin
//! and calls down — into `client/` for submitting, `map` and handles, into
//! `options/` for jobs with options, results by id and rate limits, into
//! `canvas/` for workflows, and into `beat/` for periodic jobs
//! (`schedules.rs`).
//! No other module names `Pool` or `PoolBuilder`.
//!
//! A `Pool` is a cheap handle (clone it, share it across threads); the last
//! handle to go terminates the pool. Building one forks the fork server and
//! starts the supervisor thread; the workers come up in the background and
//! jobs submitted meanwhile wait for them.

mod builder;
#[cfg(feature = "prometheus")]
mod metrics;
mod queue;
mod schedules;

pub use builder::PoolBuilder;
pub use queue::{Queue, QueueRef};

use crate::batch::JobId;
use crate::batch::gate::{Refused, Ticket};
use crate::batch::throttle::Throttles;
use crate::beat::Beat;
use crate::canvas::{self, Group, Home, IntoWorkflow, Members, Workflow};
use crate::client::handle::JobHandle;
use crate::client::imap::{Imap, ImapUnordered};
use crate::client::map;
use crate::client::shared::Shared;
use crate::config::PoolConfig;
use crate::control::events::Events;
use crate::control::inspection::Inspection;
use crate::control::revoke::Revoked;
use crate::error::{Error, JobError, TrySubmitError};
use crate::metrics::stats::Stats;
use crate::options::rate::RateLimit;
use crate::options::results::JobStatus;
use crate::options::signature::Job;
use crate::options::{LayerSettings, Layers};
use crate::supervisor::Command;
use crate::transport::codec::Codec;
use crate::worker::call::{Call, Func};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;

/// A pool of forked worker processes.
///
/// Cloning gives another handle to the same pool; the pool is terminated
/// when the last handle is dropped (or by [`terminate`](Pool::terminate) /
/// [`join`](Pool::join) on any of them). `Pool` is `Send + Sync`.
#[derive(Clone)]
pub struct Pool {
    /// The core: supervisor, counters, the bounded queue (`client/shared.rs`).
    shared: Arc<Shared>,
    /// The job options' state: results by id, callbacks, rate limits,
    /// the default retry policy (`options/mod.rs`).
    layers: Arc<Layers>,
    /// The scheduler of periodic jobs (`beat/mod.rs`): held by the pool's
    /// handles only, so the last one stops it.
    beat: Arc<Beat>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl Pool {
    /// A pool of `workers` processes with default settings.
    pub fn new(workers: usize) -> Result<Pool, Error> {
        Pool::builder().workers(workers).build()
    }

    /// A builder for a pool with more settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    fn start(config: PoolConfig, settings: LayerSettings, codec: Codec) -> Result<Pool, Error> {
        let throttles = Arc::new(Throttles::default());
        let layers = Arc::new(Layers::new(settings, throttles.clone()));
        let shared = Shared::start(config, throttles, codec)?;
        Ok(Pool {
            shared,
            layers,
            beat: Arc::default(),
        })
    }

    /// The most workers the pool runs at once, all queues together, as it
    /// was built ([`Stats::live_workers`] tells how many run now).
    pub fn workers(&self) -> usize {
        self.shared
            .config
            .queues
            .iter()
            .map(|q| q.max_workers)
            .sum()
    }

    /// The pool seen through its queue `name`: the same calls, for jobs
    /// that go to that queue, and [`QueueRef::resize`]. A name the pool
    /// does not have is [`Error::NoSuchQueue`] — never the default queue.
    ///
    /// ```
    /// use forkpool::{Error, Pool, Queue};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = Pool::builder().workers(1).queue("reports", Queue::new().workers(1)).build()?;
    /// let reports = pool.queue("reports")?;
    /// assert_eq!(reports.apply(|n: u32| n + 1, 41), Ok(42));
    /// assert!(matches!(pool.queue("report"), Err(Error::NoSuchQueue(name)) if name == "report"));
    /// # Ok(()) }
    /// ```
    pub fn queue(&self, name: &str) -> Result<QueueRef<'_>, Error> {
        match self.shared.config.queue_index(name) {
            Some(index) => Ok(QueueRef { pool: self, index }),
            None => Err(Error::NoSuchQueue(name.to_string())),
        }
    }

    /// Runs `f(arg)` in a worker; returns at once with a handle to the result.
    ///
    /// Submitting to a closed pool gives a handle that resolves to
    /// [`JobError::PoolClosed`]. With a
    /// [`queue_capacity`](PoolBuilder::queue_capacity), this blocks while
    /// the queue is full.
    /// The pool's default retry policy ([`PoolBuilder::retry`]) applies; for
    /// other options, build the job with [`Pool::job`].
    pub fn submit<F, A, R>(&self, f: F, arg: A) -> JobHandle<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_job(Func::of(f), arg, false, None, None)
    }

    /// Like [`submit`](Pool::submit), but never blocks: when
    /// [`queue_capacity`](PoolBuilder::queue_capacity) jobs already wait,
    /// or the pool is closed, the argument comes back in the error.
    ///
    /// ```
    /// use forkpool::{Pool, TrySubmitError};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    /// let pool = Pool::builder().workers(1).queue_capacity(1).build()?;
    /// let mut handles = Vec::new();
    /// let mut arg = 50;
    /// loop {
    ///     match pool.try_submit(nap, arg) {
    ///         Ok(h) => handles.push(h),
    ///         Err(TrySubmitError::Full(back)) => { arg = back; break } // do something else
    ///         Err(e) => panic!("{e}"),
    ///     }
    /// }
    /// assert_eq!(arg, 50);
    /// for h in handles { assert_eq!(h.get(), Ok(50)); }
    /// # Ok(()) }
    /// ```
    pub fn try_submit<F, A, R>(&self, f: F, arg: A) -> Result<JobHandle<R>, TrySubmitError<A>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.try_submit_to(Func::of(f), arg, None)
    }

    /// `try_submit` to queue `queue` (`None`: the function's route).
    fn try_submit_to<A, R>(
        &self,
        f: Func<A, R>,
        arg: A,
        queue: Option<usize>,
    ) -> Result<JobHandle<R>, TrySubmitError<A>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        if self.shared.is_closed() {
            return Err(TrySubmitError::Closed(arg));
        }
        let ticket = match self.shared.try_admit() {
            Ok(t) => t,
            Err(Refused::Full) => return Err(TrySubmitError::Full(arg)),
            Err(Refused::Closed) => return Err(TrySubmitError::Closed(arg)),
        };
        Ok(self.submit_job(f, arg, false, ticket, queue))
    }

    /// One job with the pool's default options, to queue `queue` (`None`:
    /// the function's route).
    fn submit_job<A, R>(
        &self,
        f: Func<A, R>,
        arg: A,
        quiet: bool,
        ticket: Option<Ticket>,
        queue: Option<usize>,
    ) -> JobHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let queue = queue.unwrap_or_else(|| self.shared.config.route(f.ptr as usize));
        if self.layers.retry.is_some() {
            let codec = self.shared.codec;
            let (call, ignoring) = (Call::new(f.ptr, codec), Call::ignoring(f.ptr, codec));
            let job = Job::new(&self.shared, &self.layers, f.name, call, ignoring, false);
            return job.on_queue(queue).submit_admitted(arg, ticket, quiet);
        }
        let call = Call::new(f.ptr, self.shared.codec);
        self.shared
            .submit_call(call, f.name, &arg, quiet, ticket, queue)
    }

    /// Runs `f(arg)` in a worker and waits for the result.
    ///
    /// The calling thread hands the job to a worker and collects the answer
    /// itself while it waits (for a short, adaptive while), so a quick job
    /// costs no thread wake-up.
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R, JobError>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_job(Func::of(f), arg, true, None, None).get()
    }

    /// Runs `f` on every item, in parallel, and returns the results in
    /// input order.
    ///
    /// Every item runs even if some fail; then the lowest failing item is
    /// reported as [`Error::Job`]. Items are sent in batches
    /// ([`PoolBuilder::chunk_size`]), but each one succeeds or fails alone:
    /// if a worker dies mid-batch, the items it finished keep their
    /// results, the one it was running is charged, and the rest run on
    /// another worker.
    ///
    /// The input is read only as fast as workers take it: at most a few
    /// MiB of encoded arguments per worker are out at once, so an input of
    /// any length costs memory for its results only.
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let f = Func::of(f);
        let queue = self.shared.config.route(f.ptr as usize);
        map::map(&self.shared, f, items, self.layers.progress_bar, queue)
    }

    /// Like [`map`](Pool::map), but lazy: an iterator of each item's result,
    /// in input order. It pulls input only as results are consumed, with a
    /// bounded number of items in flight, so an endless input runs in flat
    /// memory. Dropping the iterator cancels the items not yet started.
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> Imap<I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let f = Func::of(f);
        let queue = self.shared.config.route(f.ptr as usize);
        let bar = self.layers.progress_bar;
        Imap::new(self.shared.clone(), f, items.into_iter(), bar, queue)
    }

    /// Like [`imap`](Pool::imap), but results come in the order they finish.
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> ImapUnordered<I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let f = Func::of(f);
        let queue = self.shared.config.route(f.ptr as usize);
        let bar = self.layers.progress_bar;
        ImapUnordered::new(self.shared.clone(), f, items.into_iter(), bar, queue)
    }

    /// Stops accepting jobs. Jobs already submitted still run; submitting
    /// afterwards gives [`JobError::PoolClosed`]. Schedules stop (see
    /// [`Pool::schedule`]).
    pub fn close(&self) {
        self.beat.stop();
        self.shared.close();
        let _ = self.shared.submitter.send(Command::Close);
    }

    /// Closes the pool, waits for every submitted job to finish, then for
    /// the workers to exit.
    ///
    /// Jobs waiting for a countdown, an ETA or a retry are waited for too
    /// (cancel them, or use [`terminate`](Pool::terminate), not to wait),
    /// and so are the success and error callbacks of finished jobs.
    pub fn join(self) -> Result<(), Error> {
        self.close();
        let ended = self.shared.shutdown(Command::Join);
        self.layers.callbacks.finish();
        if ended {
            Ok(())
        } else {
            Err(Error::Io(std::io::Error::other(
                "the pool's supervisor thread panicked",
            )))
        }
    }

    /// Kills every worker now. Every job not finished resolves to
    /// [`JobError::Cancelled`]; nothing waits. Dropping the last handle of a
    /// pool does the same.
    pub fn terminate(self) {
        self.beat.stop();
        self.shared.close();
        self.shared.shutdown(Command::Terminate);
    }

    /// The codec the pool encodes arguments and results with
    /// ([`PoolBuilder::codec`]).
    pub fn codec(&self) -> Codec {
        self.shared.codec
    }

    /// The core, for a layer above that submits batches of its own (a
    /// broker's worker host).
    #[cfg(feature = "redis")]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    // Seeing and steering (`control/`).

    /// A consistent snapshot of the pool, taken by the supervisor between
    /// two of its steps (Celery's `inspect`): the jobs running (with their
    /// worker, progress and attempt), waiting, reserved and scheduled in
    /// each queue, every worker (pid, state, jobs done, memory, uptime),
    /// per-function and per-queue statistics, and [`Totals`](crate::Totals)
    /// that add up. Every job this thread submitted before the call is in
    /// it. It never waits on a worker; with 10,000 jobs waiting it takes
    /// well under a millisecond.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// let pool = forkpool::Pool::new(1)?;
    /// let running = pool.submit(nap, 300);
    /// let waiting = pool.submit(nap, 1);
    /// # while pool.inspect().active.is_empty() { std::thread::sleep(Duration::from_millis(5)); }
    /// let snap = pool.inspect();
    /// assert!(snap.totals.add_up());
    /// assert_eq!(snap.active[0].id, Some(running.id()));
    /// assert!(snap.active[0].function.ends_with("nap"));
    /// assert_eq!(snap.totals.running + snap.totals.waiting + snap.totals.reserved, 2);
    /// # let _ = (running.get(), waiting.get());
    /// let nap_stats = pool.inspect().function(std::any::type_name_of_val(&nap)).cloned().unwrap();
    /// assert_eq!(nap_stats.outcomes.completed, 2);
    /// # Ok(()) }
    /// ```
    pub fn inspect(&self) -> Inspection {
        let mut snap = self.shared.snapshot();
        snap.schedules = self.schedules();
        snap
    }

    /// Revokes job `id` wherever it is (Celery's `revoke`): a job that has
    /// not started — scheduled, waiting in its queue, or reserved by a
    /// busy worker — never runs, and its handle gives
    /// [`JobError::Revoked`]. A running job is left to finish, unless
    /// `terminate`: then its worker is killed if it is still on that job,
    /// and replaced. Either way the job is never retried. Revoking an id
    /// that is over or unknown changes nothing and says
    /// [`Revoked::NotFound`].
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::{JobError, Revoked, Stage};
    /// use std::time::Duration;
    /// fn report(n: u32) -> u32 { n }
    /// let pool = forkpool::Pool::new(1)?;
    /// let later = pool.job(report).countdown(Duration::from_secs(60)).submit(7);
    /// let id = later.id();
    /// assert_eq!(pool.revoke(id, false), Revoked::BeforeStart(Stage::Scheduled));
    /// assert_eq!(later.get(), Err(JobError::Revoked));
    /// assert_eq!(pool.revoke(id, false), Revoked::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn revoke(&self, id: JobId, terminate: bool) -> Revoked {
        self.shared.revoke(id, terminate)
    }

    /// Subscribes to the pool's events (Celery's event stream): jobs
    /// submitted, started (with the worker's pid), their progress,
    /// retried, and how each ended; workers forked and exited. A
    /// subscription holds at most `capacity` unread events: a slow reader
    /// never slows the pool — what does not fit is dropped, counted
    /// ([`Events::lost`](crate::Events::lost)) and announced by an
    /// [`EventKind::Lost`](crate::EventKind::Lost). Job events are told
    /// for jobs submitted while someone listens; see `control/events.rs`
    /// for what else is promised.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::EventKind;
    /// fn double(x: u32) -> u32 { 2 * x }
    /// let pool = forkpool::Pool::new(1)?;
    /// let events = pool.events(1024);
    /// let id = pool.submit(double, 21).id();
    /// pool.join()?;
    /// let mine: Vec<EventKind> = events
    ///     .map(|e| e.kind)
    ///     .filter(|k| !matches!(k, EventKind::WorkerForked { .. } | EventKind::WorkerExited { .. }))
    ///     .collect();
    /// assert!(matches!(mine[0], EventKind::Submitted { id: i, .. } if i == id));
    /// assert!(matches!(mine[1], EventKind::Started { attempt: 1, .. }));
    /// assert!(matches!(mine[2], EventKind::Succeeded { .. }));
    /// # Ok(()) }
    /// ```
    pub fn events(&self, capacity: usize) -> Events {
        self.shared.events.subscribe(capacity)
    }

    // Job options (`options/`).

    /// A job of `f` with options, to submit once or many times. With no
    /// options set, `pool.job(f).submit(arg)` is `pool.submit(f, arg)`.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn double(x: u64) -> u64 { 2 * x }
    /// let pool = forkpool::Pool::new(1)?;
    /// let handle = pool.job(double).time_limit(std::time::Duration::from_secs(5)).submit(21);
    /// assert_eq!(handle.get(), Ok(42));
    /// # Ok(()) }
    /// ```
    pub fn job<F, A, R>(&self, f: F) -> Job<A, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let f = Func::of(f);
        let codec = self.shared.codec;
        let (call, ignoring) = (Call::new(f.ptr, codec), Call::ignoring(f.ptr, codec));
        Job::new(&self.shared, &self.layers, f.name, call, ignoring, false)
    }

    /// A job of a fallible function `f`. Its `Err` is a failure: retried
    /// by [`RetryOn::ERROR`](crate::RetryOn::ERROR), passed to
    /// [`on_error`](Job::on_error) as [`Failure::Err`](crate::Failure::Err), counted in
    /// [`Stats::errored`](crate::Stats::errored). The handle gives
    /// `Ok(Err(e))`, typed, once retries are spent; `Err(JobError)` when
    /// the job produced nothing (it panicked, crashed, ...).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn parse(text: String) -> Result<u32, String> {
    ///     text.trim().parse().map_err(|_| format!("not a number: {text:?}"))
    /// }
    /// let pool = forkpool::Pool::new(1)?;
    /// assert_eq!(pool.try_job(parse).submit(" 42 ".into()).get(), Ok(Ok(42)));
    /// let bad = pool.try_job(parse).submit("x".into()).get();
    /// assert_eq!(bad, Ok(Err("not a number: \"x\"".to_string())));
    /// assert_eq!(pool.stats().errored, 1);
    /// # Ok(()) }
    /// ```
    pub fn try_job<F, A, T, E>(&self, f: F) -> Job<A, T, E>
    where
        F: Fn(A) -> Result<T, E> + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        let f = Func::of(f);
        let codec = self.shared.codec;
        let (call, ignoring) = (
            Call::fallible(f.ptr, codec),
            Call::fallible_ignoring(f.ptr, codec),
        );
        Job::new(&self.shared, &self.layers, f.name, call, ignoring, true)
    }

    /// Where detached job `id` is now.
    ///
    /// ```
    /// use forkpool::{JobStatus, Pool};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn render(page: u32) -> String { format!("<h1>page {page}</h1>") }
    /// let pool = Pool::new(1)?;
    /// let id = pool.job(render).detach(7); // only the id comes back
    /// // ... a later request:
    /// while !matches!(pool.status(id), JobStatus::Succeeded | JobStatus::Failed) {
    ///     std::thread::sleep(std::time::Duration::from_millis(10));
    /// }
    /// let html: String = pool.take_result(id).unwrap()?;
    /// assert_eq!(html, "<h1>page 7</h1>");
    /// assert_eq!(pool.status(id), JobStatus::Unknown); // taken
    /// # Ok(()) }
    /// ```
    pub fn status(&self, id: JobId) -> JobStatus {
        self.layers.store.status(&self.shared, id)
    }

    /// Takes the result of detached job `id`: `Some` once it has finished —
    /// `Ok(value)`, or why it failed — and then never again; `None` while it
    /// runs, or when there is no such result (see [`JobStatus::Unknown`]).
    ///
    /// `R` is the type the job's handle would give: `T` for a job built
    /// with [`Pool::job`], `Result<T, E>` for [`Pool::try_job`], `()` after
    /// [`Job::ignore_result`](crate::Job::ignore_result). Asking for the
    /// wrong type gives [`JobError::Codec`] and leaves the result in place.
    pub fn take_result<R: DeserializeOwned>(&self, id: JobId) -> Option<Result<R, JobError>> {
        self.layers.store.take(id, self.shared.codec)
    }

    // Workflows (`canvas/`).

    /// A group (Celery's): `members` run side by side, and the group gives
    /// their results in order, as a `Vec`. Members are
    /// [`Signature`](crate::Signature)s ([`Job::sig`]) or any workflows of one
    /// result type — chains, chords, other groups — from an iterator of any
    /// length. Follow it with a body with [`Group::chord`], or choose how
    /// it treats failures with [`Group::collect_all`].
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn fetch(page: u32) -> String { format!("page {page}") }
    /// fn shout(text: String) -> String { text.to_uppercase() }
    /// let pool = forkpool::Pool::new(2)?;
    /// // A group of chains.
    /// let pages = pool.group((1..=3).map(|p| pool.job(fetch).sig(p).then(pool.job(shout))));
    /// assert_eq!(pages.submit().get(), Ok(vec!["PAGE 1".into(), "PAGE 2".into(), "PAGE 3".into()]));
    /// # Ok(()) }
    /// ```
    pub fn group<W, I>(&self, members: I) -> Group<W::Output>
    where
        W: IntoWorkflow,
        I: IntoIterator<Item = W>,
    {
        Group::of(Home::new(&self.shared, &self.layers), members)
    }

    /// A group of members of different types — a tuple of two to eight
    /// signatures or workflows — giving the tuple of their results. Any
    /// member's failure fails it ([`JobError::MembersFailed`]). Follow it
    /// with a job taking the tuple ([`Workflow::then`]) for a chord of
    /// mixed members.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn word_count(text: String) -> usize { text.split_whitespace().count() }
    /// fn is_long(text: String) -> bool { text.len() > 10 }
    /// fn summary((words, long): (usize, bool)) -> String { format!("{words} words, long: {long}") }
    /// let pool = forkpool::Pool::new(2)?;
    /// let text = "a pool of forked workers".to_string();
    /// let both = pool.group_tuple((pool.job(word_count).sig(text.clone()), pool.job(is_long).sig(text)));
    /// assert_eq!(both.clone().submit().get(), Ok((5, true)));
    /// assert_eq!(both.then(pool.job(summary)).submit().get(), Ok("5 words, long: true".into()));
    /// # Ok(()) }
    /// ```
    pub fn group_tuple<M: Members>(&self, members: M) -> Workflow<M::Output> {
        canvas::tuple(Home::new(&self.shared, &self.layers), members)
    }

    /// Sets how fast jobs of function `f` may start, across all workers
    /// (Celery's `rate_limit`); `None` lifts the limit. Jobs already
    /// waiting follow the new limit from their next start on.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn call_api(id: u32) -> u32 { id }
    /// let pool = forkpool::Pool::new(2)?;
    /// pool.set_rate_limit(call_api, Some("20/s".parse()?));
    /// let ids = pool.map(call_api, 0..5)?; // started at most 20 per second
    /// assert_eq!(ids, [0, 1, 2, 3, 4]);
    /// pool.set_rate_limit(call_api, None);
    /// # Ok(()) }
    /// ```
    pub fn set_rate_limit<F, A, R>(&self, f: F, limit: Option<RateLimit>)
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: 'static,
        R: 'static,
    {
        self.layers.rates.set(Func::of(f).ptr as usize, limit);
    }
}
