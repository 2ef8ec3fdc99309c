//! Keeping the pool at strength: forking workers, promoting the standby,
//! and the supervisor's side of the fork server.
//!
//! `maintain` asks the fork server for workers until the pool has as many
//! as it should (none once it is closing and idle), promoting a standby
//! first when there is one (`standby.rs` decides when to keep one). Start
//! failures back off exponentially; after [`START_FAILURES`] in a row with
//! no worker up, queued jobs fail with `WorkerStart` rather than wait for
//! ever. When the fork server dies, its workers keep serving as orphans and
//! a new one is forked from the caller (`restart.rs`), which adopts them.

use super::conn::Conn;
use super::restart::Restart;
use super::{Supervisor, Token, standby};
use crate::error::JobError;
use crate::sys::clock;
use crate::worker::zygote::{Event, Polled};
use std::sync::atomic::Ordering;

/// Consecutive failed worker starts after which queued jobs fail.
const START_FAILURES: u32 = 3;

impl Supervisor {
    /// Starts workers until the pool is at strength.
    pub(super) fn maintain(&mut self) {
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
    pub(super) fn activated(&mut self) {
        if self.activated >= self.config.workers as u64 {
            self.counters
                .worker_restarts
                .fetch_add(1, Ordering::Relaxed);
        }
        self.activated += 1;
    }

    /// Asks the fork server for a worker: one of the N, or a `standby`.
    pub(super) fn spawn_one(&mut self, standby: bool) -> bool {
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
        conn.bell_registered = self
            .epoll
            .add(conn.bell_fd(), Token::Bell(key).event())
            .is_ok();
        conn.standby = standby;
        if !standby {
            self.activated();
        }
        self.conns.push(conn);
        true
    }

    pub(super) fn update_live(&self) {
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

    pub(super) fn start_failed(&mut self, why: String) {
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

    pub(super) fn zygote_events(&mut self) {
        loop {
            let Some(z) = &self.zygote else { return };
            match z.poll() {
                Polled::Empty => return,
                Polled::Closed => return self.zygote_lost(),
                Polled::Event(Event::Spawned { key, pid, pidfd }) => {
                    if let Some(c) = self.conns.iter_mut().find(|c| c.key == key) {
                        c.spawned(pid, pidfd);
                        if let Some(fd) = c.pidfd() {
                            c.pidfd_registered =
                                self.epoll.add(fd, Token::Pidfd(key).event()).is_ok();
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
