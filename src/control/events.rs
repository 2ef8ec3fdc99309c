//! Events: what happens to jobs and workers, as it happens, for anyone who
//! subscribes ([`Pool::events`](crate::Pool::events)) — Celery's event
//! stream, in process.
//!
//! Promises:
//! - **A slow subscriber never slows the pool.** Each subscription is a
//!   bounded channel; the pool only ever tries to send, and an event that
//!   finds it full is dropped and counted. The next event that fits is
//!   preceded by [`EventKind::Lost`] with the count, so a subscriber always
//!   knows what it missed ([`Events::lost`] has the running total).
//! - **Nothing is paid without a subscriber.** Publishing starts with one
//!   relaxed load of a flag; job events are prepared only for jobs
//!   submitted while someone listens.
//! - **A dropped subscription unsubscribes** at the next event.
//!
//! Job events are about jobs with an id (`submit`, `apply`, `Pool::job`,
//! a workflow's single steps): a `map`'s items and a group's members sent
//! together as a batch report in statistics, not item by item. A job's events come in
//! order — submitted, started, progress, then retried (and around again)
//! or one end: succeeded, failed, revoked, expired or cancelled. A job
//! that starts and ends between two looks of the supervisor gets its
//! `Started` just before its end, stamped with when it started.

use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::error::JobError;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One thing that happened, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// When it happened, on the wall clock.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The supervisor took the job in.
    Submitted {
        /// The job.
        id: JobId,
        /// Its function's name.
        function: &'static str,
        /// Its queue.
        queue: Arc<str>,
        /// Its priority.
        priority: i32,
    },
    /// A worker started the job.
    Started {
        /// The job.
        id: JobId,
        /// Its function's name.
        function: &'static str,
        /// The process running it.
        worker_pid: u32,
        /// Which attempt: 1, plus one per retry.
        attempt: u32,
    },
    /// The running job reported progress (sampled: the latest report at
    /// each look, at least every 100 ms while someone listens).
    Progress {
        /// The job.
        id: JobId,
        /// How far it says it is.
        progress: Progress,
    },
    /// The attempt failed and the job will run again.
    Retried {
        /// The job.
        id: JobId,
        /// The attempt that comes next.
        next_attempt: u32,
        /// Why the last attempt failed; `None` for a fallible job's own
        /// `Err`.
        error: Option<JobError>,
    },
    /// The job returned its result.
    Succeeded {
        /// The job.
        id: JobId,
        /// Its function's name.
        function: &'static str,
    },
    /// The job failed: it panicked, crashed, ran out of time, returned its
    /// own `Err` (`error` is then `None`), or could not be encoded.
    Failed {
        /// The job.
        id: JobId,
        /// Its function's name.
        function: &'static str,
        /// Why; `None` for a fallible job's own `Err`.
        error: Option<JobError>,
    },
    /// The job was revoked before it produced a result.
    Revoked {
        /// The job.
        id: JobId,
    },
    /// The job had not started by its expiry.
    Expired {
        /// The job.
        id: JobId,
    },
    /// The job was cancelled (its handle, or the pool terminating).
    Cancelled {
        /// The job.
        id: JobId,
    },
    /// A worker was forked.
    WorkerForked {
        /// Its pid.
        pid: u32,
        /// The queue it serves.
        queue: Arc<str>,
        /// It replaces a worker that was lost (crashed, killed over a time
        /// limit or a revoke, or retired after its task or memory limit).
        replacing: bool,
    },
    /// A worker exited.
    WorkerExited {
        /// Its pid.
        pid: u32,
        /// The queue it served.
        queue: Arc<str>,
        /// How it ended: the signal that killed it, or its exit code
        /// (both `None` when it could not be learned).
        signal: Option<i32>,
        /// Its exit code, if it exited by itself.
        exit_code: Option<i32>,
        /// The pool ended it (a kill over a time limit or a revoke, a
        /// retirement, a resize), rather than the job or the world.
        by_the_pool: bool,
    },
    /// This subscription missed `count` events because it was full.
    Lost {
        /// Events dropped since the last that got through.
        count: u64,
    },
}

/// A subscription to a pool's events: an iterator that blocks for the
/// next one, ending when the pool is gone.
#[derive(Debug)]
pub struct Events {
    rx: Receiver<Event>,
    lost: Arc<AtomicU64>,
}

impl Events {
    /// The next event, waiting as long as it takes; `None` once the pool
    /// is gone and every event was read.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event if one is there.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Events this subscription missed because it was full, in all.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Iterator for Events {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

/// One subscriber, from the publishing side.
struct Subscriber {
    tx: Sender<Event>,
    /// Dropped since the last event that got through.
    missed: u64,
    lost: Arc<AtomicU64>,
}

/// Where a pool's events go: every subscription.
#[derive(Debug, Default)]
pub(crate) struct Bus {
    /// Someone listens: the one check a publisher makes when nobody does.
    watching: AtomicBool,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// A new subscription holding at most `capacity` unread events.
    pub(crate) fn subscribe(&self, capacity: usize) -> Events {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let lost = Arc::new(AtomicU64::new(0));
        let mut subs = self.lock();
        subs.push(Subscriber {
            tx,
            missed: 0,
            lost: lost.clone(),
        });
        self.watching.store(true, Ordering::Release);
        Events { rx, lost }
    }

    /// Whether anyone listens.
    #[inline]
    pub(crate) fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    /// Tells every subscriber; never blocks on one.
    pub(crate) fn publish(&self, kind: EventKind) {
        self.publish_at(SystemTime::now(), kind);
    }

    /// Tells every subscriber that `kind` happened at `at`.
    pub(crate) fn publish_at(&self, at: SystemTime, kind: EventKind) {
        if !self.watching() {
            return;
        }
        let mut subs = self.lock();
        subs.retain_mut(|s| {
            if s.missed > 0 {
                let note = Event {
                    at,
                    kind: EventKind::Lost { count: s.missed },
                };
                match s.tx.try_send(note) {
                    Ok(()) => s.missed = 0,
                    Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            let event = Event {
                at,
                kind: kind.clone(),
            };
            if s.missed > 0 {
                s.missed += 1;
                s.lost.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            match s.tx.try_send(event) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.missed += 1;
                    s.lost.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        if subs.is_empty() {
            self.watching.store(false, Ordering::Release);
        }
    }

    /// The end of job `id` of `function`, from its final outcome (a
    /// record, or an error).
    pub(crate) fn ended(
        &self,
        id: JobId,
        function: &'static str,
        outcome: &Result<Vec<u8>, JobError>,
    ) {
        let kind = match outcome {
            Err(JobError::Revoked) => EventKind::Revoked { id },
            Err(JobError::Expired) => EventKind::Expired { id },
            Err(JobError::Cancelled) => EventKind::Cancelled { id },
            Err(e) => EventKind::Failed {
                id,
                function,
                error: Some(e.clone()),
            },
            Ok(buf) => match crate::transport::wire::records(buf).next() {
                Some(rec) if rec.tag == crate::transport::wire::Tag::Ok => {
                    EventKind::Succeeded { id, function }
                }
                Some(rec) if rec.tag == crate::transport::wire::Tag::Err => EventKind::Failed {
                    id,
                    function,
                    error: None,
                },
                Some(rec) => EventKind::Failed {
                    id,
                    function,
                    error: crate::batch::outcome::outcome(rec).err(),
                },
                None => EventKind::Failed {
                    id,
                    function,
                    error: Some(JobError::Codec("empty result record".into())),
                },
            },
        };
        self.publish(kind);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> EventKind {
        EventKind::Revoked { id: JobId(n) }
    }

    #[test]
    fn a_full_subscription_loses_events_counts_them_and_says_so() {
        let bus = Bus::default();
        assert!(!bus.watching());
        let sub = bus.subscribe(2);
        assert!(bus.watching());
        for n in 0..5 {
            bus.publish(ev(n));
        }
        assert_eq!(sub.lost(), 3);
        let kinds: Vec<EventKind> = std::iter::from_fn(|| sub.try_recv())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [ev(0), ev(1)]);
        bus.publish(ev(5));
        let kinds: Vec<EventKind> = std::iter::from_fn(|| sub.try_recv())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::Lost { count: 3 }, ev(5)]);
        assert_eq!(sub.lost(), 3);
    }

    #[test]
    fn a_dropped_subscription_unsubscribes() {
        let bus = Bus::default();
        let a = bus.subscribe(8);
        let b = bus.subscribe(8);
        drop(a);
        bus.publish(ev(1));
        assert!(bus.watching());
        assert_eq!(b.try_recv().map(|e| e.kind), Some(ev(1)));
        drop(b);
        bus.publish(ev(2));
        assert!(!bus.watching(), "nobody left");
    }
}
