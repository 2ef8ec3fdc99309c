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
//! expired wherever it waits; a function's throttle (`batch/throttle.rs`, its rate limit) is
//! asked before each of its items is handed to an idle worker.
//!
//! Promises: every batch it receives is resolved exactly once per item — by
//! a worker's answer, a charged failure, or `Cancelled` when the pool is
//! terminated or the supervisor itself fails — and when the thread ends, no
//! worker or fork server of this pool is left running.
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | starting the thread, the supervisor's state, one `step`, commands, shutdown |
//! | `command.rs` | what callers send ([`Command`]) and what they learn of a job ([`Whereabouts`]) |
//! | `drive.rs` | who steps it: the supervisor thread, or a caller helping while it waits |
//! | `sleep.rs` | sleeping in `epoll` without losing a wake-up |
//! | `dispatch.rs` | taking batches in, handing them to workers: prefetch, throttles, task limits |
//! | `jobs.rs` | one job wherever it waits: where it is, cancel, expire |
//! | `workers.rs` | the round over the workers: rings pumped, deadlines, dead workers' books closed |
//! | `spawn.rs` | keeping the pool at strength; the fork server's events; start failures |
//! | `standby.rs` | when to keep a spare worker (a pure policy) |
//! | `restart.rs` | forking a new fork server after the last one died |
//! | `timers.rs` | batches waiting for their start time; expiry times |
//! | `conn/` | one worker's connection and books |

mod autoscale;
mod command;
mod conn;
mod dispatch;
mod drive;
mod inspect;
mod jobs;
mod queues;
mod restart;
mod revoke;
mod sleep;
mod spawn;
mod standby;
mod timers;
mod watch;
mod workers;

pub(crate) use command::{Command, Whereabouts};
pub(crate) use drive::{Deferring, Driver, Help, Submitter};

use crate::batch::throttle::Throttles;
use crate::batch::{Batch, JobId};
use crate::config::{PoolConfig, WorkerConfig};
use crate::control::events::Bus;
use crate::control::inspection::Inspection;
use crate::control::revoke::Revoked;
use crate::error::Error;
use crate::metrics::fate::Fate;
use crate::metrics::stats::Counters;
use crate::metrics::tally::{Tallies, TallyKey};
use crate::sys::clock::StepClock;
use crate::sys::prefault::Spares;
use crate::sys::spin;
use crate::transport::seats::SpinSeats;
use crate::worker::zygote::ZygoteLink;
use conn::{Conn, Ctx};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use drive::Wake;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use queues::QueueState;
use restart::Restart;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use timers::Timers;

/// Forks the zygote and starts the supervisor thread.
pub(crate) fn start(
    config: Arc<PoolConfig>,
    counters: Arc<Counters>,
    throttles: Arc<Throttles>,
    spares: Spares,
    events: Arc<Bus>,
) -> Result<(Submitter, Driver, JoinHandle<()>), Error> {
    let seats = Arc::new(SpinSeats::per_cpu()?);
    let zygote = ZygoteLink::start(
        &worker_configs(&config),
        &seats,
        config.fork_server_capacity(),
    )?;
    let wake = Arc::new(Wake::new()?);
    let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
    epoll.add(wake.fd(), Token::Wake.event())?;
    epoll.add(zygote.fd(), Token::Zygote.event())?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let queues = config
        .queues
        .iter()
        .map(|q| QueueState::new(q, config.standby))
        .collect();
    let sup = Supervisor {
        queues,
        next_order: 1,
        clock: StepClock::default(),
        tallies: Tallies::new(config.queues.len()),
        taken_in: 0,
        queue_names: config
            .queues
            .iter()
            .map(|q| Arc::from(q.name.as_str()))
            .collect(),
        events,
        returned: Vec::new(),
        config,
        counters,
        spares,
        cmds: rx,
        wake: wake.clone(),
        epoll: epoll.clone(),
        zygote: Some(zygote),
        seats,
        drained: false,
        restart: None,
        zygote_ready: true,
        steps: 0,
        conns: Vec::new(),
        next_key: 1,
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

/// What each queue's workers see, by queue index: the fork server forks
/// a worker of queue `q` with the `q`th.
fn worker_configs(config: &PoolConfig) -> Vec<WorkerConfig> {
    config.queues.iter().map(|q| q.worker.clone()).collect()
}

/// What woke the supervisor's poller: the token registered with each
/// descriptor in `epoll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A command came (the wake-up eventfd).
    Wake,
    /// The fork server's socket.
    Zygote,
    /// Worker `key`'s doorbell.
    Bell(u64),
    /// Worker `key`'s pidfd: the process is gone.
    Pidfd(u64),
}

impl Token {
    /// The kind in the low two bits, the worker's key above them.
    const KIND_BITS: u32 = 2;

    fn event(self) -> EpollEvent {
        let data = match self {
            Token::Wake => 0,
            Token::Zygote => 1,
            Token::Bell(key) => key << Self::KIND_BITS | 2,
            Token::Pidfd(key) => key << Self::KIND_BITS | 3,
        };
        EpollEvent::new(EpollFlags::EPOLLIN, data)
    }

    fn of(event: &EpollEvent) -> Token {
        let data = event.data();
        let key = data >> Self::KIND_BITS;
        match data & ((1 << Self::KIND_BITS) - 1) {
            0 => Token::Wake,
            1 => Token::Zygote,
            2 => Token::Bell(key),
            _ => Token::Pidfd(key),
        }
    }
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
    /// The pool's spin seats, shared with every worker (`transport/seats.rs`).
    seats: Arc<SpinSeats>,
    /// The fork server was told to exit once its workers are gone (a join
    /// at its end): its socket's end is then expected, not a loss.
    drained: bool,
    /// A new fork server being forked after the last one died.
    restart: Option<Restart>,
    /// The fork server's socket is readable (polling it costs a system
    /// call, so only after the poller said so).
    zygote_ready: bool,
    /// Steps taken (by anyone), for occasional polling.
    steps: u32,
    conns: Vec<Conn>,
    next_key: u64,
    /// The named queues, by index (0 is the default queue): what waits in
    /// each, their bounds, their standby.
    queues: Vec<QueueState>,
    /// The next batch's submission number (`Batch::order`).
    next_order: u64,
    /// The clocks, read at most once each per step.
    clock: StepClock,
    /// What each function and queue did: outcomes, waits, run times.
    tallies: Tallies,
    /// Items taken in (`accept`) since the pool started: every one is
    /// then in the timers, a queue, a worker's books, or counted as ended
    /// in `tallies` (see `inspect.rs`).
    taken_in: u64,
    /// Each queue's name, as events carry it.
    queue_names: Vec<Arc<str>>,
    /// Where events go (`watch.rs`).
    events: Arc<Bus>,
    /// Batches workers handed back unstarted, to queue again.
    returned: Vec<Batch>,
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
        self.clock.reset();
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
        self.next_deadline = [self.deadlines(), self.timers.next_wake(), self.watch()]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = self.maintain() {
            self.next_deadline = Some(self.next_deadline.map_or(t, |d| d.min(t)));
        }
        if self.joining
            && self.nothing_waits()
            && self.timers.is_empty()
            && !self.conns.iter().any(Conn::busy)
        {
            if self.conns.is_empty() {
                return false;
            }
            self.conns.iter_mut().for_each(Conn::request_exit);
            if !self.drained
                && let Some(z) = &self.zygote
            {
                // The fork server exits once it has reaped them, while
                // their exits are still being taken in here.
                self.drained = z.drain().is_ok();
            }
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
            || !self.nothing_waits()
            || !self.cmds.is_empty()
            || self.conns.iter().any(|c| c.busy() || !c.is_ready())
            || match (self.next_deadline, self.sleep_until) {
                (Some(due), Some(until)) => due < until,
                (Some(_), None) => true,
                _ => false,
            }
    }

    /// Counts `n` jobs of a batch counted under `key` that ended with
    /// `fate`: in the pool's counters and in the tallies.
    fn count(&mut self, key: TallyKey, fate: Fate, n: u64) {
        self.counters.count(fate, n);
        self.tallies.count(key, fate, n);
    }

    /// Whether no batch waits for a worker in any queue.
    fn nothing_waits(&self) -> bool {
        self.queues.iter().all(|q| q.pending.is_empty())
    }

    /// Takes every queued command. Revokes are applied after every
    /// submission of the drain, and snapshots taken last (see `revoke.rs`).
    fn commands(&mut self) {
        let mut revokes = Vec::new();
        let mut snapshots = Vec::new();
        self.drain_commands(&mut revokes, &mut snapshots);
        for (id, terminate, reply) in revokes {
            let _ = reply.send(self.revoke(id, terminate));
        }
        for reply in snapshots {
            let _ = reply.send(self.snapshot());
        }
    }

    fn drain_commands(
        &mut self,
        revokes: &mut Vec<(JobId, bool, Sender<Revoked>)>,
        snapshots: &mut Vec<Sender<Inspection>>,
    ) {
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
                        // Cancelled by its caller, who counted it.
                        let n = batch.count();
                        self.tallies
                            .count(batch.tally, Fate::Cancelled, u64::from(n));
                        batch.forget(n);
                    }
                }
                Ok(Command::Snapshot { reply }) => snapshots.push(reply),
                Ok(Command::Revoke {
                    id,
                    terminate,
                    reply,
                }) => revokes.push((id, terminate, reply)),
                Ok(Command::Close) => self.closing = true,
                Ok(Command::Join) => {
                    self.closing = true;
                    self.joining = true;
                }
                Ok(Command::Terminate) => self.terminate = true,
                Ok(Command::Resize { queue, min, max }) => self.resize(queue, min, max),
                Ok(Command::RecallDeclined(reply)) => {
                    self.recall_declined();
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    }
                }
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

    /// Ends the pool: kills every worker, resolves every job left as
    /// cancelled, and waits for the fork server to reap everything.
    fn shutdown(&mut self) {
        let mut ctx = Ctx {
            counters: &self.counters,
            done_jobs: &mut self.done_jobs,
            spares: &self.spares,
            returned: &mut self.returned,
            tallies: &mut self.tallies,
            clock: &mut self.clock,
            events: &self.events,
        };
        for c in &mut self.conns {
            c.abandon(&mut ctx);
        }
        // Handed back while the workers were abandoned: never run.
        let mut waiting: Vec<Batch> = std::mem::take(&mut self.returned);
        for q in &mut self.queues {
            waiting.extend(q.pending.drain());
        }
        waiting.extend(self.timers.drain());
        for b in &waiting {
            self.count(b.tally, Fate::Cancelled, u64::from(b.count()));
        }
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
                Command::Revoke { reply, .. } => {
                    let _ = reply.send(Revoked::NotFound);
                }
                _ => {}
            }
        }
        self.counters.live_workers.store(0, Ordering::Relaxed);
        self.counters.standby_workers.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Wake,
            Token::Zygote,
            Token::Bell(7),
            Token::Pidfd(7),
            Token::Bell(1 << 40),
        ] {
            assert_eq!(Token::of(&t.event()), t);
        }
    }
}
