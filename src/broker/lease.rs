//! The jobs a worker host holds, and their leases.
//!
//! From the moment a host reads an entry (or reclaims one) until it
//! settles it, the entry is in the host's pending list in Redis, and here,
//! under a token: the stream, the entry id, which delivery it is, and the
//! job itself (to queue it again for a retry or a hand-back). The host
//! renews the leases of everything it holds — running, or finished and
//! waiting to be settled — every third of the visibility timeout, so only a
//! host that died or stalled (for a whole timeout) loses its jobs.
//!
//! A renewal checks ownership first (`RENEW`): an entry another host took
//! over is reported lost, and whatever this host later does with it is
//! dropped by the same check in `FINISH`.

use super::BrokerError;
use super::conn::Conn;
use super::keys::GROUP;
use super::message::Envelope;
use super::scripts::Scripts;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// One job a host holds.
#[derive(Debug)]
pub(crate) struct Held {
    pub stream: Arc<str>,
    pub entry: String,
    /// Which delivery of the entry this is (1 for a first read).
    pub deliveries: u64,
    pub env: Envelope,
    /// The renewal found it another host's.
    pub lost: bool,
    /// Being settled: no longer renewed (the settle thread removes it).
    pub settling: bool,
}

/// What a host's threads share: the held jobs, how many run in the local
/// pool, whether the host is stopping, and its counts.
#[derive(Debug, Default)]
pub(crate) struct HostState {
    held: Mutex<HashMap<u64, Held>>,
    next_token: AtomicU64,
    /// Jobs in the local pool; `changed` is signalled when one finishes.
    running: Mutex<usize>,
    changed: Condvar,
    pub counts: Counts,
    /// The revokes this host knows (`revoke.rs`).
    pub revoked: super::revoke::Revocations,
}

/// What a host did, counted as it happens.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub ran: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub handed_back: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub reclaimed: AtomicU64,
    pub lost: AtomicU64,
    pub rate_limited: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl HostState {
    pub(crate) fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a job; returns its token.
    pub(crate) fn hold(&self, held: Held) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.held().insert(token, held);
        token
    }

    fn running_lock(&self) -> MutexGuard<'_, usize> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn running(&self) -> usize {
        *self.running_lock()
    }

    pub(crate) fn started(&self) {
        *self.running_lock() += 1;
    }

    /// A job left the local pool.
    pub(crate) fn finished(&self) {
        let mut r = self.running_lock();
        *r = r.saturating_sub(1);
        drop(r);
        self.changed.notify_all();
    }

    /// Wakes the host's loop (a stop was asked).
    pub(crate) fn nudge(&self) {
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for fewer than `below` jobs to run.
    pub(crate) fn wait_below(&self, below: usize, timeout: Duration) {
        let r = self.running_lock();
        if *r < below {
            return;
        }
        let _ = self
            .changed
            .wait_timeout_while(r, timeout, |r| *r >= below)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Renews the lease of every held job; marks and counts those another
    /// host took over.
    pub(crate) fn renew(
        &self,
        conn: &mut Conn,
        go_on: &dyn Fn() -> bool,
        me: &str,
    ) -> Result<(), BrokerError> {
        let mut by_stream: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for h in self.held().values().filter(|h| !h.lost && !h.settling) {
            by_stream
                .entry(h.stream.clone())
                .or_default()
                .push(h.entry.clone());
        }
        for (stream, entries) in by_stream {
            for chunk in entries.chunks(512) {
                let lost: Vec<String> = conn.run(go_on, |con| {
                    redis::cmd("EVALSHA")
                        .arg(&Scripts::get().renew.sha)
                        .arg(1)
                        .arg(&*stream)
                        .arg(GROUP)
                        .arg(me)
                        .arg(chunk)
                        .query(con)
                })?;
                if lost.is_empty() {
                    continue;
                }
                let mut held = self.held();
                for h in held.values_mut() {
                    if h.stream == stream && lost.contains(&h.entry) && !h.lost {
                        h.lost = true;
                        bump(&self.counts.lost);
                    }
                }
            }
        }
        Ok(())
    }
}
