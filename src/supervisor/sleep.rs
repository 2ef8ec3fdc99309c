//! Going to sleep in `epoll` without losing a wake-up, and waking up.
//!
//! Workers ring the supervisor's doorbell only when it has said it sleeps,
//! so before it blocks the supervisor announces it (to the command queue's
//! wake-up and to every worker's result ring), then looks once more for
//! work that arrived meanwhile: either a producer saw the announcement and
//! rings, or the supervisor sees its work — never neither. Helping callers
//! (`drive.rs`) withdraw the announcements, so workers stop ringing while
//! someone steps the supervisor anyway.

use super::drive::DEFERRED_POLL;
use super::restart::Restart;
use super::{Supervisor, Token};
use crate::sys::clock;
use crate::transport::bell::Drained;
use nix::sys::epoll::EpollEvent;
use std::sync::atomic::{Ordering, fence};

impl Supervisor {
    /// Gets ready to sleep until a command, a worker, the fork server or a
    /// deadline needs the supervisor: asks every worker to ring when it
    /// writes. Returns the timeout in milliseconds (`None`: no timeout), or
    /// `Err` when there is already work to do.
    pub(super) fn prepare_sleep(&mut self) -> Result<Option<u64>, ()> {
        self.wake.set_sleeping(true);
        fence(Ordering::SeqCst);
        let mut idle = self.cmds.is_empty();
        // A new fork server forked (and rung for) just before we set the
        // flag: take it now, its wake-up may have come too early.
        idle &= !self.restart.as_ref().is_some_and(Restart::done);
        for c in &mut self.conns {
            // Room the next batch of its queue needs in its ring.
            let next = self.queues[c.queue].pending.front();
            idle &= c.prepare_sleep(next.map_or(0, |b| b.items_len() + 64));
        }
        if !idle {
            self.after_sleep(&[]);
            return Err(());
        }
        let mut until = self.next_deadline;
        if self.wake.deferring() {
            // A caller sends quietly and steps only now and then.
            let poll = clock::coarse_ns() + DEFERRED_POLL.as_nanos() as u64;
            until = Some(until.map_or(poll, |t| t.min(poll)));
        }
        let short = self.queues.iter().any(|q| q.strength < q.bounds.min);
        if self.spawn_after > 0 && short {
            until = Some(until.map_or(self.spawn_after, |t| t.min(self.spawn_after)));
        }
        self.sleep_until = Some(until.unwrap_or(u64::MAX));
        Ok(until.map(|t| t.saturating_sub(clock::coarse_ns()).div_ceil(1_000_000)))
    }

    /// Back from sleeping: withdraws the requests to ring and takes note of
    /// what the poller reported.
    pub(super) fn after_sleep(&mut self, events: &[EpollEvent]) {
        self.wake.set_sleeping(false);
        self.sleep_until = None;
        for c in &self.conns {
            c.awake();
        }
        for ev in events {
            let token = Token::of(ev);
            let key = match token {
                Token::Wake => {
                    self.wake.drain();
                    continue;
                }
                Token::Zygote => {
                    self.zygote_ready = true;
                    continue;
                }
                Token::Bell(key) | Token::Pidfd(key) => key,
            };
            let Some(c) = self.conns.iter_mut().find(|c| c.key == key) else {
                continue;
            };
            if let Token::Bell(_) = token {
                if c.drain_bell() == Drained::Eof {
                    let _ = self.epoll.delete(c.bell_fd());
                    c.bell_registered = false;
                }
            } else {
                c.gone = true;
                if let Some(fd) = c.pidfd() {
                    let _ = self.epoll.delete(fd);
                }
                c.pidfd_registered = false;
            }
        }
    }

    /// A caller is about to step: workers need not ring for it.
    pub(super) fn helping(&mut self) {
        for c in &self.conns {
            c.awake();
        }
    }

    /// Whether a worker with work in flight last ran on `cpu`.
    pub(super) fn busy_worker_on(&self, cpu: u32) -> bool {
        self.conns.iter().any(|c| c.busy() && c.worker_cpu() == cpu)
    }
}
