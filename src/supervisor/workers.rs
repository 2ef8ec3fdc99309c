//! The supervisor's round over its workers: answers in, frames out, time
//! limits, and the books of workers that died.
//!
//! Every step pumps every worker's rings, so nobody sleeps while bytes
//! wait. A worker known to be dead has its books closed (`conn/death.rs`):
//! what it finished is delivered, what it was running is charged, and what
//! it never started goes back to the front of the queue.

use super::Supervisor;
use super::conn::Ctx;

impl Supervisor {
    /// Takes in answers, continues streaming frames, and closes the books
    /// of workers that died.
    pub(super) fn service_workers(&mut self) {
        let mut i = 0;
        while i < self.conns.len() {
            let mut ctx = Ctx {
                counters: &self.counters,
                done_jobs: &mut self.done_jobs,
                spares: &self.spares,
                returned: &mut self.returned,
                tallies: &mut self.tallies,
                clock: &mut self.clock,
                events: &self.events,
            };
            let c = &mut self.conns[i];
            c.pump_rx(&mut ctx);
            c.pump_tx();
            if c.is_ready() {
                self.start_failures = 0;
            }
            // Idle since when, for the keep-alive of a queue that scales
            // (standbys are not idle: they are spares). A fixed-size queue
            // needs no clock here: its workers leave only after a resize
            // down, and then at once.
            if c.busy() || !c.is_ready() || c.standby {
                c.idle_since = None;
            } else if c.idle_since.is_none() && self.queues[c.queue].bounds.scales() {
                c.idle_since = Some(ctx.clock.coarse());
            }
            if !c.finished() {
                i += 1;
                continue;
            }
            let mut c = self.conns.swap_remove(i);
            let requeue = c.finalize(&mut ctx);
            let pid = c.pid().unwrap_or(0);
            // A worker that died while it spun frees its seat here.
            self.seats.vacate(pid as u32);
            if let Some(code @ 70..=72) = c.status.and_then(|s| s.code()) {
                // The worker left on its own over a broken frame or ring: a
                // forkpool bug, worth saying out loud (its jobs ran elsewhere).
                log::error!(
                    "worker {pid} exited with code {code}, forkpool's code for a broken frame \
                     or ring (unless a job called exit({code})): please report this"
                );
            }
            if let Some(why) = c.violation() {
                log::error!("worker {pid} broke the protocol ({why}); treated as crashed");
            } else if let Some(status) = c.status
                && !c.ended_on_purpose()
                && !c.shrunk
            {
                log::warn!(
                    "worker {pid} of queue {:?} died ({status:?}); it will be replaced",
                    self.queue_names[c.queue]
                );
            }
            self.tell_exited(&c);
            for batch in requeue {
                self.enqueue(batch);
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

    /// Enforces time limits; returns the nearest deadline.
    pub(super) fn deadlines(&mut self) -> Option<u64> {
        let now = self.clock.coarse();
        self.conns
            .iter_mut()
            .filter_map(|c| c.check_deadlines(now))
            .min()
    }
}
