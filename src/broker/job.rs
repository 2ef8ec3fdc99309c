//! [`RemoteJob`]: a registered job with options, submitted through a
//! broker — the broker's counterpart of [`Job`](crate::Job), with the
//! options that mean the same across hosts.
//!
//! Every option travels in the job's entry (`message.rs`, `Opts`) and is
//! applied by the host that runs it: time limits and priorities by its
//! local pool, the expiry before the job starts, the retry policy when an
//! attempt fails (the next attempt is a new entry, after the policy's
//! delay in the delayed set — so it may run on another host), the rate
//! limit through one limiter in Redis. A countdown or an ETA puts the job
//! in the delayed set from the start (on Redis's clock for a countdown).

use super::callbacks::RemoteCallbacks;
use super::client::{Client, ttl_ms};
use super::keys::check_queue;
use super::message::{Envelope, Opts};
use super::writer::{OutJob, Start};
use crate::batch::JobId;
use crate::batch::slot::Slot;
use crate::client::handle::JobHandle;
use crate::error::JobError;
use crate::options::rate::RateLimit;
use crate::options::retry::RetryPolicy;
use crate::options::signature::{Expiry, Start as StartAt};
use crate::transport::codec::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where a job's outcome goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Handle,
    Store,
    Nowhere,
}

/// A registered job with options, to submit through a [`Client`] once or
/// many times: built by [`Client::job`], [`Client::try_job`] or
/// [`Client::job_named`].
///
/// ```no_run
/// use forkpool::RetryPolicy;
/// use std::time::Duration;
/// fn report(month: u32) -> String { format!("report {month}") }
/// forkpool::register!(report);
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
/// let monthly = client
///     .job(report)
///     .queue("reports")
///     .priority(3)
///     .countdown(Duration::from_secs(60))
///     .expires(Duration::from_secs(3600))
///     .time_limit(Duration::from_secs(300))
///     .retry(RetryPolicy::new(3).backoff(Duration::from_secs(10)));
/// let handle = monthly.submit(11);
/// let id = monthly.detach(12);      // read later with client.status / take_result
/// monthly.spawn(1);                 // fire and forget: no result is stored
/// # Ok(()) }
/// ```
#[must_use = "a job does nothing until it is submitted"]
pub struct RemoteJob<A, R> {
    pub(super) client: Client,
    /// The registered name, or why there is none.
    name: Result<String, String>,
    fingerprint: u64,
    queue: String,
    priority: i32,
    start: Option<StartAt>,
    expires: Option<Expiry>,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Duration>,
    retry: Option<RetryPolicy>,
    rate_limit: Option<RateLimit>,
    ignore: bool,
    /// Told the outcome in this process (`callbacks.rs`).
    pub(super) callbacks: RemoteCallbacks,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for RemoteJob<A, R> {
    fn clone(&self) -> Self {
        RemoteJob {
            client: self.client.clone(),
            name: self.name.clone(),
            fingerprint: self.fingerprint,
            queue: self.queue.clone(),
            priority: self.priority,
            start: self.start,
            expires: self.expires,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            retry: self.retry.clone(),
            rate_limit: self.rate_limit,
            ignore: self.ignore,
            callbacks: self.callbacks.clone(),
            _types: PhantomData,
        }
    }
}

impl<A, R> fmt::Debug for RemoteJob<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJob")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("priority", &self.priority)
            .field("start", &self.start)
            .field("expires", &self.expires)
            .field("time_limit", &self.time_limit)
            .field("soft_time_limit", &self.soft_time_limit)
            .field("retry", &self.retry)
            .field("rate_limit", &self.rate_limit)
            .field("ignore_result", &self.ignore)
            .field("on_success", &self.callbacks.on_success.is_some())
            .field("on_error", &self.callbacks.on_error.is_some())
            .finish()
    }
}

impl<A, R> RemoteJob<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    pub(super) fn new(client: Client, name: Result<String, String>, fingerprint: u64) -> Self {
        RemoteJob {
            client,
            name,
            fingerprint,
            queue: "default".into(),
            priority: 0,
            start: None,
            expires: None,
            time_limit: None,
            soft_time_limit: None,
            retry: None,
            rate_limit: None,
            ignore: false,
            callbacks: RemoteCallbacks::default(),
            _types: PhantomData,
        }
    }

    /// The registered name the job travels under (`None` if its function
    /// is not registered).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().ok()
    }

    /// The registered name, or why there is none; the type fingerprint;
    /// the expiry as given (for a schedule, which keeps these without the
    /// client).
    pub(super) fn parts(&self) -> (Result<String, String>, u64, Option<Expiry>) {
        (self.name.clone(), self.fingerprint, self.expires)
    }

    /// The client it submits through.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Starts no sooner than `delay` after Redis receives it. It waits in
    /// Redis's delayed set, not in a host, however long.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.start = Some(StartAt::Countdown(delay));
        self
    }

    /// Starts no sooner than `at` (a time in the past: now).
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.start = Some(StartAt::Eta(at));
        self
    }

    /// Not started by then: it never runs, and resolves to
    /// [`JobError::Expired`]. Compared with the clock of the host that
    /// takes it (keep clocks in sync).
    pub fn expires(mut self, when: impl Into<Expiry>) -> Self {
        self.expires = Some(when.into());
        self
    }

    /// Hard time limit per attempt, in place of the host pool's.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Soft time limit per attempt, in place of the host pool's.
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }

    /// Retries failed attempts as `policy` says; each retry is a new
    /// delivery, which any host may take.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Limits how fast jobs of this name start across all hosts (one
    /// limiter in Redis), for this submission.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// The queue (default `"default"`): only hosts that consume it run the
    /// job. A name that is not a valid queue name fails the job with
    /// [`JobError::InvalidOptions`].
    pub fn queue(mut self, name: &str) -> Self {
        self.queue = name.to_string();
        self
    }

    /// Higher runs first within its queue (and across the queues of one
    /// host). Each level is a stream of its own; hosts read the highest
    /// non-empty one first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Drops the job's value on the host: nothing is stored, and the handle
    /// gives `()` (success or the job's failure). Keeps an error callback,
    /// drops a success callback (set one after this).
    pub fn ignore_result(self) -> RemoteJob<A, ()> {
        RemoteJob {
            client: self.client,
            name: self.name,
            fingerprint: self.fingerprint,
            queue: self.queue,
            priority: self.priority,
            start: self.start,
            expires: self.expires,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            retry: self.retry,
            rate_limit: self.rate_limit,
            ignore: true,
            // No value: a success callback of `R` cannot be told one.
            callbacks: RemoteCallbacks {
                on_success: None,
                on_error: self.callbacks.on_error,
            },
            _types: PhantomData,
        }
    }

    /// Submits the job; returns a handle to its result.
    pub fn submit(&self, arg: A) -> JobHandle<R> {
        let slot = self.launch(&arg, Target::Handle);
        let remote = super::remote::Remote {
            client: Arc::downgrade(&self.client.inner),
            slot: slot.clone(),
        };
        JobHandle::remote(slot, self.client.inner.broker.codec, Arc::new(remote))
    }

    /// Submits the job; returns its id. Its result is kept in Redis for
    /// the broker's `result_expires`:
    /// [`Client::status`](super::Client::status),
    /// [`Client::take_result`](super::Client::take_result).
    pub fn detach(&self, arg: A) -> JobId {
        self.launch(&arg, Target::Store).id
    }

    /// Submits the job and forgets it: its value is dropped on the host and
    /// no result is stored.
    pub fn spawn(&self, arg: A) -> JobId {
        self.launch(&arg, Target::Nowhere).id
    }

    pub(super) fn opts(&self, target: Target) -> Result<(Opts, Start), JobError> {
        let invalid = |message: String| Err(JobError::InvalidOptions { message });
        if let Err(e) = check_queue(&self.queue) {
            return invalid(e.to_string());
        }
        if self.time_limit == Some(Duration::ZERO) || self.soft_time_limit == Some(Duration::ZERO) {
            return invalid("time limits must be above zero".into());
        }
        if let (Some(s), Some(h)) = (self.soft_time_limit, self.time_limit)
            && s > h
        {
            return invalid(format!(
                "soft_time_limit ({s:?}) is above time_limit ({h:?})"
            ));
        }
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let start = match self.start {
            None => Start::Now,
            Some(StartAt::Countdown(d)) if d.as_millis() == 0 => Start::Now,
            Some(StartAt::Countdown(d)) => Start::Countdown(d.as_millis() as u64),
            Some(StartAt::Eta(t)) if t <= SystemTime::now() => Start::Now,
            Some(StartAt::Eta(t)) => Start::Eta(unix(t)),
        };
        let expires_at_ms = self.expires.map(|e| match e {
            Expiry::After(d) => super::unix_ms().saturating_add(d.as_millis() as u64),
            Expiry::At(t) => unix(t),
        });
        let inner = &self.client.inner;
        let rate = match (&self.rate_limit, &self.name) {
            (Some(l), _) => Some(l.interval().as_micros() as u64),
            (None, Ok(name)) => inner
                .rates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied(),
            _ => None,
        };
        // A spawned job stores nothing; its value still travels back if a
        // success callback waits for it.
        let nowhere = target == Target::Nowhere;
        let ignore = self.ignore || (nowhere && self.callbacks.on_success.is_none());
        let opts = Opts {
            queue: self.queue.clone(),
            priority: self.priority,
            // Someone here waits for its outcome: a handle, or callbacks.
            reply: self.tracked(target).then(|| inner.reply.clone()),
            time_limit_ms: self.time_limit.map(|d| d.as_millis().max(1) as u64),
            soft_time_limit_ms: self.soft_time_limit.map(|d| d.as_millis().max(1) as u64),
            expires_at_ms,
            retry: self.retry.clone(),
            ignore_result: ignore,
            result_ttl_ms: if nowhere && !ignore {
                0
            } else {
                ttl_ms(inner.broker.result_expires)
            },
            rate_interval_us: rate.map(|r| r.max(1)),
        };
        Ok((opts, start))
    }

    /// Whether this client tracks the job's outcome (its listener resolves
    /// its slot): for a handle, or callbacks.
    fn tracked(&self, target: Target) -> bool {
        target == Target::Handle || !self.callbacks.is_empty()
    }

    /// A slot for job `id`, with the job's callbacks as its finisher.
    fn slot(&self, id: u64) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(JobId(id)));
        if !self.callbacks.is_empty() {
            let runner = self.client.inner.callbacks.sender();
            slot.set_finisher(self.callbacks.clone().finisher(runner));
        }
        slot
    }

    /// Encodes and hands the job to the client's writer; returns its slot
    /// (resolved at once if the job cannot be sent).
    fn launch(&self, arg: &A, target: Target) -> Arc<Slot> {
        let inner = &self.client.inner;
        let id = match inner.next_id() {
            Ok(id) => id,
            Err(e) => {
                let slot = self.slot(0);
                slot.resolve(Err(JobError::Broker {
                    message: format!("no job id: {e}"),
                }));
                return slot;
            }
        };
        let slot = self.slot(id);
        // Never "pending" in the local sense: `JobHandle::cancel` revokes
        // it through the broker (`remote.rs`), never locally.
        crate::batch::Sink::claim(&*slot);
        let name = match &self.name {
            Ok(n) => n.clone(),
            Err(why) => {
                slot.resolve(Err(JobError::Broker {
                    message: why.clone(),
                }));
                return slot;
            }
        };
        let (opts, start) = match self.opts(target) {
            Ok(x) => x,
            Err(e) => {
                slot.resolve(Err(e));
                return slot;
            }
        };
        let codec: Codec = inner.broker.codec;
        let mut encoded = Vec::new();
        if let Err(e) = codec.encode_into(&mut encoded, arg) {
            slot.resolve(Err(JobError::Codec(format!("argument: {e}"))));
            return slot;
        }
        let env = Envelope {
            id,
            job: name,
            codec,
            fingerprint: self.fingerprint,
            attempt: 1,
            opts,
            arg: encoded,
        };
        let fields = match env.fields_within(inner.broker.max_message_size) {
            Ok(fields) => fields,
            Err(e) => {
                slot.resolve(Err(e));
                return slot;
            }
        };
        if self.tracked(target) {
            inner.wait_for(&slot);
        }
        let job = OutJob {
            mark_pending: (target == Target::Store).then_some(env.opts.result_ttl_ms),
            slot: self.tracked(target).then(|| slot.clone()),
            ..OutJob::new(&env, fields, start)
        };
        inner.send_job(job, &slot);
        slot
    }
}
