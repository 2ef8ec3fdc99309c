//! The supervisor: one thread per pool that owns the workers.
//!
//! It takes [`Command`]s from the pool's callers, hands batches to workers
//! (idle ones first, a few queued per worker when jobs are small), collects
//! their answers, enforces time limits, and replaces workers that die or
//! retire. It is the only thread that touches a worker's shared memory or
//! the fork server.
//!
//! Its loop never blocks on one worker: it sleeps in `epoll` over the
//! command wake-up, the fork server, and every worker's doorbell and pidfd,
//! with a timeout set by the nearest time limit. Workers only ring when it
//! has announced that it sleeps, so a busy pool runs without wake-up
//! system calls.
//!
//! Jobs that may not start yet (a countdown, an ETA, a retry's backoff, a
//! rate limit's next slot) wait in its timers (`timers.rs`), not in a
//! worker; a job whose expiry passes before it started is resolved as
//! expired wherever it waits; a function's throttle (`throttle.rs`, its rate limit) is
//! asked before each of its items is handed to an idle worker.
//!
//! Promises: every batch it receives is resolved exactly once per item — by
//! a worker's answer, a charged failure, or `Cancelled` when the pool is
//! terminated or the supervisor itself fails — and when the thread ends, no
//! worker or fork server of this pool is left running.

mod conn;
mod drive;
mod restart;
mod standby;
mod timers;

pub(crate) use drive::{Driver, Help, Submitter};

use crate::batch::progress::Progress;
use crate::batch::throttle::Throttles;
use crate::batch::{Batch, JobId};
use crate::config::PoolConfig;
use crate::error::{Error, JobError};
use crate::metrics::stats::Counters;
use crate::sys::clock;
use crate::sys::prefault::Spares;
use crate::sys::spin;
use crate::transport::bell::Drained;
use crate::worker::zygote::{Event, Polled, ZygoteLink};
use conn::{Conn, Ctx};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use drive::Wake;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use restart::Restart;
use standby::Standby;
use std::collections::{HashMap, VecDeque};

use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use timers::Timers;

/// Most batches of several items queued at one worker.
const PREFETCH_BATCHES: usize = 2;
/// Most single-item batches queued at one worker.
const PREFETCH_SINGLES: usize = 32;
/// Consecutive failed worker starts after which queued jobs fail.
const START_FAILURES: u32 = 3;

/// What the pool's callers ask of the supervisor.
pub(crate) enum Command {
    Submit(Batch),
    Cancel {
        id: JobId,
        reply: Sender<bool>,
    },
    /// Where is this single job now?
    Inspect {
        id: JobId,
        reply: Sender<Whereabouts>,
    },
    /// The job was cancelled before it was dispatched: if it waits in the
    /// timers, drop it now rather than when it falls due.
    Discard(JobId),
    /// Accept no new work (callers check; this stops replacements when idle).
    Close,
    /// Finish all work, let the workers exit, then end.
    Join,
    /// Kill everything now.
    Terminate,
}

/// Where a single job is, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whereabouts {
    /// Waiting for a start time (countdown, ETA, retry backoff, rate limit).
    Scheduled,
    /// Waiting for a worker: in the queue, or in a worker's inbox behind
    /// another job.
    Queued,
    /// A worker is running it; with the latest progress it reported.
    Running { progress: Option<Progress> },
    /// Not with the supervisor: finished, unknown, or not yet received.
    Elsewhere,
}

/// Forks the zygote and starts the supervisor thread.
pub(crate) fn start(
    config: Arc<PoolConfig>,
    counters: Arc<Counters>,
    throttles: Arc<Throttles>,
    spares: Spares,
) -> Result<(Submitter, Driver, JoinHandle<()>), Error> {
    let zygote = ZygoteLink::start(&config.worker, zygote_capacity(&config))?;
    let wake = Arc::new(Wake::new()?);
    let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
    epoll.add(wake.fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE))?;
    epoll.add(
        zygote.fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_ZYGOTE),
    )?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let sup = Supervisor {
        standby: Standby::new(config.standby),
        config,
        counters,
        spares,
        cmds: rx,
        wake: wake.clone(),
        epoll: epoll.clone(),
        zygote: Some(zygote),
        restart: None,
        zygote_ready: true,
        steps: 0,
        conns: Vec::new(),
        next_key: 1,
        activated: 0,
        standby_hold: None,
        pending: VecDeque::new(),
        timers: Timers::default(),
        throttles,
        dispatched_jobs: HashMap::new(),
        done_jobs: Vec::new(),
        closing: false,
        joining: false,
        terminate: false,
        start_failures: 0,
        last_start_error: String::new(),
        spawn_after: 0,
        next_deadline: None,
        sleep_until: None,
    };
    let core = Arc::new(Mutex::new(sup));
    let driver = Driver::new(core.clone(), wake.clone());
    let handle = std::thread::Builder::new()
        .name("forkpool-supervisor".into())
        .spawn(move || drive::run(core, epoll))
        .map_err(Error::Io)?;
    Ok((Submitter::new(tx, wake), driver, handle))
}

/// Children the fork server must keep track of at once: the workers, a
/// standby, and replacements forked while dead ones are being reported.
fn zygote_capacity(config: &PoolConfig) -> usize {
    2 * config.workers + 8
}

const TOKEN_WAKE: u64 = 0;
const TOKEN_ZYGOTE: u64 = 1;
const KIND_BELL: u64 = 2;
const KIND_PIDFD: u64 = 3;

fn token(key: u64, kind: u64) -> u64 {
    key << 2 | kind
}

struct Supervisor {
    config: Arc<PoolConfig>,
    counters: Arc<Counters>,
    /// Big buffers for answers, from and back to the pool's stocks.
    spares: Spares,
    cmds: Receiver<Command>,
    wake: Arc<Wake>,
    epoll: Arc<Epoll>,
    zygote: Option<ZygoteLink>,
    /// A new fork server being forked after the last one died.
    restart: Option<Restart>,
    /// The fork server's socket is readable (polling it costs a system
    /// call, so only after the poller said so).
    zygote_ready: bool,
    /// Steps taken (by anyone), for occasional polling.
    steps: u32,
    conns: Vec<Conn>,
    next_key: u64,
    /// Workers ever put to work (forked as one of the N, or a standby
    /// promoted); those past the first N are restarts.
    activated: u64,
    /// Whether to keep a spare worker forked (`standby.rs`).
    standby: Standby,
    /// The next standby is held back until then (coarse ns).
    standby_hold: Option<u64>,
    /// Batches waiting for a worker, oldest first.
    pending: VecDeque<Batch>,
    /// Batches waiting for their start time, and jobs' expiry times.
    timers: Timers,
    /// Throttles (rate limits) by function.
    throttles: Arc<Throttles>,
    /// Cancellable jobs sent to a worker: job → worker key.
    dispatched_jobs: HashMap<JobId, u64>,
    done_jobs: Vec<JobId>,
    closing: bool,
    joining: bool,
    terminate: bool,
    start_failures: u32,
    last_start_error: String,
    /// No spawn before this coarse-clock instant (backoff after failures).
    spawn_after: u64,
    /// The earliest time limit due, as of the last step.
    next_deadline: Option<u64>,
    /// While the supervisor thread sleeps: until when (`u64::MAX`: no timeout).
    sleep_until: Option<u64>,
}

impl Supervisor {
    /// Does everything that can be done now without waiting. Either the
    /// supervisor thread or a caller helping (see `drive`) calls it, under
    /// the lock. False once the supervisor's work is over (terminate, or a
    /// join that completed).
    fn step(&mut self) -> bool {
        self.commands();
        if self.terminate {
            return false;
        }
        self.run_timers();
        // Polling the fork server costs a system call: do it when the
        // poller said it has something, and every few steps anyway, so a
        // caller helping (whom the poller does not wake) learns of a dead
        // worker without waiting for the supervisor thread.
        self.steps = self.steps.wrapping_add(1);
        if self.restart.is_some() {
            self.restarted();
        }
        if std::mem::take(&mut self.zygote_ready) || self.steps.is_multiple_of(16) {
            self.zygote_events();
        }
        self.service_workers();
        if self.joining {
            // A retry resubmits through the command queue while results are
            // taken in: take it in before the pool may count itself done
            // (and before the next wake-up is computed).
            self.commands();
            if self.terminate {
                return false;
            }
        }
        self.dispatch();
        self.next_deadline = match (self.deadlines(), self.timers.next_wake()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.maintain();
        if let Some(t) = self.standby_hold {
            self.next_deadline = Some(self.next_deadline.map_or(t, |d| d.min(t)));
        }
        if self.joining
            && self.pending.is_empty()
            && self.timers.is_empty()
            && !self.conns.iter().any(Conn::busy)
        {
            if self.conns.is_empty() {
                return false;
            }
            self.conns.iter_mut().for_each(Conn::request_exit);
        }
        let cpu = spin::current_cpu();
        for c in &mut self.conns {
            c.publish(cpu);
        }
        self.update_live();
        true
    }

    /// Whether work is outstanding that the supervisor thread must look
    /// after once the caller that is helping leaves.
    fn needs_driver(&self) -> bool {
        self.terminate
            || self.joining
            || !self.pending.is_empty()
            || !self.cmds.is_empty()
            || self.conns.iter().any(|c| c.busy() || !c.is_ready())
            || match (self.next_deadline, self.sleep_until) {
                (Some(due), Some(until)) => due < until,
                (Some(_), None) => true,
                _ => false,
            }
    }

    /// Takes every queued command.
    fn commands(&mut self) {
        loop {
            match self.cmds.try_recv() {
                Ok(Command::Submit(batch)) => self.accept(batch),
                Ok(Command::Cancel { id, reply }) => {
                    let done = self.cancel(id);
                    let _ = reply.send(done);
                }
                Ok(Command::Inspect { id, reply }) => {
                    let _ = reply.send(self.whereabouts(id));
                }
                Ok(Command::Discard(id)) => {
                    if let Some(mut batch) = self.timers.take_job(id) {
                        batch.forget(batch.count());
                    }
                }
                Ok(Command::Close) => self.closing = true,
                Ok(Command::Join) => {
                    self.closing = true;
                    self.joining = true;
                }
                Ok(Command::Terminate) => self.terminate = true,
                Err(TryRecvError::Empty) => return,
                // Every caller handle is gone without a word: nothing can
                // wait on the remaining work.
                Err(TryRecvError::Disconnected) => {
                    self.terminate = true;
                    return;
                }
            }
        }
    }

    /// Takes in a submitted batch: to the timers if it may not start yet,
    /// else to the dispatch queue.
    fn accept(&mut self, mut batch: Batch) {
        batch.throttle = self.throttles.get(batch.call.func);
        if let (Some(at), Some(id)) = (batch.opts.expires_at, batch.job) {
            self.timers.watch_expiry(at, id);
        }
        match batch.opts.not_before {
            Some(at) if at > clock::coarse_ns() => self.timers.schedule(at, batch),
            _ => self.pending.push_back(batch),
        }
    }

    /// Moves batches whose start time came to the dispatch queue, and
    /// expires jobs whose expiry came before they started.
    fn run_timers(&mut self) {
        let now = clock::coarse_ns();
        while let Some(batch) = self.timers.pop_due(now) {
            self.pending.push_back(batch);
        }
        while let Some(id) = self.timers.pop_expired(now) {
            self.expire(id);
        }
    }

    /// Takes job `id` out of the timers or the queue, if it waits there (not
    /// yet handed to a worker).
    fn take_undispatched(&mut self, id: JobId) -> Option<Batch> {
        self.timers.take_job(id).or_else(|| {
            let pos = self.pending.iter().position(|b| b.job == Some(id))?;
            self.pending.remove(pos)
        })
    }

    /// Resolves job `id` as expired if it has not started; a job already
    /// running (or finished) is left alone.
    fn expire(&mut self, id: JobId) {
        if let Some(mut batch) = self.take_undispatched(id) {
            // Single jobs only: resolved here unless cancelled meanwhile.
            if batch.sink.fail_now(JobError::Expired) {
                self.counters.count_error(&JobError::Expired, 1);
            }
            batch.forget(batch.count());
            return;
        }
        let Some(&key) = self.dispatched_jobs.get(&id) else {
            return;
        };
        if let Some(conn) = self.conns.iter_mut().find(|c| c.key == key) {
            let mut ctx = Ctx {
                counters: &self.counters,
                done_jobs: &mut self.done_jobs,
                spares: &self.spares,
            };
            conn.withdraw(id, JobError::Expired, &mut ctx);
        }
    }

    fn whereabouts(&self, id: JobId) -> Whereabouts {
        if self.timers.contains(id) {
            return Whereabouts::Scheduled;
        }
        if self.pending.iter().any(|b| b.job == Some(id)) {
            return Whereabouts::Queued;
        }
        self.dispatched_jobs
            .get(&id)
            .and_then(|key| self.conns.iter().find(|c| c.key == *key))
            .and_then(|c| c.whereabouts(id))
            .unwrap_or(Whereabouts::Elsewhere)
    }

    fn cancel(&mut self, id: JobId) -> bool {
        if let Some(mut batch) = self.take_undispatched(id) {
            if batch.sink.cancel_now() {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            batch.forget(batch.count());
            return true;
        }
        let Some(&key) = self.dispatched_jobs.get(&id) else {
            return false;
        };
        let Some(conn) = self.conns.iter_mut().find(|c| c.key == key) else {
            return false;
        };
        let mut ctx = Ctx {
            counters: &self.counters,
            done_jobs: &mut self.done_jobs,
            spares: &self.spares,
        };
        conn.cancel(id, &mut ctx)
    }

    fn zygote_events(&mut self) {
        loop {
            let Some(z) = &self.zygote else { return };
            match z.poll() {
                Polled::Empty => return,
                Polled::Closed => return self.zygote_lost(),
                Polled::Event(Event::Spawned { key, pid, pidfd }) => {
                    if let Some(c) = self.conns.iter_mut().find(|c| c.key == key) {
                        c.spawned(pid, pidfd);
                        if let Some(fd) = c.pidfd() {
                            let ev = EpollEvent::new(EpollFlags::EPOLLIN, token(key, KIND_PIDFD));
                            c.pidfd_registered = self.epoll.add(fd, ev).is_ok();
                        }
                    }
                }
                Polled::Event(Event::SpawnFailed { key, error }) => {
                    if let Some(c) = self.conns.iter_mut().find(|c| c.key == key) {
                        c.spawn_failed = true;
                    }
                    self.start_failed(format!("fork failed: {error}"));
                }
                Polled::Event(Event::Exited { key, status }) => {
                    if let Some(c) = self.conns.iter_mut().find(|c| c.key == key) {
                        c.status = Some(status);
                    }
                }
            }
        }
    }

    /// The fork server died (or broke the protocol). Its workers keep
    /// serving as orphans; `maintain` forks a new fork server. A worker it
    /// was asked for but never confirmed (it may have died mid-`fork`) is
    /// let go if it holds no job (if it exists, it exits on its doorbell's
    /// end-of-file); one that holds jobs is asked to exit once it has
    /// answered them, and is known until then by its pipe only.
    fn zygote_lost(&mut self) {
        if let Some(z) = self.zygote.take() {
            let _ = self.epoll.delete(z.fd());
            drop(z); // reaps it (or, if it lives, stops it and then reaps it)
        }
        for c in &mut self.conns {
            if c.pid().is_none() && !c.busy() {
                c.spawn_failed = true;
            } else {
                c.orphaned = true;
                if c.pid().is_none() {
                    // Known by its pipe only: let it answer what it holds,
                    // then exit (its pipe's end-of-file closes its books),
                    // and count a replacement for it at once.
                    c.request_exit();
                }
            }
        }
    }

    /// Installs the new fork server once the helper has forked it.
    fn restarted(&mut self) {
        let Some(result) = self.restart.as_ref().and_then(Restart::poll) else {
            return;
        };
        self.restart = None;
        let registered = result.and_then(|link| {
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_ZYGOTE);
            self.epoll.add(link.fd(), ev)?;
            Ok(link)
        });
        match registered {
            Ok(link) => {
                // The dead fork server's workers: the new one kills them
                // too if the caller dies.
                for c in self.conns.iter().filter(|c| c.orphaned) {
                    if let (Some(pid), Some(fd)) = (c.pid(), c.pidfd()) {
                        let _ = link.adopt(c.key, pid, fd);
                    }
                }
                self.zygote = Some(link);
                self.zygote_ready = true;
                self.counters
                    .fork_server_restarts
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.start_failed(format!("could not restart the fork server: {e}")),
        }
    }

    /// Takes in answers, continues streaming frames, and closes the books
    /// of workers that died.
    fn service_workers(&mut self) {
        let mut i = 0;
        while i < self.conns.len() {
            let mut ctx = Ctx {
                counters: &self.counters,
                done_jobs: &mut self.done_jobs,
                spares: &self.spares,
            };
            let c = &mut self.conns[i];
            c.pump_rx(&mut ctx);
            c.pump_tx();
            if c.is_ready() {
                self.start_failures = 0;
            }
            if !c.finished() {
                i += 1;
                continue;
            }
            let mut c = self.conns.swap_remove(i);
            let requeue = c.finalize(&mut ctx);
            if let Some(code @ 70..=72) = c.status.and_then(|s| s.code()) {
                // The worker left on its own over a broken frame or ring: a
                // forkpool bug, worth saying out loud (its jobs ran elsewhere).
                eprintln!(
                    "forkpool: worker {} exited with code {code}, forkpool's code for a broken \
                     frame or ring (unless a job called exit({code})): please report this",
                    c.pid().unwrap_or(0)
                );
            }
            if let Some(why) = c.violation() {
                eprintln!(
                    "forkpool: worker {} broke the protocol ({why}); treated as crashed",
                    c.pid().unwrap_or(0)
                );
            }
            for batch in requeue.into_iter().rev() {
                self.pending.push_front(batch);
            }
            if c.bell_registered {
                let _ = self.epoll.delete(c.bell_fd());
            }
            if c.pidfd_registered
                && let Some(fd) = c.pidfd()
            {
                let _ = self.epoll.delete(fd);
            }
            if !c.is_ready() && !c.ended_on_purpose() && !c.spawn_failed {
                let why = match c.init_failure() {
                    Some(msg) => msg.to_string(),
                    None => format!(
                        "worker {} exited before it was ready ({:?})",
                        c.pid().unwrap_or(0),
                        c.status
                    ),
                };
                self.start_failed(why);
            }
        }
        for id in self.done_jobs.drain(..) {
            self.dispatched_jobs.remove(&id);
        }
    }

    fn start_failed(&mut self, why: String) {
        self.start_failures += 1;
        self.last_start_error = why;
        let backoff = 50_000_000u64 << self.start_failures.min(5);
        self.spawn_after = clock::coarse_ns() + backoff;
        if self.start_failures >= START_FAILURES && !self.conns.iter().any(Conn::is_ready) {
            let error = JobError::WorkerStart {
                message: self.last_start_error.clone(),
            };
            for mut batch in self.pending.drain(..) {
                self.counters.count_error(&error, u64::from(batch.count()));
                batch.fail(batch.count(), error.clone());
            }
        }
    }

    /// Enforces time limits; returns the nearest deadline.
    fn deadlines(&mut self) -> Option<u64> {
        let now = clock::coarse_ns();
        self.conns
            .iter_mut()
            .filter_map(|c| c.check_deadlines(now))
            .min()
    }

    /// Hands pending batches to workers.
    fn dispatch(&mut self) {
        let now = clock::coarse_ns();
        while let Some(front) = self.pending.front() {
            if !front.sink.claim() {
                let mut batch = self.pending.pop_front().expect("front exists");
                batch.forget(batch.count());
                continue;
            }
            if front.opts.expires_at.is_some_and(|at| at <= now) {
                let mut batch = self.pending.pop_front().expect("front exists");
                let n = batch.count();
                self.counters.count_error(&JobError::Expired, u64::from(n));
                batch.fail(n, JobError::Expired);
                continue;
            }
            let Some(i) = self.pick(front) else { return };
            let mut batch = self.pending.pop_front().expect("front exists");
            if batch.throttle.is_some() {
                match self.pass_throttle(batch, now) {
                    Some(admitted) => batch = admitted,
                    None => continue,
                }
            }
            if let Some(left) = self.conns[i].tasks_left()
                && left < u64::from(batch.count())
            {
                let front_part = batch.split_front(left as u32);
                self.pending.push_front(batch);
                batch = front_part;
            }
            let job = batch.job;
            let key = self.conns[i].key;
            // Handed to a worker, the items leave the bounded queue.
            let ticket = batch.ticket.take();
            match self.conns[i].try_send(batch) {
                Ok(()) => {
                    drop(ticket);
                    if let Some(id) = job {
                        self.dispatched_jobs.insert(id, key);
                    }
                    if self.conns[i].tasks_left() == Some(0) {
                        self.conns[i].request_exit();
                    }
                }
                Err(mut batch) => {
                    batch.ticket = ticket;
                    self.pending.push_front(batch);
                    return;
                }
            }
        }
    }

    /// Asks the batch's throttle whether its first item may start now. Throttled
    /// items go one at a time: the rest of the batch goes back to the
    /// queue's front. An item refused waits in the timers until the instant
    /// the throttle gave, then queues again.
    fn pass_throttle(&mut self, mut batch: Batch, now: u64) -> Option<Batch> {
        if batch.count() > 1 {
            let one = batch.split_front(1);
            self.pending.push_front(batch);
            batch = one;
        }
        let throttle = batch.throttle.as_ref().expect("throttled batch");
        match throttle.admit(now, batch.throttle_waited) {
            Ok(()) => Some(batch),
            Err(at) => {
                batch.throttle_waited = true;
                self.timers.schedule(at.max(now + 1), batch);
                None
            }
        }
    }

    /// The worker to send `batch` to: the least loaded that may take it,
    /// preferring workers that are already up. A gated item goes only to a
    /// worker with nothing queued, so that it starts when it is sent.
    fn pick(&self, batch: &Batch) -> Option<usize> {
        let single = batch.count() == 1;
        let queue_limit = if single {
            PREFETCH_SINGLES
        } else {
            PREFETCH_BATCHES
        };
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.accepts(batch.job.is_some()) && c.inflight_batches() < queue_limit)
            .filter(|(_, c)| batch.throttle.is_none() || !c.busy())
            .min_by_key(|(_, c)| (c.inflight_items(), !c.is_ready()))
            .map(|(i, _)| i)
    }

    /// Starts workers until the pool is at strength.
    fn maintain(&mut self) {
        if self.zygote.is_none() {
            // Jobs wait for it; if forking it keeps failing, `start_failed`
            // fails them rather than let them hang.
            let idle = self.closing && self.pending.is_empty();
            if self.restart.is_none() && !idle && clock::coarse_ns() >= self.spawn_after {
                match Restart::begin(self.config.clone(), self.wake.clone()) {
                    Ok(r) => self.restart = Some(r),
                    Err(e) => self.start_failed(format!("could not restart the fork server: {e}")),
                }
            }
            return;
        }
        let want = if self.closing && self.pending.is_empty() {
            0
        } else {
            self.config.workers
        };
        let mut have = self
            .conns
            .iter()
            .filter(|c| !c.standby && c.counts_toward_strength())
            .count();
        while have < want {
            if self.activated >= self.config.workers as u64 {
                self.standby.worker_replaced();
            }
            if let Some(c) = self
                .conns
                .iter_mut()
                .find(|c| c.standby && c.counts_toward_strength())
            {
                c.standby = false;
                c.promoted_at = Some(clock::coarse_ns());
                self.activated();
            } else if clock::coarse_ns() < self.spawn_after || !self.spawn_one(false) {
                return;
            }
            have += 1;
        }
        self.standby_hold = None;
        if want == 0 || !self.standby.wanted() || clock::coarse_ns() < self.spawn_after {
            return;
        }
        if self
            .conns
            .iter()
            .any(|c| (c.standby && c.counts_toward_strength()) || c.awaiting_exit_status())
        {
            return;
        }
        match standby::hold(self.conns.iter().map(|c| c.promoted_at), clock::coarse_ns()) {
            Some(until) => self.standby_hold = Some(until),
            None => {
                self.spawn_one(true);
            }
        }
    }

    /// Counts a worker put to work; past the first N, a restart.
    fn activated(&mut self) {
        if self.activated >= self.config.workers as u64 {
            self.counters
                .worker_restarts
                .fetch_add(1, Ordering::Relaxed);
        }
        self.activated += 1;
    }

    /// Asks the fork server for a worker: one of the N, or a `standby`.
    fn spawn_one(&mut self, standby: bool) -> bool {
        let key = self.next_key;
        self.next_key += 1;
        let tasks = self.config.max_tasks_per_worker.map(|t| t as u64);
        let (mut conn, fds) = match Conn::new(
            key,
            self.config.worker.ring_size,
            self.config.worker.max_message_size,
            tasks,
        ) {
            Ok(x) => x,
            Err(e) => {
                self.start_failed(format!("could not set up a worker: {e}"));
                return false;
            }
        };
        let Some(z) = &self.zygote else { return false };
        if let Err(e) = z.spawn(key, fds.borrow()) {
            self.start_failed(format!("could not reach the fork server: {e}"));
            return false;
        }
        drop(fds);
        let ev = EpollEvent::new(EpollFlags::EPOLLIN, token(key, KIND_BELL));
        conn.bell_registered = self.epoll.add(conn.bell_fd(), ev).is_ok();
        conn.standby = standby;
        if !standby {
            self.activated();
        }
        self.conns.push(conn);
        true
    }

    fn update_live(&self) {
        let (mut live, mut standby) = (0, 0);
        for c in &self.conns {
            if c.pid().is_some() && c.status.is_none() && !c.gone {
                if c.standby {
                    standby += 1;
                } else {
                    live += 1;
                }
            }
        }
        self.counters.live_workers.store(live, Ordering::Relaxed);
        self.counters
            .standby_workers
            .store(standby, Ordering::Relaxed);
        self.counters
            .scheduled
            .store(self.timers.items(), Ordering::Relaxed);
    }

    /// Gets ready to sleep until a command, a worker, the fork server or a
    /// deadline needs the supervisor: asks every worker to ring when it
    /// writes. Returns the timeout in milliseconds (`None`: no timeout), or
    /// `Err` when there is already work to do.
    fn prepare_sleep(&mut self) -> Result<Option<u64>, ()> {
        self.wake.set_sleeping(true);
        fence(Ordering::SeqCst);
        let room = self.pending.front().map_or(0, |b| b.items_len() + 64);
        let mut idle = self.cmds.is_empty();
        // A new fork server forked (and rung for) just before we set the
        // flag: take it now, its wake-up may have come too early.
        idle &= !self.restart.as_ref().is_some_and(Restart::done);
        for c in &mut self.conns {
            idle &= c.prepare_sleep(room);
        }
        if !idle {
            self.after_sleep(&[]);
            return Err(());
        }
        let mut until = self.next_deadline;
        let active = self.conns.iter().filter(|c| !c.standby).count();
        if self.spawn_after > 0 && active < self.config.workers {
            until = Some(until.map_or(self.spawn_after, |t| t.min(self.spawn_after)));
        }
        self.sleep_until = Some(until.unwrap_or(u64::MAX));
        Ok(until.map(|t| t.saturating_sub(clock::coarse_ns()).div_ceil(1_000_000)))
    }

    /// Back from sleeping: withdraws the requests to ring and takes note of
    /// what the poller reported.
    fn after_sleep(&mut self, events: &[EpollEvent]) {
        self.wake.set_sleeping(false);
        self.sleep_until = None;
        for c in &self.conns {
            c.awake();
        }
        for ev in events {
            let t = ev.data();
            match t {
                TOKEN_WAKE => self.wake.drain(),
                TOKEN_ZYGOTE => self.zygote_ready = true,
                _ => {
                    let (key, kind) = (t >> 2, t & 3);
                    let Some(c) = self.conns.iter_mut().find(|c| c.key == key) else {
                        continue;
                    };
                    if kind == KIND_BELL {
                        if c.drain_bell() == Drained::Eof {
                            let _ = self.epoll.delete(c.bell_fd());
                            c.bell_registered = false;
                        }
                    } else if kind == KIND_PIDFD {
                        c.gone = true;
                        if let Some(fd) = c.pidfd() {
                            let _ = self.epoll.delete(fd);
                        }
                        c.pidfd_registered = false;
                    }
                }
            }
        }
    }

    /// A caller is about to step: workers need not ring for it.
    fn helping(&mut self) {
        for c in &self.conns {
            c.awake();
        }
    }

    /// Whether a worker with work in flight last ran on `cpu`.
    fn busy_worker_on(&self, cpu: u32) -> bool {
        self.conns.iter().any(|c| c.busy() && c.worker_cpu() == cpu)
    }

    /// Ends the pool: kills every worker, resolves every job left as
    /// cancelled, and waits for the fork server to reap everything.
    fn shutdown(&mut self) {
        let mut ctx = Ctx {
            counters: &self.counters,
            done_jobs: &mut self.done_jobs,
            spares: &self.spares,
        };
        for c in &mut self.conns {
            c.abandon(&mut ctx);
        }
        let left: u64 = self.pending.iter().map(|b| u64::from(b.count())).sum();
        self.counters.cancelled.fetch_add(left, Ordering::Relaxed);
        self.pending.clear();
        let waiting: Vec<Batch> = self.timers.drain().collect();
        let left: u64 = waiting.iter().map(|b| u64::from(b.count())).sum();
        self.counters.cancelled.fetch_add(left, Ordering::Relaxed);
        self.counters.scheduled.store(0, Ordering::Relaxed);
        drop(waiting);
        self.conns.clear();
        self.zygote = None;
        if let Some(r) = self.restart.take() {
            r.abandon();
        }
        // From now on a send fails at once and its batch resolves as
        // cancelled on the sender's side.
        let cmds = std::mem::replace(&mut self.cmds, crossbeam_channel::never());
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Command::Submit(batch) => {
                    self.counters
                        .cancelled
                        .fetch_add(u64::from(batch.count()), Ordering::Relaxed);
                }
                Command::Cancel { reply, .. } => {
                    let _ = reply.send(false);
                }
                Command::Inspect { reply, .. } => {
                    let _ = reply.send(Whereabouts::Elsewhere);
                }
                _ => {}
            }
        }
        self.counters.live_workers.store(0, Ordering::Relaxed);
        self.counters.standby_workers.store(0, Ordering::Relaxed);
    }
}
