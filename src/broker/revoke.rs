//! Revoking a job across hosts: [`Client::revoke`], and how hosts learn
//! of it.
//!
//! A revoke is recorded in Redis before anything else, so it is never
//! lost — not by a host that is down, busy or reconnecting when it comes:
//!
//! 1. **Recorded** (`REVOKE`, one script): `rv:<id>` is set (for the
//!    revoking client's result expiry) and the revoke appended to the
//!    `revokes` stream — unless the job is over (its result is stored) or
//!    its id was never given out: then nothing changes and the answer is
//!    [`Revocation::NotFound`]. In the same script a job waiting in the
//!    delayed set (countdown, ETA, retry back-off, rate limit) is taken
//!    out and ends `Revoked`: [`Revocation::BeforeStart`]`(Scheduled)`.
//! 2. **Taken out of its stream** if no host has read it yet: the client
//!    looks for the job in the streams of every queue (`prios:*`), and
//!    `UNQUEUE` deletes the entry — only if it is still there and still
//!    undelivered, checked atomically — and ends it `Revoked`:
//!    `BeforeStart(Waiting)`. A delivered entry (in the consumer group's
//!    pending list) is a host's: [`Revocation::Held`].
//! 3. **Hosts** read the `revokes` stream in the same pipeline as every
//!    read of jobs, *after* the read (Redis runs a pipeline in order), and
//!    check each job they read against the revokes they know before they
//!    run it. So a job read before the revoke was recorded is known to be
//!    held when the revoke looks for it (step 2 sees it pending), and a
//!    job read after it is refused by its host: it ends `Revoked` unrun.
//!    A host that holds the job when the revoke comes learns it at its
//!    next read, or within 100 ms while all its workers are busy; it then
//!    revokes the job in its local pool (`Pool::revoke`): not started, it
//!    never runs; running, it is killed only with `terminate` and only if
//!    its worker is still on it (the local pool's rule), and the worker is
//!    replaced. Either way it is never retried.
//! 4. **Delayed jobs queued later** — a retry its host queued as the
//!    revoke came, a countdown still on its way from a client — are
//!    checked against `rv:<id>` by `PROMOTE` and end `Revoked` when due.
//!
//! Why a control stream rather than pub/sub: a host already makes one
//! round trip per read, and a non-blocking `XREAD` of `revokes` in the
//! same pipeline costs no extra round trip; pub/sub would need a
//! connection and a thread more per host, and a message published while a
//! host reconnects is gone, while a stream is read from where the host left
//! off (from its start when the host starts). The stream keeps the latest
//! [`KEPT`] revokes.

use super::client::{Client, lock, ttl_ms};
use super::conn::Conn;
use super::keys::{GROUP, Keys};
use super::reply::entries;
use super::{BrokerError, results};
use crate::batch::JobId;
use crate::control::revoke::Stage;
use crate::error::JobError;
use redis::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How many revokes the `revokes` stream keeps (and a host remembers).
pub const KEPT: usize = 10_000;

/// Entries read per `XRANGE` while looking for a job in a stream.
const SCAN_CHUNK: usize = 256;

/// What [`Client::revoke`] did to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Revocation {
    /// No host had it: it was taken out of Redis and never runs. Its
    /// handle (wherever it is) gives `Err(JobError::Revoked)`, and so does
    /// its stored result. The stage is [`Stage::Scheduled`] (it waited for
    /// its countdown, ETA, retry or rate limit) or [`Stage::Waiting`] (in
    /// its queue's stream).
    BeforeStart(Stage),
    /// A host holds it (read, maybe running): the host learns of it within
    /// a fraction of a second. If the job has not started it never runs;
    /// if it runs it is killed with `terminate` (if its worker is still on
    /// it; the host replaces the worker), else left to finish. Either way
    /// it is never retried, and a revoked end is `Err(JobError::Revoked)`.
    Held {
        /// Whether its worker is to be killed if it runs.
        terminate: bool,
    },
    /// The job is over (its result is stored), its id was never given out,
    /// or it is nowhere to be found now (it is being settled, or its
    /// result is not kept). Nothing changed — except that an attempt of it
    /// queued from now on is refused (a submission still on its way).
    NotFound,
}

/// The stored (and sent) result of a revoked job.
pub(crate) fn revoked_value() -> Vec<u8> {
    results::from_error(&JobError::Revoked)
}

/// Records a revoke; ends the job at once if it waits in the delayed set.
///
/// KEYS: rv:<id>, delayed, job:<id>, res:<id>, revokes, ids. ARGV: key
/// base, id, ttl ms, `t` (terminate) or `1`, the stored `Revoked`, length
/// cap of `revokes`. Returns `over`, `unknown`, `scheduled` or `live`.
const REVOKE: &str = concat!(
    super::scripts::settle_revoked!(),
    r#"
local base, id = ARGV[1], ARGV[2]
local res = redis.call('GET', KEYS[4])
if res and string.sub(res, 1, 1) ~= 'P' then return 'over' end
local top = tonumber(redis.call('GET', KEYS[6]) or '0') or 0
if tonumber(id) > top then return 'unknown' end
redis.call('SET', KEYS[1], ARGV[4], 'PX', tonumber(ARGV[3]))
redis.call('XADD', KEYS[5], 'MAXLEN', '~', tonumber(ARGV[6]), '*', 'id', id, 't', ARGV[4])
if redis.call('ZREM', KEYS[2], id) == 1 then
  local h = redis.call('HGETALL', KEYS[3])
  redis.call('DEL', KEYS[3])
  local opt, try = nil, nil
  for i = 1, #h, 2 do
    if h[i] == 'opt' then opt = h[i + 1] elseif h[i] == 'try' then try = h[i + 1] end
  end
  settle_revoked(base, id, opt, ARGV[5], try)
  return 'scheduled'
end
return 'live'
"#
);

/// Deletes a job's entry from its stream if no host read it yet (it is
/// there and not in the group's pending list), and ends the job.
///
/// KEYS: stream. ARGV: group, entry id, key base, job id, the stored
/// `Revoked`. Returns 1 if it took the entry out, 0 if a host has it (or
/// it is gone).
const UNQUEUE: &str = concat!(
    super::scripts::settle_revoked!(),
    r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e ~= 1 then return 0 end
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(p) == 'table' and not p.err and #p > 0 then return 0 end
local f = e[1][2]
local opt, try, id = nil, nil, nil
for i = 1, #f, 2 do
  if f[i] == 'opt' then opt = f[i + 1] elseif f[i] == 'try' then try = f[i + 1]
  elseif f[i] == 'id' then id = f[i + 1] end
end
if id ~= ARGV[4] then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
settle_revoked(ARGV[3], id, opt, ARGV[5], try)
return 1
"#
);

impl Client {
    /// Revokes job `id` wherever it is, on whichever host (Celery's
    /// `revoke`), as [`Pool::revoke`](crate::Pool::revoke) does on one
    /// host: a job that has not started never runs; a running job is left
    /// to finish, unless `terminate`: then the host running it kills its
    /// worker if it is still on that job, and replaces it. Either way it
    /// is never retried, and what the job's handle and stored result give
    /// is `Err(JobError::Revoked)` (unless a running job was left to
    /// finish). A job that is over, or an id never given out, is a no-op:
    /// [`Revocation::NotFound`].
    ///
    /// The revoke is recorded in Redis first, so a host that is down or
    /// busy when it is made still honours it (see `broker/revoke.rs`).
    ///
    /// ```no_run
    /// use forkpool::broker::{Broker, Revocation};
    /// use forkpool::{JobError, Stage};
    /// use std::time::Duration;
    /// fn report(n: u32) -> u32 { n }
    /// forkpool::register!(report);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Broker::new("redis://127.0.0.1:6379/")?.client()?;
    /// let later = client.job(report).countdown(Duration::from_secs(60)).submit(7);
    /// let id = later.id();
    /// client.flush()?;
    /// assert_eq!(client.revoke(id, false)?, Revocation::BeforeStart(Stage::Scheduled));
    /// assert_eq!(later.get(), Err(JobError::Revoked));
    /// assert_eq!(client.revoke(id, false)?, Revocation::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn revoke(&self, id: JobId, terminate: bool) -> Result<Revocation, BrokerError> {
        self.revoke_here(id, terminate).map(|(r, _)| r)
    }

    /// [`revoke`](Self::revoke), and whether a handle of this client was
    /// resolved `Revoked` by it.
    pub(crate) fn revoke_here(
        &self,
        id: JobId,
        terminate: bool,
    ) -> Result<(Revocation, bool), BrokerError> {
        let inner = &self.inner;
        let keys = &inner.keys;
        let n = id.as_u64();
        let flag = if terminate { "t" } else { "1" };
        let value = revoked_value();
        let ttl = ttl_ms(inner.broker.result_expires);
        let said: String = lock(&inner.control).run_once(|con| {
            redis::cmd("EVAL")
                .arg(REVOKE)
                .arg(6)
                .arg(keys.revoked(n))
                .arg(keys.delayed())
                .arg(keys.job(n))
                .arg(keys.result(n))
                .arg(keys.revokes())
                .arg(keys.ids())
                .arg(keys.base())
                .arg(n)
                .arg(ttl)
                .arg(flag)
                .arg(value.as_slice())
                .arg(KEPT)
                .query(con)
        })?;
        let answer = match said.as_str() {
            "over" | "unknown" => return Ok((Revocation::NotFound, false)),
            "scheduled" => Revocation::BeforeStart(Stage::Scheduled),
            _ => self.unqueue(n, terminate, &value)?,
        };
        // A handle of this client gives `Revoked` now, unless the job may
        // still end its own way (left running, or not found).
        let resolved = matches!(
            answer,
            Revocation::BeforeStart(_) | Revocation::Held { terminate: true }
        ) && self.revoked_here(n);
        Ok((answer, resolved))
    }

    /// Looks for job `n` in every queue's streams: takes it out if no host
    /// read it yet.
    fn unqueue(&self, n: u64, terminate: bool, value: &[u8]) -> Result<Revocation, BrokerError> {
        let inner = &self.inner;
        let mut control = lock(&inner.control);
        let wanted = n.to_string().into_bytes();
        for stream in streams(&mut control, &inner.keys)? {
            let mut from = "-".to_string();
            loop {
                let v: Value = control.run_once(|con| {
                    redis::cmd("XRANGE")
                        .arg(&stream)
                        .arg(&from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(SCAN_CHUNK)
                        .query(con)
                })?;
                let found = entries(v);
                let Some((last, _)) = found.last() else { break };
                from = format!("({last}");
                let hit = found
                    .iter()
                    .find(|(_, fields)| fields.iter().any(|(k, v)| k == b"id" && *v == wanted));
                if let Some((entry, _)) = hit {
                    let took: i64 = control.run_once(|con| {
                        redis::cmd("EVAL")
                            .arg(UNQUEUE)
                            .arg(1)
                            .arg(&stream)
                            .arg(GROUP)
                            .arg(entry)
                            .arg(inner.keys.base())
                            .arg(n)
                            .arg(value)
                            .query(con)
                    })?;
                    return Ok(if took == 1 {
                        Revocation::BeforeStart(Stage::Waiting)
                    } else {
                        Revocation::Held { terminate }
                    });
                }
                if found.len() < SCAN_CHUNK {
                    break;
                }
            }
        }
        // Nowhere: a host that held it may have learned of the revoke and
        // ended the job while this looked for it.
        let key = inner.keys.result(n);
        let stored: Option<Vec<u8>> =
            control.run_once(|con| redis::cmd("GET").arg(&key).query(con))?;
        if stored.as_deref() == Some(value) {
            return Ok(Revocation::Held { terminate });
        }
        Ok(Revocation::NotFound)
    }

    /// A handle of this client waiting for job `n` resolves `Revoked` now,
    /// for a job that will not run (or is being killed): whatever its host
    /// sends later finds no handle.
    fn revoked_here(&self, n: u64) -> bool {
        let slot = lock(&self.inner.pending).remove(&n);
        slot.is_some_and(|slot| slot.resolve(Err(JobError::Revoked)))
    }
}

/// Every stream of every queue in use (`prios:<queue>`, found with `SCAN`),
/// each level of a queue, level 0 included.
pub(crate) fn streams(conn: &mut Conn, keys: &Keys) -> Result<Vec<String>, BrokerError> {
    let mut out = Vec::new();
    for (queue, levels) in queues(conn, keys)? {
        for p in levels {
            out.push(keys.stream(&queue, p));
        }
    }
    Ok(out)
}

/// Every queue in use, with its priority levels (highest first, 0 always).
pub(crate) fn queues(conn: &mut Conn, keys: &Keys) -> Result<Vec<(String, Vec<i32>)>, BrokerError> {
    let pattern = keys.priorities_pattern();
    let prefix_len = pattern.len() - 1;
    // Sorted and each once, prefix and all: so are the names.
    let names: Vec<String> = conn
        .scan(&pattern)?
        .into_iter()
        .map(|k| k[prefix_len..].to_string())
        .collect();
    let mut out = Vec::new();
    for q in names {
        let key = keys.priorities(&q);
        let levels: Vec<String> =
            conn.run_once(|con| redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(con))?;
        let mut levels: Vec<i32> = levels.iter().filter_map(|l| l.parse().ok()).collect();
        if !levels.contains(&0) {
            levels.push(0);
        }
        levels.sort_by_key(|p| std::cmp::Reverse(*p));
        out.push((q, levels));
    }
    Ok(out)
}

/// The revokes a host knows: read from the `revokes` stream, the latest
/// [`KEPT`] of them kept.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    inner: Mutex<Known>,
}

#[derive(Debug)]
struct Known {
    /// Job id → terminate.
    ids: HashMap<u64, bool>,
    order: VecDeque<u64>,
    /// The last entry read.
    last: String,
}

impl Default for Known {
    fn default() -> Known {
        Known {
            ids: HashMap::new(),
            order: VecDeque::new(),
            last: "0-0".into(),
        }
    }
}

/// Revokes read in one `XREAD`, at most.
const READ_COUNT: usize = 1000;

impl Revocations {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether job `id` was revoked (and `Some(terminate)` if so).
    pub(crate) fn get(&self, id: u64) -> Option<bool> {
        self.known().ids.get(&id).copied()
    }

    /// The non-blocking `XREAD` of what is new in `revokes`.
    pub(crate) fn read_cmd(&self, keys: &Keys) -> redis::Cmd {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(keys.revokes())
            .arg(&self.known().last);
        cmd
    }

    /// Takes in the reply of [`read_cmd`](Self::read_cmd): returns the
    /// revokes new to this host, and whether there may be more to read. A
    /// malformed entry is skipped.
    pub(crate) fn absorb(&self, reply: Value) -> (Vec<(u64, bool)>, bool) {
        let mut known = self.known();
        let mut new = Vec::new();
        let mut read = 0;
        for (_, es) in super::reply::stream_entries(reply) {
            for (entry, fields) in es {
                read += 1;
                known.last = entry;
                let mut id = None;
                let mut terminate = false;
                for (k, v) in fields {
                    match k.as_slice() {
                        b"id" => id = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
                        b"t" => terminate = v == b"t",
                        _ => {}
                    }
                }
                let Some(id) = id else { continue };
                let before = known.ids.insert(id, terminate);
                if before.is_none() {
                    known.order.push_back(id);
                }
                if before != Some(terminate) {
                    new.push((id, terminate));
                }
                while known.order.len() > KEPT {
                    if let Some(old) = known.order.pop_front() {
                        known.ids.remove(&old);
                    }
                }
            }
        }
        (new, read >= READ_COUNT)
    }

    /// Reads `revokes` until this host knows every revoke in it; returns
    /// the new ones.
    pub(crate) fn catch_up(
        &self,
        conn: &mut Conn,
        go_on: &dyn Fn() -> bool,
        keys: &Keys,
    ) -> Result<Vec<(u64, bool)>, BrokerError> {
        let mut all = Vec::new();
        // Bounded: each turn reads up to READ_COUNT of at most ~KEPT.
        for _ in 0..=(KEPT / READ_COUNT + 2) {
            let cmd = self.read_cmd(keys);
            let reply: Value = conn.run(go_on, |con| cmd.query(con))?;
            let (new, more) = self.absorb(reply);
            all.extend(new);
            if !more {
                break;
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::reply::bulk;

    #[test]
    fn revokes_are_read_without_trust() {
        let r = Revocations::default();
        let entry =
            |id: &str, fields: Vec<Value>| Value::Array(vec![bulk(id), Value::Array(fields)]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("{p}:revokes"),
            Value::Array(vec![
                entry("1-0", vec![bulk("id"), bulk("7"), bulk("t"), bulk("t")]),
                entry("2-0", vec![bulk("id"), bulk("x")]),
                entry("3-0", vec![bulk("id"), bulk("8"), bulk("t"), bulk("1")]),
                entry("4-0", vec![bulk("id"), bulk("7"), bulk("t"), bulk("t")]),
            ]),
        ])]);
        let (new, more) = r.absorb(reply);
        assert_eq!(
            new,
            vec![(7, true), (8, false)],
            "the bad id is skipped, the repeat too"
        );
        assert!(!more);
        assert_eq!(r.get(7), Some(true));
        assert_eq!(r.get(8), Some(false));
        assert_eq!(r.get(9), None);
        assert_eq!(r.known().last, "4-0");
        assert_eq!(r.absorb(Value::Nil).0, vec![]);
    }
}
