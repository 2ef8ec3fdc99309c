//! Keeping the pool at strength: forking workers, promoting the standby,
//! and the supervisor's side of the fork server.
//!
//! `maintain` asks the fork server for workers until each queue has as
//! many as the autoscaling policy wants (`autoscale.rs`; a fixed-size
//! queue wants its size; none once the pool is closing and the queue is
//! idle), promoting the queue's standby first when there is one
//! (`standby.rs` decides when to keep one), and asks idle workers beyond
//! what the policy keeps to leave. A worker forked because a worker was
//! lost (crashed, killed, retired by a task or memory limit) counts as a
//! restart; one forked for waiting work, beyond the minimum, as growth. Start
//! failures back off exponentially; after [`START_FAILURES`] in a row with
//! no worker up, queued jobs fail with `WorkerStart` rather than wait for
//! ever. When the fork server dies, its workers keep serving as orphans and
//! a new one is forked from the caller (`restart.rs`), which adopts them.

use super::autoscale::{self, Load};
use super::conn::Conn;
use super::restart::Restart;
use super::{Supervisor, Token, standby};
use crate::batch::Batch;
use crate::error::JobError;
use crate::metrics::fate::Fate;
use crate::sys::clock;
use crate::worker::zygote::{Event, Polled};
use std::sync::atomic::{AtomicU64, Ordering};

/// Consecutive failed worker starts after which queued jobs fail.
const START_FAILURES: u32 = 3;

/// The coarse clock, read once per step and only if needed: a queue at its
/// size with no standby to keep never needs it.
struct Now(Option<u64>);

impl Now {
    fn get(&mut self) -> u64 {
        *self.0.get_or_insert_with(clock::coarse_ns)
    }
}

impl Supervisor {
    /// Keeps every queue at the strength the policy wants; returns when to
    /// look again for a reason of its own (a keep-alive or a standby's
    /// hold falling due), if ever.
    pub(super) fn maintain(&mut self) -> Option<u64> {
        if self.zygote.is_none() {
            // Jobs wait for it; if forking it keeps failing, `start_failed`
            // fails them rather than let them hang.
            let idle = self.closing && self.nothing_waits();
            if self.restart.is_none() && !idle && clock::coarse_ns() >= self.spawn_after {
                match Restart::begin(self.config.clone(), self.seats.clone(), self.wake.clone()) {
                    Ok(r) => self.restart = Some(r),
                    Err(e) => self.start_failed(format!("could not restart the fork server: {e}")),
                }
            }
            return None;
        }
        let mut now = Now(None);
        let mut next: Option<u64> = None;
        for q in 0..self.queues.len() {
            if let Some(t) = self.maintain_queue(q, &mut now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    fn maintain_queue(&mut self, q: usize, now: &mut Now) -> Option<u64> {
        let mut load = Load {
            workers: 0,
            busy: 0,
            waiting: self.queues[q].pending.items(),
        };
        let takes_work = |c: &Conn| c.queue == q && !c.standby && c.counts_toward_strength();
        for c in self.conns.iter().filter(|c| takes_work(c)) {
            load.workers += 1;
            load.busy += usize::from(c.busy());
        }
        let closing_idle = self.closing && self.queues[q].pending.is_empty();
        let bounds = self.queues[q].bounds;
        let want = if closing_idle {
            0
        } else {
            autoscale::wanted(&bounds, load)
        };
        // Workers lost since the last look: their replacements are restarts.
        let mut lost = self.queues[q].strength.saturating_sub(load.workers);
        let mut have = load.workers;
        while have < want {
            if lost > 0 {
                self.queues[q].standby.worker_replaced();
            }
            if let Some(c) = self
                .conns
                .iter_mut()
                .find(|c| c.queue == q && c.standby && c.counts_toward_strength())
            {
                c.standby = false;
                c.promoted_at = Some(now.get());
            } else if now.get() < self.spawn_after || !self.spawn_one(q, false) {
                break;
            } else if lost > 0 {
                self.conns.last_mut().expect("just spawned").replacing = true;
            }
            let stats = &self.counters.queues[q];
            if lost > 0 {
                lost -= 1;
                self.counters
                    .worker_restarts
                    .fetch_add(1, Ordering::Relaxed);
            } else if have >= bounds.min {
                stats.grown.fetch_add(1, Ordering::Relaxed);
            }
            have += 1;
        }
        let mut next = None;
        // Only a queue above its minimum has workers to let go (and no
        // allocation happens on the path of a queue at its size).
        if !self.closing && have > bounds.min {
            let now = now.get();
            // A ready worker with nothing in flight is idle; one of a
            // fixed-size queue carries no idle time (see `workers.rs`).
            let mut idle: Vec<(usize, u64)> = (self.conns.iter().enumerate())
                .filter(|(_, c)| takes_work(c) && !c.busy() && c.is_ready())
                .map(|(i, c)| (i, c.idle_since.unwrap_or(now)))
                .collect();
            let (leave, due) = autoscale::leaving(&bounds, have, &mut idle, now);
            for i in leave {
                let c = &mut self.conns[i];
                c.shrunk = true;
                c.request_exit();
                have -= 1;
                self.counters.queues[q]
                    .shrunk
                    .fetch_add(1, Ordering::Relaxed);
            }
            next = due;
        }
        self.queues[q].strength = have;
        if let Some(t) = self.standby(q, want, now) {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    /// Keeps queue `q`'s spare worker, if its policy wants one; returns
    /// until when the next one is held back.
    fn standby(&mut self, q: usize, want: usize, now: &mut Now) -> Option<u64> {
        self.queues[q].standby_hold = None;
        if want == 0 || !self.queues[q].standby.wanted() {
            return None;
        }
        let now = now.get();
        if now < self.spawn_after {
            return None;
        }
        let mine = || self.conns.iter().filter(move |c| c.queue == q);
        if mine().any(|c| (c.standby && c.counts_toward_strength()) || c.awaiting_exit_status()) {
            return None;
        }
        match standby::hold(mine().map(|c| c.promoted_at), now) {
            Some(until) => {
                self.queues[q].standby_hold = Some(until);
                Some(until)
            }
            None => {
                self.spawn_one(q, true);
                None
            }
        }
    }

    /// Asks the fork server for a worker of queue `q`, or a `standby` for
    /// it.
    pub(super) fn spawn_one(&mut self, q: usize, standby: bool) -> bool {
        let key = self.next_key;
        self.next_key += 1;
        let queue = &self.config.queues[q];
        let (mut conn, fds) = match Conn::new(
            key,
            q,
            queue.worker.ring_size,
            queue.worker.max_message_size,
            self.queues[q].tasks_per_worker,
        ) {
            Ok(x) => x,
            Err(e) => {
                self.start_failed(format!("could not set up a worker: {e}"));
                return false;
            }
        };
        let Some(z) = &self.zygote else { return false };
        if let Err(e) = z.spawn(key, q, fds.borrow()) {
            self.start_failed(format!("could not reach the fork server: {e}"));
            return false;
        }
        drop(fds);
        conn.bell_registered = self
            .epoll
            .add(conn.bell_fd(), Token::Bell(key).event())
            .is_ok();
        conn.standby = standby;
        self.conns.push(conn);
        true
    }

    /// Queue `q` keeps between `min` and `max` workers from now on.
    pub(super) fn resize(&mut self, q: usize, min: usize, max: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.bounds.min = min;
            queue.bounds.max = max;
            if queue.bounds.scales() {
                queue.exact = true;
            }
        }
    }

    /// Publishes the gauges: workers alive (per queue too), busy, waiting.
    pub(super) fn update_live(&self) {
        // Per queue, by index: (workers, busy); a pool has few queues.
        let mut per_queue = [(0u64, 0u64); 8];
        let (mut live, mut standby) = (0, 0);
        for c in &self.conns {
            if c.pid().is_none() || c.status.is_some() || c.gone {
                continue;
            }
            if c.standby {
                standby += 1;
                continue;
            }
            live += 1;
            if let Some(counts) = per_queue.get_mut(c.queue) {
                counts.0 += 1;
                counts.1 += u64::from(c.busy());
            }
        }
        for (q, (queue, stats)) in self.queues.iter().zip(&self.counters.queues).enumerate() {
            let (workers, busy) = match per_queue.get(q) {
                Some(&counts) => counts,
                None => self
                    .conns
                    .iter()
                    .filter(|c| c.queue == q && !c.standby)
                    .fold((0, 0), |(w, b), c| {
                        let alive = c.pid().is_some() && c.status.is_none() && !c.gone;
                        (w + u64::from(alive), b + u64::from(alive && c.busy()))
                    }),
            };
            // Written only when they change: every step publishes them, and
            // a store dirties a line the caller's thread may step with next.
            let set = |gauge: &AtomicU64, value: u64| {
                if gauge.load(Ordering::Relaxed) != value {
                    gauge.store(value, Ordering::Relaxed);
                }
            };
            set(&stats.workers, workers);
            set(&stats.busy, busy);
            set(&stats.waiting, queue.pending.items());
            set(&stats.min_workers, queue.bounds.min as u64);
            set(&stats.max_workers, queue.bounds.max as u64);
        }
        self.counters.live_workers.store(live, Ordering::Relaxed);
        self.counters
            .standby_workers
            .store(standby, Ordering::Relaxed);
        self.counters
            .scheduled
            .store(self.timers.items(), Ordering::Relaxed);
    }

    pub(super) fn start_failed(&mut self, why: String) {
        self.start_failures += 1;
        self.last_start_error = why;
        let backoff = 50_000_000u64 << self.start_failures.min(5);
        self.spawn_after = clock::coarse_ns() + backoff;
        if self.start_failures >= START_FAILURES && !self.conns.iter().any(Conn::is_ready) {
            let error = JobError::WorkerStart {
                message: self.last_start_error.clone(),
            };
            let waiting: Vec<Batch> = self
                .queues
                .iter_mut()
                .flat_map(|q| q.pending.drain())
                .collect();
            for mut batch in waiting {
                let n = batch.count();
                self.count(batch.tally, Fate::of_error(&error), u64::from(n));
                batch.fail(n, error.clone());
            }
        }
    }

    pub(super) fn zygote_events(&mut self) {
        loop {
            let Some(z) = &self.zygote else { return };
            match z.poll() {
                Polled::Empty => return,
                Polled::Closed if self.drained => return self.zygote_drained(),
                Polled::Closed => return self.zygote_lost(),
                Polled::Event(Event::Spawned { key, pid, pidfd }) => {
                    if let Some(i) = self.conns.iter().position(|c| c.key == key) {
                        let c = &mut self.conns[i];
                        c.spawned(pid, pidfd);
                        if let Some(fd) = c.pidfd() {
                            c.pidfd_registered =
                                self.epoll.add(fd, Token::Pidfd(key).event()).is_ok();
                        }
                        self.tell_forked(&self.conns[i]);
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

    /// The fork server exited as asked (`drained`): reap it now. Workers
    /// it never reported are treated as after a loss.
    fn zygote_drained(&mut self) {
        if let Some(z) = self.zygote.take() {
            let _ = self.epoll.delete(z.fd());
            drop(z);
        }
        if self.conns.iter().any(|c| !c.finished()) {
            self.zygote_lost();
        }
    }

    /// The fork server died (or broke the protocol). Its workers keep
    /// serving as orphans; `maintain` forks a new fork server. A worker it
    /// was asked for but never confirmed (it may have died mid-`fork`) is
    /// let go if it holds no job (if it exists, it exits on its doorbell's
    /// end-of-file); one that holds jobs is asked to exit once it has
    /// answered them, and is known until then by its pipe only.
    pub(super) fn zygote_lost(&mut self) {
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
    pub(super) fn restarted(&mut self) {
        let Some(result) = self.restart.as_ref().and_then(Restart::poll) else {
            return;
        };
        self.restart = None;
        let registered = result.and_then(|link| {
            self.epoll.add(link.fd(), Token::Zygote.event())?;
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
}
