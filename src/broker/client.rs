//! [`Client`]: the submitting side of a broker.
//!
//! A client submits jobs by registered name and returns the same
//! [`JobHandle`] a local pool does (`get`, `wait_timeout`, `is_ready`,
//! `attempts`, `.await`), reads results by id from any process, and reads
//! the dead letters. It owns three connections: one for its own calls
//! (ids, results by id), one for the writer thread (`writer.rs`:
//! submissions, pipelined) and one for the listener thread
//! (`listener.rs`: results for its handles). Dropping the last clone
//! writes what is queued (for up to the broker's timeout), stops both
//! threads, deletes the client's reply stream, and resolves every handle
//! still waiting with `JobError::Broker` — the jobs themselves go on, and
//! their results can be read by id.
//!
//! Job ids come from one counter in Redis (`INCRBY ids 4096`: a round trip
//! per 4,096 jobs), so they are unique across every client of a broker.

use super::conn::Conn;
use super::dead::DeadLetter;
use super::job::RemoteJob;
use super::keys::Keys;
use super::listener::{Listener, keep_reply};
use super::names::registry;
use super::writer::{OutJob, Outgoing, Pending, Writer};
use super::{Broker, BrokerError, results, shapes};
use crate::batch::JobId;
use crate::batch::slot::Slot;
use crate::client::handle::JobHandle;
use crate::error::{Error, JobError};
use crate::options::callbacks::Callbacks;
use crate::options::rate::RateLimit;
use crate::options::results::JobStatus;
use crossbeam_channel::Sender;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Ids taken from Redis at a time.
const ID_BLOCK: u64 = 4096;

/// Submits jobs to a [`Broker`] and reads their results. Cheap to clone;
/// `Send + Sync`. Built by [`Broker::client`].
///
/// ```no_run
/// use forkpool::broker::Broker;
/// use forkpool::{JobStatus, RetryPolicy};
/// use std::time::Duration;
///
/// fn render(page: u32) -> String { format!("<h1>{page}</h1>") }
/// forkpool::register!(render as "site.render");
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Broker::new("redis://127.0.0.1:6379/")?.client()?;
/// assert_eq!(client.apply(render, 1)?, "<h1>1</h1>");      // wait for it
/// let handle = client.job(render).priority(5).retry(RetryPolicy::new(2)).submit(2);
/// let id = client.job(render).countdown(Duration::from_secs(10)).detach(3);
/// // ... later, from this process or any other:
/// if client.status(id)? == JobStatus::Succeeded {
///     let page: String = client.take_result(id)?.unwrap()?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.inner.name)
            .field("broker", &self.inner.broker)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(super) broker: Broker,
    pub(super) keys: Keys,
    name: String,
    pub(super) reply: String,
    pub(super) control: Mutex<Conn>,
    /// The next id to give, and the end of the block taken.
    ids: Mutex<(u64, u64)>,
    pub(super) pending: Arc<Pending>,
    writer: Mutex<Option<Sender<Outgoing>>>,
    closing: Arc<AtomicBool>,
    deadline: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Rate limits set with `set_rate_limit`, by job name (µs).
    pub(super) rates: Mutex<HashMap<String, u64>>,
    /// The thread jobs' callbacks run on (`callbacks.rs`).
    pub(super) callbacks: Callbacks,
    /// Periodic jobs (`beat/`), stopped first when the client goes.
    pub(super) beat: super::beat::Beat,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    pub(super) fn connect(broker: Broker) -> Result<Client, BrokerError> {
        super::names::check(broker.codec)?;
        let keys = Keys::new(&broker.prefix);
        let name = format!(
            "{}:{}:{:012x}",
            super::host_name(),
            std::process::id(),
            super::random_u64() >> 16
        );
        let reply = keys.reply(&name);
        let conn = |what: &str| {
            Conn::new(
                broker.client.clone(),
                broker.timeout,
                format!("client {name} ({what})"),
            )
        };
        let mut control = conn("calls");
        control.connect_now()?;
        control.run_once(|con| keep_reply(con, &reply))?;
        let mut listener_conn = conn("results");
        listener_conn.connect_now()?;
        let mut writer_conn = conn("submissions");
        writer_conn.connect_now()?;
        let pending: Arc<Pending> = Arc::default();
        let (tx, rx) = crossbeam_channel::unbounded();
        let closing = Arc::new(AtomicBool::new(false));
        let deadline = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            conn: writer_conn,
            keys: keys.clone(),
            rx,
            pending: pending.clone(),
            closing: closing.clone(),
            deadline: deadline.clone(),
            known: Default::default(),
            known_on: 0,
        };
        let listener = Listener {
            conn: listener_conn,
            keys: keys.clone(),
            reply: reply.clone(),
            pending: pending.clone(),
            stop: stop.clone(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| BrokerError::Pool(Error::Io(e)))
        };
        let w = spawn("forkpool-submit", Box::new(move || writer.run()))?;
        let l = match spawn("forkpool-results", Box::new(move || listener.run())) {
            Ok(l) => l,
            Err(e) => {
                drop(tx);
                let _ = w.join();
                return Err(e);
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                broker,
                keys,
                name,
                reply,
                control: Mutex::new(control),
                ids: Mutex::new((0, 0)),
                pending,
                writer: Mutex::new(Some(tx)),
                closing,
                deadline,
                stop,
                threads: Mutex::new(vec![w, l]),
                rates: Mutex::default(),
                callbacks: Callbacks::default(),
                beat: Default::default(),
            }),
        })
    }

    /// The client's unique name (`host:pid:random`): its reply stream is
    /// called after it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs `f(arg)` on a worker host; returns at once with a handle to the
    /// result. `f` must be [registered](crate::register); a function that
    /// is not gives a handle that resolves to `JobError::Broker` saying so.
    pub fn submit<F, A, R>(&self, f: F, arg: A) -> JobHandle<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.job(f).submit(arg)
    }

    /// Runs `f(arg)` on a worker host and waits for the result.
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R, JobError>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit(f, arg).get()
    }

    /// Runs `f` on every item, on the worker hosts, and returns the results
    /// in input order; the lowest failing item is [`Error::Job`] (every
    /// item still ran). Each item is one job.
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let job = self.job(f);
        let handles: Vec<JobHandle<R>> = items.into_iter().map(|a| job.submit(a)).collect();
        let mut out = Vec::with_capacity(handles.len());
        let mut first_error = None;
        for (index, h) in handles.into_iter().enumerate() {
            match h.get() {
                Ok(v) => out.push(v),
                Err(error) => {
                    first_error.get_or_insert(Error::Job { index, error });
                }
            }
        }
        match first_error {
            None => Ok(out),
            Some(e) => Err(e),
        }
    }

    /// A job of the registered function `f`, with options (see
    /// [`RemoteJob`]).
    pub fn job<F, A, R>(&self, f: F) -> RemoteJob<A, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        match registry().by_function(TypeId::of::<F>()) {
            // Registered with these very types: its fingerprint is kept.
            Some(e) => RemoteJob::new(self.clone(), Ok(e.name.to_string()), e.fingerprint()),
            None => {
                let why = format!(
                    "{} is not registered: add forkpool::register!(...) for it",
                    std::any::type_name::<F>()
                );
                RemoteJob::new(self.clone(), Err(why), 0)
            }
        }
    }

    /// A job of the fallible registered function `f`: its handle gives
    /// `Ok(Err(e))`, typed, when it returns `Err` (after its retries).
    pub fn try_job<F, A, T, E>(&self, f: F) -> RemoteJob<A, Result<T, E>>
    where
        F: Fn(A) -> Result<T, E> + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        self.job(f)
    }

    /// A job by name, for a program that does not have the function's code
    /// (a producer that only submits): `A` and `R` must have the shape the
    /// hosts registered (their type fingerprint is checked by the host).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let thumb = client.job_named::<u32, u32>("images.thumbnail").submit(640);
    /// # Ok(()) }
    /// ```
    pub fn job_named<A, R>(&self, name: &str) -> RemoteJob<A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let name = if name.is_empty() {
            Err("a job name cannot be empty".to_string())
        } else {
            Ok(name.to_string())
        };
        RemoteJob::new(self.clone(), name, shapes::job_fingerprint::<A, R>())
    }

    /// Limits how fast jobs of `f` start, across every worker host (one
    /// limiter in Redis, per job name), for the jobs this client submits
    /// from now on; `None` lifts it. Held-back jobs wait in Redis, holding
    /// no worker.
    pub fn set_rate_limit<F, A, R>(&self, f: F, limit: Option<RateLimit>)
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: 'static,
        R: 'static,
    {
        let _ = f;
        let Some(e) = registry().by_function(TypeId::of::<F>()) else {
            return;
        };
        let mut rates = lock(&self.inner.rates);
        match limit {
            Some(l) => {
                rates.insert(e.name.to_string(), l.interval().as_micros() as u64);
            }
            None => {
                rates.remove(e.name);
            }
        }
    }

    /// Waits until every job submitted so far is in Redis (or refused).
    /// `submit` returns before the job is written — the writer sends jobs
    /// in pipelines — so a process about to exit, or that must know its
    /// jobs are queued, calls this.
    pub fn flush(&self) -> Result<(), BrokerError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = lock(&self.inner.writer)
            .as_ref()
            .is_some_and(|w| w.send(Outgoing::Flush(tx)).is_ok());
        if !sent {
            return Err(BrokerError::Stopped);
        }
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(BrokerError::Redis(m)),
            Err(_) => Err(BrokerError::Stopped),
        }
    }

    /// Where job `id` is: `Succeeded` or `Failed` once settled (until its
    /// result expires or is taken), `Scheduled` while it waits for its
    /// countdown, ETA, retry or rate limit, `Pending` while it waits for a
    /// host or runs (a detached job, or one this client holds a handle
    /// to), `Unknown` otherwise. Works from any client of the broker.
    pub fn status(&self, id: JobId) -> Result<JobStatus, BrokerError> {
        let key = self.inner.keys.result(id.0);
        let delayed = self.inner.keys.delayed();
        let (value, score): (Option<Vec<u8>>, Option<f64>) =
            lock(&self.inner.control).run_once(|con| {
                redis::pipe()
                    .cmd("GET")
                    .arg(&key)
                    .cmd("ZSCORE")
                    .arg(&delayed)
                    .arg(id.0)
                    .query(con)
            })?;
        let waiting = lock(&self.inner.pending).contains_key(&id.0);
        Ok(match value {
            Some(v) if v.first() != Some(&b'P') => {
                if results::succeeded(&v) {
                    JobStatus::Succeeded
                } else {
                    JobStatus::Failed
                }
            }
            _ if score.is_some() => JobStatus::Scheduled,
            Some(_) => JobStatus::Pending,
            None if waiting => JobStatus::Pending,
            None => JobStatus::Unknown,
        })
    }

    /// Takes job `id`'s result out of Redis, if it is settled: `Ok(None)`
    /// while it is not (or no such result is kept). A result that does
    /// not decode as `R` stays in place (and comes back as
    /// `JobError::Codec`). Results are decoded with this client's codec.
    pub fn take_result<R: DeserializeOwned>(
        &self,
        id: JobId,
    ) -> Result<Option<Result<R, JobError>>, BrokerError> {
        let key = self.inner.keys.result(id.0);
        let mut control = lock(&self.inner.control);
        let value: Option<Vec<u8>> =
            control.run_once(|con| redis::cmd("GET").arg(&key).query(con))?;
        let Some(value) = value.filter(|v| v.first() != Some(&b'P')) else {
            return Ok(None);
        };
        let decoded = results::read(&value)
            .and_then(|rec| JobHandle::<R>::decode_record(&rec, None, self.inner.broker.codec));
        if !matches!(decoded, Err(JobError::Codec(_))) {
            control.run_once(|con| redis::cmd("DEL").arg(&key).exec(con))?;
        }
        Ok(Some(decoded))
    }

    /// The oldest `count` dead letters (jobs set aside instead of run), with
    /// their reasons.
    pub fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let key = self.inner.keys.dead();
        let v: redis::Value = lock(&self.inner.control).run_once(|con| {
            redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query(con)
        })?;
        Ok(super::reply::entries(v)
            .into_iter()
            .map(|(id, fields)| DeadLetter::from_entry(id, fields))
            .collect())
    }
}

impl Inner {
    /// A fresh job id, unique across the broker.
    pub(super) fn next_id(&self) -> Result<u64, BrokerError> {
        let mut ids = lock(&self.ids);
        if ids.0 >= ids.1 {
            let key = self.keys.ids();
            let end: u64 = lock(&self.control)
                .run_once(|con| redis::cmd("INCRBY").arg(&key).arg(ID_BLOCK).query(con))?;
            *ids = (end + 1 - ID_BLOCK, end + 1);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Hands a job to the writer; false if the client is closing.
    pub(super) fn send(&self, msg: Outgoing) -> bool {
        lock(&self.writer)
            .as_ref()
            .is_some_and(|w| w.send(msg).is_ok())
    }

    /// Registers a handle's slot to be resolved by the listener.
    pub(super) fn wait_for(&self, slot: &Arc<Slot>) {
        lock(&self.pending).insert(slot.id.0, slot.clone());
    }

    pub(super) fn forget(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Hands `job` to the writer; if the client is closing, stops waiting
    /// for it and fails its `slot`.
    pub(super) fn send_job(&self, job: OutJob, slot: &Slot) {
        let id = job.id;
        if !self.send(Outgoing::Job(Box::new(job))) {
            self.forget(id);
            slot.resolve(Err(JobError::Broker {
                message: "the client is closing".into(),
            }));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.beat.stop();
        // Write what is queued: wait for Redis at most the broker's timeout.
        *lock(&self.deadline) = Some(Instant::now() + self.broker.timeout);
        self.closing.store(true, Ordering::Release);
        drop(lock(&self.writer).take());
        let mut threads = std::mem::take(&mut *lock(&self.threads)).into_iter();
        if let Some(w) = threads.next() {
            let _ = w.join();
        }
        self.stop.store(true, Ordering::Release);
        for t in threads {
            let _ = t.join();
        }
        let left: Vec<Arc<Slot>> = lock(&self.pending).drain().map(|(_, s)| s).collect();
        for slot in left {
            slot.resolve(Err(JobError::Broker {
                message: format!(
                    "the client was dropped before the result of {} arrived: the job may \
                     still run; read its result by id",
                    slot.id
                ),
            }));
        }
        // Every callback queued (those of the jobs just failed included)
        // runs before the client is gone.
        self.callbacks.finish();
    }
}

/// How long a job's result is kept, in ms.
pub(super) fn ttl_ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}
