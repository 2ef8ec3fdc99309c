//! Inspecting every host: [`Client::inspect`], and the snapshots hosts
//! publish for it.
//!
//! Each live host writes a snapshot of itself to `host:<consumer>` about
//! once a second ([`PUBLISH_EVERY`]), JSON, with an expiry of
//! [`HOST_TTL`]; it deletes it when it stops. A client reads every such key
//! (`SCAN` + `MGET`) and the broker's own view (the streams of every
//! queue, the delayed set, the dead letters) — a few round trips, never a
//! wait for hosts to answer.
//!
//! Why published snapshots rather than a request that hosts answer
//! (Celery's `inspect` broadcast): a question asked over pub/sub has to
//! wait for answers without knowing how many hosts there are, so it either
//! waits its whole timeout every time or misses the slow ones — "No nodes
//! replied within time constraint" when a host is busy or its loop is
//! between two reads. A snapshot is there whether the host is busy or not,
//! costs a host one `SET` a second, and a host that died (or whose loop is
//! stuck) drops out by itself when its key expires: what `inspect` shows is
//! at most about a second old, and a dead host is gone within
//! [`HOST_TTL`].

use super::BrokerError;
use super::client::{Client, lock};
use super::conn::Conn;
use super::keys::{GROUP, Keys};
use super::lease::HostState;
use crate::batch::progress::Progress;
use crate::client::shared::Shared;
use redis::Value;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a host publishes its snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How long a snapshot lives unless the host publishes again: a host
/// missing for that long is taken for dead.
pub const HOST_TTL: Duration = Duration::from_secs(5);

/// What [`Client::inspect`] sees: every live host, and the broker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BrokerInspection {
    /// The live hosts, by consumer name.
    pub hosts: Vec<HostSnapshot>,
    /// Every stream of every queue in use (each priority level of a
    /// queue is one), highest priority first within a queue.
    pub streams: Vec<StreamView>,
    /// Jobs waiting for their countdown, ETA, retry or rate limit.
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// One host as it last described itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostSnapshot {
    /// Its consumer name (`host:pid:random`), unique per start.
    pub consumer: String,
    /// The host name it was given (by default, its machine's).
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it takes jobs from.
    pub queues: Vec<String>,
    /// How many jobs it runs at once.
    pub workers: usize,
    /// Whether it is stopping (finishing its jobs, reading no more).
    pub stopping: bool,
    /// When it took the snapshot (ms since the Unix epoch, its clock).
    pub taken_at_ms: u64,
    /// The jobs it runs.
    pub active: Vec<HostJob>,
    /// Its worker processes.
    pub worker_processes: Vec<HostWorker>,
    /// Jobs its local pool finished since it started.
    pub jobs_done: u64,
    /// What it did so far, as [`HostReport`](super::HostReport) counts it.
    pub counts: HostCounts,
}

/// A job a host runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostJob {
    /// Its job id (the broker's).
    pub id: Option<u64>,
    /// Its registered name.
    pub name: String,
    /// The worker running it.
    pub worker_pid: u32,
    /// How long it has run, in ms.
    pub running_ms: u64,
    /// Its latest progress report.
    pub progress: Option<Progress>,
    /// Which attempt it is (the host's local count: 1).
    pub attempt: u32,
}

/// A worker process of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostWorker {
    /// Its process id (0 until known).
    pub pid: u32,
    /// `starting`, `idle`, `busy`, `standby`, `leaving` or `exited`.
    pub state: String,
    /// Jobs it has answered.
    pub jobs_done: u64,
}

/// What a host did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostCounts {
    /// Jobs its pool ran (every attempt counts).
    pub ran: u64,
    /// Settled with a value.
    pub succeeded: u64,
    /// Settled with a failure.
    pub failed: u64,
    /// Retries it queued.
    pub retried: u64,
    /// Entries it dead-lettered.
    pub dead_lettered: u64,
    /// Jobs it took over from hosts whose lease lapsed.
    pub reclaimed: u64,
    /// Jobs it held (read, not yet settled) when it took the snapshot.
    pub held: u64,
}

/// One stream: a queue at one priority level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamView {
    /// The queue.
    pub queue: String,
    /// The priority level.
    pub priority: i32,
    /// Jobs no host has read yet.
    pub waiting: u64,
    /// Jobs hosts hold (read, running or being settled).
    pub held: u64,
}

impl Client {
    /// A snapshot of every live worker host (what each runs, its workers,
    /// its counts) and of the broker (jobs waiting per queue and priority,
    /// delayed, dead-lettered). Hosts publish their snapshot about once a
    /// second, so this never waits for them; a host that died drops out
    /// within five seconds.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let seen = client.inspect()?;
    /// for h in &seen.hosts {
    ///     println!("{} (pid {}): {} of {} workers busy", h.consumer, h.pid, h.active.len(), h.workers);
    /// }
    /// for s in &seen.streams {
    ///     println!("{}:{} waiting {}, held {}", s.queue, s.priority, s.waiting, s.held);
    /// }
    /// println!("delayed {}, dead letters {}", seen.delayed, seen.dead_letters);
    /// # Ok(()) }
    /// ```
    pub fn inspect(&self) -> Result<BrokerInspection, BrokerError> {
        let keys = &self.inner.keys;
        let mut control = lock(&self.inner.control);
        let hosts = hosts(&mut control, keys)?;
        let mut streams = Vec::new();
        for (queue, levels) in super::revoke::queues(&mut control, keys)? {
            for priority in levels {
                let key = keys.stream(&queue, priority);
                let (len, groups): (u64, Value) = control.run_once(|con| {
                    redis::pipe()
                        .ignore_errors()
                        .cmd("XLEN")
                        .arg(&key)
                        .cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&key)
                        .query(con)
                })?;
                let held = pending_of(groups);
                streams.push(StreamView {
                    queue: queue.clone(),
                    priority,
                    waiting: len.saturating_sub(held),
                    held,
                });
            }
        }
        let (delayed, dead_letters): (u64, u64) = control.run_once(|con| {
            redis::pipe()
                .cmd("ZCARD")
                .arg(keys.delayed())
                .cmd("XLEN")
                .arg(keys.dead())
                .query(con)
        })?;
        Ok(BrokerInspection {
            hosts,
            streams,
            delayed,
            dead_letters,
        })
    }
}

/// The snapshots of every live host, by consumer name. One that does not
/// decode (another version's) is skipped.
fn hosts(conn: &mut Conn, keys: &Keys) -> Result<Vec<HostSnapshot>, BrokerError> {
    let found = conn.scan(&keys.hosts_pattern())?;
    let mut out = Vec::new();
    for chunk in found.chunks(256) {
        let values: Vec<Option<Vec<u8>>> =
            conn.run_once(|con| redis::cmd("MGET").arg(chunk).query(con))?;
        out.extend(
            values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_slice::<HostSnapshot>(&v).ok()),
        );
    }
    Ok(out)
}

/// The pending count of the group `workers` in an `XINFO GROUPS` reply
/// (0 if there is no such group, or the reply is not one).
fn pending_of(groups: Value) -> u64 {
    for g in items(groups) {
        let fields = items(g);
        let mut it = fields.into_iter();
        let mut name = None;
        let mut pending = 0;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match (text(k).as_deref(), v) {
                (Some("name"), v) => name = text(v),
                (Some("pending"), Value::Int(n)) => pending = n.max(0) as u64,
                _ => {}
            }
        }
        if name.as_deref() == Some(GROUP) {
            return pending;
        }
    }
    0
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// What a host says of itself that does not change.
#[derive(Debug)]
pub(crate) struct Publisher {
    /// When to publish next.
    pub next: Instant,
    key: String,
    consumer: String,
    host: String,
    queues: Vec<String>,
    workers: usize,
}

impl Publisher {
    pub(crate) fn new(keys: &Keys, consumer: &str, queues: &[String], workers: usize) -> Self {
        Publisher {
            next: Instant::now(),
            key: keys.host(consumer),
            consumer: consumer.to_string(),
            host: consumer
                .rsplitn(3, ':')
                .nth(2)
                .unwrap_or_default()
                .to_string(),
            queues: queues.to_vec(),
            workers,
        }
    }

    /// Writes the host's snapshot, for [`HOST_TTL`].
    pub(crate) fn publish(
        &mut self,
        shared: &Shared,
        state: &HostState,
        stopping: bool,
        conn: &mut Conn,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), BrokerError> {
        self.next = Instant::now() + PUBLISH_EVERY;
        let snap = shared.snapshot();
        let c = &state.counts;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let me = HostSnapshot {
            consumer: self.consumer.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            queues: self.queues.clone(),
            workers: self.workers,
            stopping,
            taken_at_ms: super::unix_ms(),
            active: snap
                .active
                .iter()
                .map(|a| HostJob {
                    id: a.id.map(|id| id.as_u64()),
                    name: a.function.to_string(),
                    worker_pid: a.worker_pid,
                    running_ms: a.running_for.as_millis() as u64,
                    progress: a.progress,
                    attempt: a.attempt,
                })
                .collect(),
            worker_processes: snap
                .workers
                .iter()
                .map(|w| HostWorker {
                    pid: w.pid,
                    state: serde_json::to_value(w.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    jobs_done: w.jobs_done,
                })
                .collect(),
            jobs_done: snap.totals.finished,
            counts: HostCounts {
                ran: get(&c.ran),
                succeeded: get(&c.succeeded),
                failed: get(&c.failed),
                retried: get(&c.retried),
                dead_lettered: get(&c.dead_lettered),
                reclaimed: get(&c.reclaimed),
                held: state.held().len() as u64,
            },
        };
        let json = serde_json::to_vec(&me).unwrap_or_default();
        conn.run(go_on, |con| {
            redis::cmd("SET")
                .arg(&self.key)
                .arg(json.as_slice())
                .arg("PX")
                .arg(HOST_TTL.as_millis() as u64)
                .exec(con)
        })
    }

    /// Takes the snapshot down: the host is gone.
    pub(crate) fn withdraw(&self, conn: &mut Conn) {
        let _ = conn.run_once(|con| redis::cmd("DEL").arg(&self.key).exec(con));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::reply::bulk;

    #[test]
    fn the_pending_count_is_read_without_trust() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("other"),
                bulk("pending"),
                Value::Int(9),
            ]),
            Value::Array(vec![
                bulk("name"),
                bulk(GROUP),
                bulk("consumers"),
                Value::Int(2),
                bulk("pending"),
                Value::Int(3),
            ]),
        ]);
        assert_eq!(pending_of(reply), 3);
        assert_eq!(pending_of(Value::Nil), 0);
        assert_eq!(pending_of(Value::Array(vec![Value::Int(1)])), 0);
    }

    #[test]
    fn a_snapshot_round_trips() {
        let s = HostSnapshot {
            consumer: "h:1:abc".into(),
            pid: 1,
            active: vec![HostJob {
                id: Some(4),
                progress: Some(Progress { done: 1, total: 2 }),
                ..HostJob::default()
            }],
            ..HostSnapshot::default()
        };
        let back: HostSnapshot = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
