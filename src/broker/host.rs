//! The worker host: a process that takes jobs from Redis and runs them in
//! its own local pool, until it is told to stop.
//!
//! One loop, on the thread that calls [`Host::run`], does everything but
//! settling (`settle.rs`):
//!
//! 1. **Read only what it can run.** It asks Redis for as many entries as
//!    it has idle workers (`XREADGROUP … COUNT idle`), stream by stream in
//!    priority order, and blocks (at most 200 ms) only when every stream
//!    is empty; a host whose workers are all busy reads nothing, so jobs
//!    wait in Redis for whichever host frees a worker first — no job waits
//!    behind a long one in a busy host's prefetch.
//! 2. **Check before running.** Each entry is read without trust
//!    (`message.rs`) and matched against the registry: an unknown name, a
//!    codec or type fingerprint this host does not have, a malformed or
//!    oversized entry, or one delivered more than `max_deliveries` times is
//!    dead-lettered with its reason (`dead.rs`). An expired job is settled
//!    as `Expired`; a job whose global rate limit says "not yet" goes back
//!    to the delayed set for the wait, holding no worker.
//! 3. **Run it locally.** The job becomes a one-item batch of the local
//!    pool, with the `Call` the registry builds for its name and codec (so
//!    the pool's limits, crash isolation and fork server apply); its sink
//!    hands the outcome to the settle thread.
//! 4. **Keep its leases.** Every third of the visibility timeout it renews
//!    the lease of every job it holds (`lease.rs`); every quarter it takes
//!    over jobs whose lease lapsed elsewhere (`RECLAIM`, as many as it has
//!    idle workers); every 100 ms — or when the next one is due — it moves
//!    due jobs from the delayed set to their streams (`PROMOTE`).
//! 5. **Hear what clients ask.** Every read of jobs reads the `revokes`
//!    stream in the same pipeline, after the jobs, and the loop checks
//!    each job against the revokes before running it; a job it holds that
//!    is revoked is revoked in the local pool (`revoke.rs`; while no read
//!    happens, the loop reads revokes every 100 ms). Every 100 ms it
//!    writes its jobs' new progress reports (`progress.rs`); every second,
//!    its snapshot for `Client::inspect` (`inspect.rs`).
//!
//! Stopping ([`Stopper::stop`], SIGTERM or SIGINT): it reads nothing more
//! and lets running jobs finish, for up to the shutdown grace; then it
//! terminates its pool, and every job the stop interrupted is handed back
//! (queued again, the same attempt) rather than failed. A second signal
//! (or [`Stopper::stop_now`]) ends the grace at once. If Redis cannot be
//! reached at the end, the jobs it still holds stay pending in Redis and
//! another host takes them over after the visibility timeout.
//!
//! Nothing a stream holds can crash or stall the loop: every Redis error
//! that is not a lost connection is logged (`log::error!`) and waited out (one
//! second), and a lost connection is reconnected with back-off.

use super::conn::Conn;
use super::dead::{Burial, bury};
use super::inspect::Publisher;
use super::keys::{GROUP, Keys, check_queue};
use super::lease::{Held, HostState, bump};
use super::message::Envelope;
use super::names::registry;
use super::progress::Sampler;
use super::reply::{bytes, items, per_stream};
use super::scripts::Scripts;
use super::settle::{HostSink, Settle, Settler, Settling};
use super::signals::Handlers;
use super::{Broker, BrokerError};
use crate::batch::{Batch, JobId, JobOpts};
use crate::client::shared::Shared;
use crate::error::JobError;
use crate::pool::{Pool, PoolBuilder};
use crate::transport::wire;
use redis::Value;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The longest a host's loop sleeps or blocks in Redis before it looks at
/// its timers and its stop flag again.
const TICK: Duration = Duration::from_millis(200);
/// How often due jobs are moved from the delayed set, at the least.
const PROMOTE_EVERY: Duration = Duration::from_millis(100);
/// How often the priority levels of the host's queues are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How soon a host learns a revoke while no read of jobs brings it.
const CONTROL_EVERY: Duration = Duration::from_millis(100);

/// Configures a worker host (from [`Broker::host`]).
///
/// ```no_run
/// use forkpool::broker::Broker;
/// use forkpool::Pool;
/// use std::time::Duration;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let host = Broker::new("redis://127.0.0.1:6379/")?
///     .host()
///     .queues(["default", "reports"])
///     .pool(Pool::builder().workers(8).time_limit(Duration::from_secs(300)))
///     .shutdown_grace(Duration::from_secs(60))
///     .build()?;
/// println!("consuming as {}", host.consumer());
/// let report = host.run()?;                 // until SIGTERM or Ctrl-C
/// println!("{report}");
/// # Ok(()) }
/// ```
#[must_use = "a host builder does nothing until .build() and .run()"]
pub struct HostBuilder {
    broker: Broker,
    pool: PoolBuilder,
    queues: Vec<String>,
    name: Option<String>,
    grace: Duration,
    signals: bool,
}

impl fmt::Debug for HostBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBuilder")
            .field("broker", &self.broker)
            .field("pool", &self.pool)
            .field("queues", &self.queues)
            .field("name", &self.name)
            .field("grace", &self.grace)
            .field("signals", &self.signals)
            .finish()
    }
}

impl HostBuilder {
    pub(crate) fn new(broker: Broker) -> HostBuilder {
        HostBuilder {
            broker,
            pool: Pool::builder(),
            queues: vec!["default".into()],
            name: None,
            grace: Duration::from_secs(30),
            signals: true,
        }
    }

    /// The local pool's settings: workers, time limits, task and memory
    /// limits, initializer... (default: `Pool::builder()`). Its
    /// `max_message_size` is set to the broker's; jobs run in its default
    /// queue, whose size is the most jobs this host runs at once.
    pub fn pool(mut self, builder: PoolBuilder) -> Self {
        self.pool = builder;
        self
    }

    /// How many jobs run at once (the local pool's workers). Default: the
    /// number of CPUs.
    pub fn workers(mut self, n: usize) -> Self {
        self.pool = self.pool.workers(n);
        self
    }

    /// The queues this host takes jobs from (default: `["default"]`).
    /// Within and across them, a higher priority is read first.
    pub fn queues<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = names.into_iter().map(Into::into).collect();
        self
    }

    /// The host name in the consumer name (default: this machine's host
    /// name). The consumer name adds the process id and a random part, so
    /// hosts started with one name — or restarted with the same pid — never
    /// share a consumer.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long a stopping host lets its running jobs finish before it
    /// ends them and hands them back (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Whether [`Host::run`] stops on SIGTERM and SIGINT (default: yes).
    /// Off for a host embedded in a program that handles signals itself
    /// (it then stops with a [`Stopper`]).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.signals = on;
        self
    }

    /// Checks the settings and the registered jobs, builds the local pool
    /// (forking its fork server) and connects to Redis.
    pub fn build(self) -> Result<Host, BrokerError> {
        let broker = self.broker.validated()?;
        if self.queues.is_empty() {
            return Err(BrokerError::Config(
                "a host needs at least one queue".into(),
            ));
        }
        let mut queues = Vec::new();
        for q in self.queues {
            check_queue(&q)?;
            if !queues.contains(&q) {
                queues.push(q);
            }
        }
        super::names::check(broker.codec)?;
        let host = self.name.unwrap_or_else(super::host_name);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(BrokerError::Config(format!("host name {host:?}")));
        }
        let consumer = format!(
            "{host}:{}:{:012x}",
            std::process::id(),
            super::random_u64() >> 16
        );
        let pool = self
            .pool
            .max_message_size(broker.max_message_size)
            .build()?;
        let mut conn = Conn::new(
            broker.client.clone(),
            broker.timeout,
            format!("host {consumer}"),
        );
        conn.connect_now()?;
        let state = Arc::new(HostState::default());
        Ok(Host {
            keys: super::keys::Keys::new(&broker.prefix),
            broker,
            consumer,
            queues,
            pool,
            conn,
            grace: self.grace,
            signals: self.signals,
            stop: Stopper {
                level: Arc::new(AtomicU8::new(0)),
                state: state.clone(),
            },
            state,
        })
    }
}

/// Asks a running [`Host`] to stop, from any thread.
#[derive(Clone)]
pub struct Stopper {
    level: Arc<AtomicU8>,
    state: Arc<HostState>,
}

impl fmt::Debug for Stopper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopper")
            .field("level", &self.level.load(Ordering::Relaxed))
            .finish()
    }
}

impl Stopper {
    /// Stop taking jobs; let the running ones finish (for up to the
    /// shutdown grace), hand back the rest. What SIGTERM does.
    pub fn stop(&self) {
        self.level.fetch_max(1, Ordering::AcqRel);
        self.state.nudge();
    }

    /// Stop now: running jobs are ended and handed back. What a second
    /// SIGTERM does.
    pub fn stop_now(&self) {
        self.level.fetch_max(2, Ordering::AcqRel);
        self.state.nudge();
    }
}

/// A worker host, built and connected; [`run`](Host::run) it.
pub struct Host {
    broker: Broker,
    keys: Keys,
    consumer: String,
    queues: Vec<String>,
    pool: Pool,
    conn: Conn,
    grace: Duration,
    signals: bool,
    stop: Stopper,
    state: Arc<HostState>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("consumer", &self.consumer)
            .field("queues", &self.queues)
            .field("pool", &self.pool)
            .finish()
    }
}

/// What a host did, returned by [`Host::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostReport {
    /// Its consumer name.
    pub consumer: String,
    /// Jobs its pool ran (every attempt counts).
    pub ran: u64,
    /// Jobs settled with a value.
    pub succeeded: u64,
    /// Jobs settled with a failure (after their retries).
    pub failed: u64,
    /// Retries it queued.
    pub retried: u64,
    /// Jobs its stop interrupted, queued again.
    pub handed_back: u64,
    /// Entries it dead-lettered.
    pub dead_lettered: u64,
    /// Jobs it took over from hosts whose lease lapsed.
    pub reclaimed: u64,
    /// Jobs held back by their rate limit (once per wait).
    pub rate_limited: u64,
    /// Jobs another host had taken over by the time this one settled
    /// them: their results were dropped.
    pub dropped: u64,
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {}: ran {}, succeeded {}, failed {}, retried {}, handed back {}, \
             dead-lettered {}, reclaimed {}, rate-limited {}, dropped {}",
            self.consumer,
            self.ran,
            self.succeeded,
            self.failed,
            self.retried,
            self.handed_back,
            self.dead_lettered,
            self.reclaimed,
            self.rate_limited,
            self.dropped
        )
    }
}

impl Host {
    /// Its consumer name in Redis: `host:pid:random`, unique per start.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// Takes and runs jobs until stopped (a [`Stopper`], or SIGTERM /
    /// SIGINT when [`handle_signals`](HostBuilder::handle_signals) is on);
    /// then finishes or hands back its jobs, shuts its pool down (no
    /// process, thread or descriptor of it outlives this call) and reports.
    /// Errors only if its threads could not start; Redis failures while it
    /// runs are waited out.
    pub fn run(self) -> Result<HostReport, BrokerError> {
        let handlers = self.signals.then(Handlers::install);
        let stopping = Arc::new(AtomicBool::new(false));
        let quit = Arc::new(AtomicBool::new(false));
        let settling = Arc::new(Settling::new(
            self.state.clone(),
            self.keys.clone(),
            self.consumer.clone(),
            stopping.clone(),
            self.broker.max_message_size,
        ));
        let settler = Settler {
            settling: settling.clone(),
            conn: Conn::new(
                self.broker.client.clone(),
                self.broker.timeout,
                format!("host {} (settle)", self.consumer),
            ),
            quit: quit.clone(),
        };
        let settle = std::thread::Builder::new()
            .name("forkpool-settle".into())
            .spawn(move || settler.run())
            .map_err(|e| BrokerError::Pool(e.into()))?;
        let shared = self.pool.shared().clone();
        let workers = shared.config.queues[0].max_workers;
        let publisher = Publisher::new(&self.keys, &self.consumer, &self.queues, workers);
        let now = Instant::now();
        let mut lp = Loop {
            vt: self.broker.visibility_timeout,
            cap: self.broker.max_message_size,
            max_deliveries: u64::from(self.broker.max_deliveries),
            result_ttl_ms: self.broker.result_expires.as_millis() as u64,
            keys: self.keys,
            me: self.consumer.clone(),
            queues: self.queues,
            conn: self.conn,
            shared,
            workers,
            state: self.state.clone(),
            settling: settling.clone(),
            streams: Vec::new(),
            grouped: HashSet::new(),
            groups_of: 0,
            next_promote: now,
            next_renew: now,
            next_reclaim: now,
            next_refresh: now,
            next_control: now,
            sampler: Sampler::new(),
            publisher,
            stop: self.stop.level.clone(),
            handlers,
            stopping,
            deadline: None,
            grace: self.grace,
            dispatched: 0,
        };
        lp.run(&self.pool);
        lp.publisher.withdraw(&mut lp.conn);
        let state = lp.state.clone();
        drop(lp);
        // Every job's sink has delivered (or the pool was terminated, which
        // delivers the rest): the settle thread writes what is left, for a
        // while; then it is told to stop waiting for Redis.
        self.pool.join().ok();
        settling.end();
        let end = Instant::now() + self.broker.timeout * 2;
        while !state.held().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        quit.store(true, Ordering::Release);
        let _ = settle.join();
        let c = &state.counts;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Ok(HostReport {
            consumer: self.consumer,
            ran: get(&c.ran),
            succeeded: get(&c.succeeded),
            failed: get(&c.failed),
            retried: get(&c.retried),
            handed_back: get(&c.handed_back),
            dead_lettered: get(&c.dead_lettered),
            reclaimed: get(&c.reclaimed),
            rate_limited: get(&c.rate_limited),
            dropped: get(&c.dropped),
        })
    }
}

/// An entry as read from a stream.
struct RawEntry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Which delivery this is.
    deliveries: u64,
}

/// The host's loop and its state.
struct Loop {
    vt: Duration,
    cap: u64,
    max_deliveries: u64,
    result_ttl_ms: u64,
    keys: Keys,
    me: String,
    queues: Vec<String>,
    conn: Conn,
    shared: Arc<Shared>,
    workers: usize,
    state: Arc<HostState>,
    /// Finished jobs to settle (see `settle.rs`).
    settling: Arc<Settling>,
    /// `(priority, stream)`, highest priority first.
    streams: Vec<(i32, Arc<str>)>,
    /// Streams whose consumer group exists (as of connection `groups_of`).
    grouped: HashSet<Arc<str>>,
    groups_of: u64,
    next_promote: Instant,
    next_renew: Instant,
    next_reclaim: Instant,
    next_refresh: Instant,
    /// When the revokes are read on their own next (while no read of
    /// jobs reads them along).
    next_control: Instant,
    /// Progress sampling (`progress.rs`).
    sampler: Sampler,
    /// The host's snapshot, for `Client::inspect` (`inspect.rs`).
    publisher: Publisher,
    stop: Arc<AtomicU8>,
    handlers: Option<Handlers>,
    stopping: Arc<AtomicBool>,
    /// Set once a stop was asked: when the grace ends.
    deadline: Option<Instant>,
    grace: Duration,
    /// Jobs handed to the local pool so far.
    dispatched: u64,
}

impl Loop {
    /// 0 running, 1 stop, 2 stop now.
    fn stop_level(&self) -> u8 {
        let signals = self.handlers.as_ref().map_or(0, Handlers::received);
        self.stop.load(Ordering::Acquire).max(signals.min(2) as u8)
    }

    /// A Redis call may wait for a lost connection while this holds: until
    /// a stop is asked while running, until the grace ends (or a stop now)
    /// while stopping.
    fn go_on(&self) -> impl Fn() -> bool + use<> {
        let stop = self.stop.clone();
        let deadline = self.deadline;
        let signals = self.handlers.is_some();
        move || {
            let received = if signals {
                super::signals::received().min(2) as u8
            } else {
                0
            };
            let level = stop.load(Ordering::Acquire).max(received);
            match deadline {
                None => level == 0,
                Some(d) => level < 2 && Instant::now() < d,
            }
        }
    }

    fn run(&mut self, pool: &Pool) {
        let mut terminated = false;
        loop {
            let now = Instant::now();
            let level = self.stop_level();
            if level >= 1 && self.deadline.is_none() {
                self.deadline = Some(super::after(self.grace));
                self.stopping.store(true, Ordering::Release);
                log::info!(
                    "forkpool host {}: stopping ({} jobs running, grace {:?})",
                    self.me,
                    self.state.running(),
                    self.grace
                );
            }
            if level >= 2 {
                self.deadline = Some(now);
            }
            if let Some(d) = self.deadline {
                if self.state.running() == 0 {
                    return;
                }
                if now >= d && !terminated {
                    // Ends every job still running: each comes back
                    // `Cancelled`, and the settle thread hands it back.
                    pool.clone().terminate();
                    terminated = true;
                }
            }
            if now >= self.next_renew {
                self.next_renew = now + self.vt / 3;
                let go_on = self.go_on();
                if let Err(e) = self.state.renew(&mut self.conn, &go_on, &self.me) {
                    self.trouble("renewing leases", &e);
                }
            }
            if now >= self.publisher.next {
                let go_on = self.go_on();
                let stopping = self.deadline.is_some();
                if let Err(e) = self.publisher.publish(
                    &self.shared,
                    &self.state,
                    stopping,
                    &mut self.conn,
                    &go_on,
                ) {
                    self.trouble("publishing its snapshot", &e);
                }
            }
            if now >= self.next_control
                && let Err(e) = self.poll_revokes()
            {
                self.trouble("reading revokes", &e);
            }
            if self.deadline.is_some() {
                let go_on = self.go_on();
                self.settling.flush(&mut self.conn, &go_on);
                self.state.wait_below(1, TICK);
                continue;
            }
            if let Err(e) = self.step(now) {
                self.trouble("reading jobs", &e);
            }
        }
    }

    /// Reads the revokes on their own (all workers busy, or stopping).
    fn poll_revokes(&mut self) -> Result<(), BrokerError> {
        let go_on = self.go_on();
        let new = self
            .state
            .revoked
            .catch_up(&mut self.conn, &go_on, &self.keys)?;
        self.next_control = Instant::now() + CONTROL_EVERY;
        self.revoke_held(new);
        Ok(())
    }

    /// Takes in the revokes read along with jobs (reading the rest if there
    /// are more), and acts on them.
    fn learn(&mut self, reply: Value) -> Result<(), BrokerError> {
        if matches!(reply, Value::ServerError(_)) {
            return self.poll_revokes();
        }
        let (mut new, more) = self.state.revoked.absorb(reply);
        if more {
            let go_on = self.go_on();
            new.extend(
                self.state
                    .revoked
                    .catch_up(&mut self.conn, &go_on, &self.keys)?,
            );
        }
        self.next_control = Instant::now() + CONTROL_EVERY;
        self.revoke_held(new);
        Ok(())
    }

    /// Revokes, in the local pool, the jobs this host holds that were just
    /// revoked: not started, they never run; running, their worker is
    /// killed if `terminate` (and still on them). The outcome comes back
    /// through the job's sink; `settle.rs` never retries it.
    fn revoke_held(&self, new: Vec<(u64, bool)>) {
        if new.is_empty() {
            return;
        }
        let held: HashSet<u64> = self
            .state
            .held()
            .values()
            .filter(|h| !h.settling)
            .map(|h| h.env.id)
            .collect();
        for (id, terminate) in new {
            if held.contains(&id) {
                let what = self.shared.revoke(JobId(id), terminate);
                log::info!("forkpool host {}: revoked job {id}: {what:?}", self.me);
            }
        }
    }

    /// Reports an error that is not a lost connection (those are waited
    /// out in `Conn`), then waits a second: the loop never spins on one.
    fn trouble(&self, what: &str, e: &BrokerError) {
        if matches!(e, BrokerError::Stopped) {
            return;
        }
        log::error!("forkpool host {}: {what}: {e}", self.me);
        self.state.wait_below(0, Duration::from_secs(1));
    }

    /// One turn of a running host: timers, then read or wait.
    fn step(&mut self, now: Instant) -> Result<(), BrokerError> {
        if now >= self.next_refresh || self.conn.generation() != self.groups_of {
            self.refresh_streams()?;
            self.next_refresh = now + REFRESH_EVERY;
        }
        if now >= self.next_promote {
            self.promote()?;
        }
        if now >= self.sampler.next {
            let go_on = self.go_on();
            self.sampler.sample(
                &self.shared,
                &self.state,
                &mut self.conn,
                &go_on,
                &self.keys,
            )?;
        }
        let idle = self.workers.saturating_sub(self.state.running());
        if idle > 0 && now >= self.next_reclaim {
            self.next_reclaim =
                now + (self.vt / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
            let before = self.dispatched;
            let reclaimed = self.reclaim(idle);
            if self.dispatched != before {
                self.help();
            }
            reclaimed?;
        }
        let mut idle = self.workers.saturating_sub(self.state.running());
        if idle == 0 {
            idle = self.help();
        }
        let next = self
            .next_promote
            .min(self.next_renew)
            .min(self.next_refresh)
            .min(self.next_control)
            .min(self.sampler.next)
            .min(self.publisher.next);
        let wait = next.saturating_duration_since(Instant::now()).min(TICK);
        if idle == 0 {
            self.state.wait_below(self.workers, wait);
            return Ok(());
        }
        let before = self.dispatched;
        let read = self.read(idle, wait);
        if self.dispatched != before {
            self.help();
        }
        read
    }

    /// Steps the local pool on this thread for a short while, as a caller
    /// waiting for a local pool's job does: the jobs just taken go to
    /// workers without waking the pool's supervisor thread, and a quick
    /// job's answer is collected here too (two wake-ups fewer per job).
    /// Leaves through `help_while`, which wakes the supervisor thread if it
    /// must take over: the rule for a thread that steps the supervisor
    /// (`supervisor/drive.rs`) before it blocks. Returns the idle workers.
    fn help(&self) -> usize {
        use crate::supervisor::Help;
        let workers = self.workers;
        let state = &self.state;
        self.shared
            .driver
            .help_while(Duration::from_micros(200), &mut || {
                if state.running() < workers {
                    Help::Done
                } else {
                    Help::Idle
                }
            });
        workers.saturating_sub(state.running())
    }

    /// Reads this host's queues' priority levels; makes sure each stream
    /// has the consumer group.
    fn refresh_streams(&mut self) -> Result<(), BrokerError> {
        let go_on = self.go_on();
        let mut streams: Vec<(i32, Arc<str>)> = Vec::new();
        for q in &self.queues {
            let key = self.keys.priorities(q);
            let levels: Vec<String> = self.conn.run(&go_on, |con| {
                redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(con)
            })?;
            let mut levels: Vec<i32> = levels.iter().filter_map(|l| l.parse().ok()).collect();
            if !levels.contains(&0) {
                levels.push(0);
            }
            for p in levels {
                streams.push((p, self.keys.stream(q, p).into()));
            }
        }
        // Highest priority first; among equals, the order of the queues.
        streams.sort_by_key(|s| std::cmp::Reverse(s.0));
        if self.conn.generation() != self.groups_of {
            self.grouped.clear();
            self.groups_of = self.conn.generation();
        }
        for (_, s) in &streams {
            if !self.grouped.contains(s) {
                self.create_group(s)?;
            }
        }
        self.streams = streams;
        Ok(())
    }

    /// Creates the consumer group of `stream` (and the stream), reading
    /// from its start; a group that exists is fine.
    fn create_group(&mut self, stream: &Arc<str>) -> Result<(), BrokerError> {
        let go_on = self.go_on();
        let created = self.conn.run(&go_on, |con| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&**stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .exec(con)
        });
        match created {
            Err(BrokerError::Redis(m)) if !m.contains("BUSYGROUP") => {
                return Err(BrokerError::Redis(m));
            }
            Err(BrokerError::Stopped) => return Err(BrokerError::Stopped),
            _ => {}
        }
        self.grouped.insert(stream.clone());
        Ok(())
    }

    /// Moves due delayed jobs to their streams; schedules the next move.
    fn promote(&mut self) -> Result<(), BrokerError> {
        let go_on = self.go_on();
        let (moved, next_due, now_ms): (i64, i64, i64) = self.conn.run(&go_on, |con| {
            redis::cmd("EVALSHA")
                .arg(&Scripts::get().promote.sha)
                .arg(2)
                .arg(self.keys.delayed())
                .arg(self.keys.dead())
                .arg(self.keys.base())
                .arg(1000)
                .arg(super::revoke::revoked_value())
                .query(con)
        })?;
        let now = Instant::now();
        self.next_promote = if moved >= 1000 {
            now
        } else if next_due >= 0 {
            let wait = Duration::from_millis(next_due.saturating_sub(now_ms).max(0) as u64);
            now + wait.min(PROMOTE_EVERY)
        } else {
            now + PROMOTE_EVERY
        };
        Ok(())
    }

    /// Takes over up to `idle` jobs whose lease lapsed.
    fn reclaim(&mut self, mut idle: usize) -> Result<(), BrokerError> {
        let min_idle = self.vt.as_millis() as u64;
        let streams = self.streams.clone();
        for (_, stream) in streams {
            if idle == 0 {
                break;
            }
            let go_on = self.go_on();
            let mut pipe = redis::pipe();
            pipe.cmd("EVALSHA")
                .arg(&Scripts::get().reclaim.sha)
                .arg(1)
                .arg(&*stream)
                .arg(GROUP)
                .arg(&self.me)
                .arg(min_idle)
                .arg(idle);
            pipe.add_command(self.state.revoked.read_cmd(&self.keys));
            let (got, revokes): (Value, Value) = self.conn.run(&go_on, |con| pipe.query(con))?;
            self.learn(revokes)?;
            let entries = reclaimed_entries(got);
            idle = idle.saturating_sub(entries.len());
            for e in entries {
                bump(&self.state.counts.reclaimed);
                self.take(&stream, e);
            }
        }
        Ok(())
    }

    /// Reads up to `idle` entries, highest priority first; blocks up to
    /// `wait` when every stream is empty.
    fn read(&mut self, idle: usize, wait: Duration) -> Result<(), BrokerError> {
        let mut got = 0;
        if self.streams.len() > 1 {
            let streams = self.streams.clone();
            for (_, s) in &streams {
                if got >= idle {
                    return Ok(());
                }
                got += self.read_from(std::slice::from_ref(s), idle - got, None)?;
            }
            if got > 0 {
                return Ok(());
            }
        }
        let streams: Vec<Arc<str>> = self.streams.iter().map(|(_, s)| s.clone()).collect();
        let block = wait.max(Duration::from_millis(1));
        self.read_from(&streams, idle, Some(block))?;
        Ok(())
    }

    /// One `XREADGROUP` over `streams`; returns how many entries came.
    fn read_from(
        &mut self,
        streams: &[Arc<str>],
        count: usize,
        block: Option<Duration>,
    ) -> Result<usize, BrokerError> {
        let go_on = self.go_on();
        // What finished since the last read is settled in the same round
        // trip (see `settle.rs`).
        let prepared = self.settling.prepare(self.settling.take());
        let block = match block {
            Some(b) if self.settling.loop_blocks() => Some(b),
            _ => None,
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.me)
            .arg("COUNT")
            .arg(count);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for s in streams {
            cmd.arg(&**s);
        }
        for _ in streams {
            cmd.arg(">");
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if let Some(p) = &prepared {
            pipe.add_command(p.cmd.clone());
        }
        pipe.add_command(cmd);
        // After the read: every revoke recorded before it (see `revoke.rs`).
        pipe.add_command(self.state.revoked.read_cmd(&self.keys));
        let replies = self.conn.run(&go_on, |con| pipe.query::<Vec<Value>>(con));
        self.settling.loop_returns();
        let mut replies = replies.unwrap_or_default();
        let revokes = replies.pop().unwrap_or(Value::Nil);
        let reply = replies.pop().unwrap_or(Value::Nil);
        if let Some(p) = prepared {
            match replies.pop().map(redis::from_redis_value::<Vec<i64>>) {
                Some(Ok(flags)) => self.settling.settled(p, Ok(flags)),
                // Not sent (the pipeline failed, the host is stopping) or
                // refused (NOSCRIPT after a flush...): once more, alone.
                _ => {
                    let outcome = self.conn.run(&go_on, |con| p.cmd.query::<Vec<i64>>(con));
                    self.settling.settled(p, outcome);
                }
            }
        }
        let reply = match reply {
            Value::ServerError(e) if e.code() == "NOGROUP" => {
                // Redis lost the group (a restart without persistence, a
                // flush): make them again; the next turn reads.
                for s in streams {
                    self.grouped.remove(s);
                    self.create_group(s)?;
                }
                return Ok(0);
            }
            Value::ServerError(e) => return Err(BrokerError::Redis(e.to_string())),
            v => v,
        };
        // Learn the revokes before taking anything: on failure the entries
        // stay pending, to be reclaimed.
        self.learn(revokes)?;
        let mut n = 0;
        for (stream, entries) in read_reply(reply) {
            let Some(stream) = streams.iter().find(|s| ***s == *stream).cloned() else {
                continue;
            };
            for e in entries {
                n += 1;
                self.take(&stream, e);
            }
        }
        Ok(n)
    }

    /// Checks an entry and runs it, or settles or dead-letters it. A Redis
    /// error on the way is reported; the entry is then either settled
    /// later or left pending for a reclaim — never held without an end.
    fn take(&mut self, stream: &Arc<str>, e: RawEntry) {
        if let Err(err) = self.try_take(stream, e)
            && !matches!(err, BrokerError::Stopped)
        {
            log::error!("forkpool host {}: taking a job: {err}", self.me);
        }
    }

    fn try_take(&mut self, stream: &Arc<str>, e: RawEntry) -> Result<(), BrokerError> {
        let env = match Envelope::parse(&e.fields, self.cap) {
            Ok(env) => env,
            Err(why) => {
                let copy = !matches!(why, super::message::Malformed::Oversized { .. });
                return self.dead(stream, &e, why.to_string(), copy);
            }
        };
        let Some(job) = registry().by_name(&env.job) else {
            let why = format!(
                "unknown job name {:?}: this host has no such job registered",
                env.job
            );
            return self.dead(stream, &e, why, true);
        };
        let mine = job.fingerprint();
        if env.fingerprint != mine {
            let why = format!(
                "type fingerprint {:016x} is not this host's {mine:016x} for job {:?} \
                 (argument {}, result {}): the client and the host were built from different code",
                env.fingerprint, env.job, job.argument, job.result
            );
            return self.dead(stream, &e, why, true);
        }
        if e.deliveries > self.max_deliveries {
            let why = format!(
                "delivered {} times (max_deliveries is {}) without being settled: the hosts \
                 running it died or stalled",
                e.deliveries, self.max_deliveries
            );
            return self.dead(stream, &e, why, true);
        }
        let name = job.name;
        let call = (job.call)(env.codec, env.opts.ignore_result);
        let o = &env.opts;
        let defaults = JobOpts::for_queue(&self.shared.config, 0);
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        let time_limit = ms(o.time_limit_ms).or(defaults.time_limit);
        let soft = ms(o.soft_time_limit_ms).or(defaults.soft_time_limit);
        let invalid = match (soft, time_limit) {
            (Some(s), _) if s.is_zero() => Some("soft_time_limit must be above zero".to_string()),
            (_, Some(h)) if h.is_zero() => Some("time_limit must be above zero".to_string()),
            (Some(s), Some(h)) if s > h => Some(format!(
                "soft_time_limit ({s:?}) is above time_limit ({h:?})"
            )),
            _ => None,
        };
        let expired = o.expires_at_ms.is_some_and(|at| super::unix_ms() >= at);
        let rate = o.rate_interval_us;
        let priority = o.priority;
        let mut item = Vec::with_capacity(env.arg.len() + 4);
        let framed = wire::push_item(&mut item, |v| {
            v.extend_from_slice(&env.arg);
            Ok(())
        });
        let job_id = env.id;
        let revoked = self.state.revoked.get(job_id).is_some();
        let token = self.state.hold(Held {
            stream: stream.clone(),
            entry: e.id,
            deliveries: e.deliveries,
            env,
            lost: false,
            settling: false,
        });
        let refuse = |error: JobError| Settle::Refused { token, error };
        if revoked {
            self.settling.push(refuse(JobError::Revoked));
            return Ok(());
        }
        if let Some(message) = invalid {
            self.settling
                .push(refuse(JobError::InvalidOptions { message }));
            return Ok(());
        }
        if let Err(message) = framed {
            self.settling.push(refuse(JobError::Codec(message)));
            return Ok(());
        }
        if expired {
            self.settling.push(refuse(JobError::Expired));
            return Ok(());
        }
        if let Some(interval) = rate {
            // If the limiter cannot be asked, the job waits a second and
            // asks again (it is held, so it must be settled one way).
            let wait = match self.rate_wait(name, interval) {
                Ok(w) => w,
                Err(err) => {
                    self.settling.push(Settle::Later {
                        token,
                        delay_ms: 1000,
                    });
                    return Err(err);
                }
            };
            if wait > 0 {
                self.settling.push(Settle::Later {
                    token,
                    delay_ms: wait,
                });
                return Ok(());
            }
        }
        let opts = JobOpts {
            time_limit,
            soft_time_limit: soft,
            priority,
            ..defaults
        };
        let sink = Arc::new(HostSink {
            token,
            settling: self.settling.clone(),
            done: AtomicBool::new(false),
        });
        // Under the broker's job id: what a revoke and the progress
        // sampling find it by in the local pool.
        let mut batch = Batch::new(call, item, 1, 0, sink, opts, Some(JobId(job_id)));
        batch.name = name;
        self.state.started();
        // Quietly: the loop steps the pool itself right after (`help`),
        // and wakes the supervisor thread only if it must.
        self.shared.submit(batch, true);
        self.dispatched += 1;
        Ok(())
    }

    /// Asks the job name's global limiter for a start: 0, or the ms to wait.
    fn rate_wait(&mut self, name: &str, interval_us: u64) -> Result<u64, BrokerError> {
        let go_on = self.go_on();
        let key = self.keys.rate(name);
        self.conn.run(&go_on, |con| {
            redis::cmd("EVALSHA")
                .arg(&Scripts::get().rate.sha)
                .arg(1)
                .arg(&key)
                .arg(interval_us.max(1))
                .query::<u64>(con)
        })
    }

    /// Dead-letters an entry with its reason.
    fn dead(
        &mut self,
        stream: &Arc<str>,
        e: &RawEntry,
        reason: String,
        copy_values: bool,
    ) -> Result<(), BrokerError> {
        let ttl_ms = e
            .fields
            .iter()
            .find(|(k, _)| k == b"opt")
            .and_then(|(_, v)| serde_json::from_slice::<super::message::Opts>(v).ok())
            .map_or(self.result_ttl_ms, |o| o.result_ttl_ms);
        let burial = Burial {
            stream,
            entry: &e.id,
            deliveries: e.deliveries,
            reason,
            fields: &e.fields,
            copy_values,
            job_id: Envelope::claimed_id(&e.fields),
            reply: Envelope::claimed_reply(&e.fields),
            ttl_ms,
        };
        let go_on = self.go_on();
        if bury(&mut self.conn, &go_on, &self.keys, &self.me, &burial)? {
            bump(&self.state.counts.dead_lettered);
            log::warn!(
                "forkpool host {}: dead-lettered entry {} of {stream}: {}",
                self.me,
                e.id,
                burial.reason
            );
        }
        Ok(())
    }
}

/// The bytes of a reply value, if it is a string.
/// An entry `[id, [field, value, ...]]`; `None` for anything else.
fn entry(v: Value, deliveries: u64) -> Option<RawEntry> {
    let mut parts = items(v).into_iter();
    let id = String::from_utf8(bytes(parts.next()?)?).ok()?;
    let flat = items(parts.next().unwrap_or(Value::Nil));
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let Some(k) = it.next() {
        let v = it.next().and_then(bytes).unwrap_or_default();
        fields.push((bytes(k).unwrap_or_default(), v));
    }
    Some(RawEntry {
        id,
        fields,
        deliveries,
    })
}

/// The reply of `XREADGROUP`: per stream, its entries (first deliveries).
fn read_reply(v: Value) -> Vec<(String, Vec<RawEntry>)> {
    per_stream(v)
        .into_iter()
        .map(|(key, es)| {
            let entries = items(es).into_iter().filter_map(|e| entry(e, 1)).collect();
            (key, entries)
        })
        .collect()
}

/// The reply of `RECLAIM`: `{{id, fields, deliveries}, ...}`.
fn reclaimed_entries(v: Value) -> Vec<RawEntry> {
    items(v)
        .into_iter()
        .filter_map(|t| {
            let mut p = items(t);
            let n = match p.pop()? {
                Value::Int(n) => n.max(1) as u64,
                _ => 1,
            };
            entry(Value::Array(p), n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::reply::bulk;

    #[test]
    fn replies_are_read_whatever_their_shape() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("{p}:q:default:0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("id"), bulk("7"), bulk("odd")]),
                ]),
                Value::Int(3),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let got = read_reply(reply);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "{p}:q:default:0");
        let es = &got[0].1;
        assert_eq!(es.len(), 2, "the integer is skipped");
        assert_eq!(
            es[0].fields,
            vec![(b"id".to_vec(), b"7".to_vec()), (b"odd".to_vec(), vec![])]
        );
        assert!(es[1].fields.is_empty());
        assert!(read_reply(Value::Nil).is_empty());
        let reclaimed = Value::Array(vec![Value::Array(vec![
            bulk("3-1"),
            Value::Array(vec![bulk("a"), bulk("b")]),
            Value::Int(4),
        ])]);
        let r = reclaimed_entries(reclaimed);
        assert_eq!((r[0].id.as_str(), r[0].deliveries), ("3-1", 4));
    }
}
