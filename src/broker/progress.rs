//! Progress across hosts: what [`report_progress`](crate::report_progress)
//! says inside a job a host runs reaches the client's
//! [`JobHandle::progress`](crate::JobHandle::progress) and
//! [`Client::progress`].
//!
//! A report stays where it is cheap — three stores into the worker's
//! status page (`batch/progress.rs`). The host samples the reports of the
//! jobs it holds every [`SAMPLE_EVERY`] (asking its local pool, as
//! `Pool::status` does) and writes what changed to `pg:<id>` — `done/total`,
//! one pipeline for all of them, no write at all when nothing changed — with
//! a short expiry that it refreshes while the job runs, and deletes it when
//! the job is no longer held. A client reads the key on demand. So a
//! report reaches a client within about 100 ms plus a round trip, a job
//! that reports nothing costs no Redis write, and a host that dies leaves
//! nothing behind for longer than [`KEEP`].

use super::BrokerError;
use super::client::{Client, lock};
use super::conn::Conn;
use super::keys::Keys;
use super::lease::HostState;
use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::client::shared::Shared;
use crate::supervisor::Whereabouts;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a host samples its jobs' progress.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long a written report lives unless refreshed.
pub const KEEP: Duration = Duration::from_secs(10);
/// How often an unchanged report is written again (refreshing its expiry).
const REFRESH: Duration = Duration::from_secs(3);

impl Client {
    /// The latest progress job `id` reported
    /// ([`report_progress`](crate::report_progress)) while a host runs it:
    /// `None` before its first report, while it waits, and once it is over.
    /// From any client of the broker. (`handle.progress()` says the same
    /// for a job this client waits on.)
    ///
    /// ```no_run
    /// fn crunch(n: u64) -> u64 {
    ///     for i in 0..n { forkpool::report_progress(i, n); /* ... */ }
    ///     n
    /// }
    /// forkpool::register!(crunch);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let h = client.submit(crunch, 1_000_000);
    /// if let Some(p) = client.progress(h.id())? {
    ///     println!("{} of {}", p.done, p.total);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn progress(&self, id: JobId) -> Result<Option<Progress>, BrokerError> {
        let key = self.inner.keys.progress(id.as_u64());
        let v: Option<String> =
            lock(&self.inner.control).run_once(|con| redis::cmd("GET").arg(&key).query(con))?;
        Ok(v.as_deref().and_then(parse))
    }
}

/// `done/total`, or `None` for anything else.
fn parse(s: &str) -> Option<Progress> {
    let (d, t) = s.split_once('/')?;
    Some(Progress {
        done: d.parse().ok()?,
        total: t.parse().ok()?,
    })
}

/// A host's progress sampling.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// When to sample next.
    pub next: Instant,
    /// What was written, by job id, and when.
    written: HashMap<u64, (Progress, Instant)>,
}

impl Sampler {
    pub(crate) fn new() -> Sampler {
        Sampler {
            next: Instant::now(),
            written: HashMap::new(),
        }
    }

    /// Samples the jobs `state` holds; writes what changed, deletes the
    /// reports of jobs no longer held.
    pub(crate) fn sample(
        &mut self,
        shared: &Shared,
        state: &HostState,
        conn: &mut Conn,
        go_on: &dyn Fn() -> bool,
        keys: &Keys,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        self.next = now + SAMPLE_EVERY;
        let ids: Vec<u64> = state
            .held()
            .values()
            .filter(|h| !h.settling)
            .map(|h| h.env.id)
            .collect();
        if ids.is_empty() && self.written.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut writes = 0;
        for &id in &ids {
            let Whereabouts::Running { progress: Some(p) } = shared.inspect(JobId(id)) else {
                continue;
            };
            let stale = self
                .written
                .get(&id)
                .is_none_or(|(q, at)| *q != p || now.duration_since(*at) >= REFRESH);
            if stale {
                pipe.cmd("SET")
                    .arg(keys.progress(id))
                    .arg(format!("{}/{}", p.done, p.total))
                    .arg("PX")
                    .arg(KEEP.as_millis() as u64)
                    .ignore();
                self.written.insert(id, (p, now));
                writes += 1;
            }
        }
        let gone: Vec<u64> = self
            .written
            .keys()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.written.remove(&id);
            pipe.cmd("DEL").arg(keys.progress(id)).ignore();
            writes += 1;
        }
        if writes > 0 {
            conn.run(go_on, |con| pipe.exec(con))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_or_are_none() {
        assert_eq!(parse("3/10"), Some(Progress { done: 3, total: 10 }));
        for bad in ["", "3", "3/", "/1", "a/b", "-1/2", "1/2/3"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
