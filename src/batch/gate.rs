//! Back-pressure: a bound on the jobs waiting for a worker.
//!
//! With [`PoolBuilder::queue_capacity`](crate::PoolBuilder::queue_capacity)
//! set, every submission takes a [`Ticket`] for its jobs (map items count
//! one each) before it reaches the supervisor, and the ticket is given back
//! when the jobs are handed to a worker — or when they resolve without ever
//! being handed (cancelled, failed to start, the pool terminated). "Waiting"
//! therefore means: submitted, not yet handed to a worker.
//!
//! A submission is admitted when nothing waits or when it fits; so a batch
//! larger than the capacity is still admitted, alone. A submitter that
//! cannot be admitted blocks until tickets come back or the pool is closed
//! (then it is refused): it never waits on a pool that can no longer drain.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The shared count of waiting jobs.
pub(crate) struct Gate {
    capacity: u64,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    waiting: u64,
    closed: bool,
    /// Submitters blocked in `acquire`: a release signals only when one
    /// is (a signal is a system call even with nobody to wake).
    blocked: u32,
}

/// Why a submission was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue is full (only from [`Gate::try_acquire`]).
    Full,
    /// The pool was closed or terminated.
    Closed,
}

impl Gate {
    pub(crate) fn new(capacity: u64) -> Arc<Gate> {
        Arc::new(Gate {
            capacity,
            state: Mutex::new(State {
                waiting: 0,
                closed: false,
                blocked: 0,
            }),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fits(&self, s: &State, n: u64) -> bool {
        s.waiting == 0 || s.waiting.saturating_add(n) <= self.capacity
    }

    /// Admits `n` jobs, blocking while the queue is full.
    pub(crate) fn acquire(self: &Arc<Self>, n: u64) -> Result<Ticket, Refused> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Err(Refused::Closed);
            }
            if self.fits(&s, n) {
                s.waiting += n;
                return Ok(Ticket {
                    gate: self.clone(),
                    n,
                });
            }
            s.blocked += 1;
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
            s.blocked -= 1;
        }
    }

    /// Admits `n` jobs if they fit now.
    pub(crate) fn try_acquire(self: &Arc<Self>, n: u64) -> Result<Ticket, Refused> {
        let mut s = self.lock();
        if s.closed {
            return Err(Refused::Closed);
        }
        if !self.fits(&s, n) {
            return Err(Refused::Full);
        }
        s.waiting += n;
        Ok(Ticket {
            gate: self.clone(),
            n,
        })
    }

    /// Refuses every submission from now on and wakes blocked submitters.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }

    /// Jobs waiting now.
    #[cfg(test)]
    fn waiting(&self) -> u64 {
        self.lock().waiting
    }

    fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut s = self.lock();
        s.waiting = s.waiting.saturating_sub(n);
        let blocked = s.blocked > 0;
        drop(s);
        if blocked {
            self.freed.notify_all();
        }
    }
}

/// Admission of some jobs; dropping it gives their places back.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    n: u64,
}

impl Ticket {
    /// Splits off a ticket for `n` of the jobs (at most all of them).
    pub(crate) fn split(&mut self, n: u64) -> Ticket {
        let n = n.min(self.n);
        self.n -= n;
        Ticket {
            gate: self.gate.clone(),
            n,
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({})", self.n)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.release(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admits_up_to_capacity_and_blocks_until_freed_or_closed() {
        let g = Gate::new(3);
        let a = g.try_acquire(2).unwrap();
        let mut b = g.try_acquire(1).unwrap();
        assert_eq!(g.try_acquire(1).unwrap_err(), Refused::Full);
        assert_eq!(g.waiting(), 3);
        let part = b.split(1);
        assert_eq!(b.n, 0);
        drop(part);
        assert_eq!(g.waiting(), 2);
        let c = g.try_acquire(1).unwrap();
        drop((a, b));
        // Something waits: a batch larger than what is left must wait...
        assert_eq!(g.try_acquire(3).unwrap_err(), Refused::Full);
        drop(c);
        // ...and is admitted alone once nothing does.
        let big = g.try_acquire(10).unwrap();
        let g2 = g.clone();
        let blocked = std::thread::spawn(move || g2.acquire(1).map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!blocked.is_finished());
        drop(big);
        assert_eq!(blocked.join().unwrap(), Ok(()));
        let _full = g.try_acquire(3).unwrap();
        let g3 = g.clone();
        let blocked = std::thread::spawn(move || g3.acquire(1).map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        g.close();
        assert_eq!(blocked.join().unwrap(), Err(Refused::Closed));
        assert_eq!(g.try_acquire(1).unwrap_err(), Refused::Closed);
    }
}
