//! The client's listener thread: results for its handles.
//!
//! Each client has a reply stream of its own (`reply:<client>`, named
//! after the client's unique name). A job submitted for a handle carries
//! its name; the host that settles the job adds the result to it in the
//! same script that stores and acknowledges it. This thread reads the
//! stream with one blocking `XREAD` (up to 1024 results a round trip),
//! resolves the handles, and deletes what it read with the next `XREAD`.
//!
//! The stream expires a minute after the client stops renewing it (every
//! 10 s here), so a client that died leaves nothing behind; hosts add to a
//! reply stream only while it exists. After a lost connection (or if the
//! stream vanished: Redis restarted without its data, or the client
//! stalled a whole minute) the thread makes the stream again and asks for
//! the stored result of every job still waiting (`GET res:<id>`, in
//! batches): a result written meanwhile is not missed.

use super::conn::Conn;
use super::keys::Keys;
use super::reply::stream_entries;
use super::results;
use super::writer::Pending;
use redis::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the reply stream lives without a renewal.
const REPLY_TTL: Duration = Duration::from_secs(60);
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long one `XREAD` blocks (also how soon the thread sees a stop).
const BLOCK: Duration = Duration::from_millis(250);

pub(crate) struct Listener {
    pub conn: Conn,
    pub keys: Keys,
    pub reply: String,
    pub pending: Arc<Pending>,
    pub stop: Arc<AtomicBool>,
}

/// Makes (or keeps) a client's reply stream; true if it was there.
pub(crate) fn keep_reply(con: &mut redis::Connection, reply: &str) -> redis::RedisResult<bool> {
    let (_, existed): (Value, i64) = redis::pipe()
        .ignore_errors()
        .cmd("XGROUP")
        .arg("CREATE")
        .arg(reply)
        .arg("unused")
        .arg("$")
        .arg("MKSTREAM")
        .cmd("PEXPIRE")
        .arg(reply)
        .arg(REPLY_TTL.as_millis() as u64)
        .query(con)?;
    Ok(existed == 1)
}

impl Listener {
    pub(crate) fn run(mut self) {
        let stop = self.stop.clone();
        let go_on = move || !stop.load(Ordering::Acquire);
        let mut last = "0-0".to_string();
        let mut renewed = Instant::now();
        let mut generation = self.conn.generation();
        let mut read_ids: Vec<String> = Vec::new();
        while go_on() {
            if self.conn.generation() != generation || renewed.elapsed() >= RENEW_EVERY {
                let reply = self.reply.clone();
                let Ok(existed) = self.conn.run(&go_on, |con| keep_reply(con, &reply)) else {
                    continue;
                };
                if !existed || self.conn.generation() != generation {
                    last = "0-0".into();
                    self.resync(&go_on);
                }
                generation = self.conn.generation();
                renewed = Instant::now();
            }
            // The entries read last time are deleted in the same round trip
            // as the next read.
            let mut pipe = redis::pipe();
            if !read_ids.is_empty() {
                pipe.cmd("XDEL").arg(&self.reply).arg(&read_ids).ignore();
            }
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(1024)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.reply)
                .arg(&last);
            let read = self
                .conn
                .run(&go_on, |con| pipe.query::<(Value,)>(con).map(|(v,)| v));
            let Ok(read) = read else { continue };
            read_ids = self.deliver(read);
            if let Some(id) = read_ids.last() {
                last = id.clone();
            }
        }
        // The client is gone: so is its reply stream.
        let _ = self
            .conn
            .run_once(|con| redis::cmd("DEL").arg(&self.reply).exec(con));
    }

    /// Resolves the handles of the results in an `XREAD` reply; returns
    /// the entry ids read.
    fn deliver(&self, read: Value) -> Vec<String> {
        let mut ids = Vec::new();
        for (_, entries) in stream_entries(read) {
            for (id, fields) in entries {
                ids.push(id);
                let mut job = None;
                let mut value = None;
                let mut attempts = 1u32;
                for (k, v) in fields {
                    match k.as_slice() {
                        b"id" => job = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
                        b"v" => value = Some(v),
                        b"a" => {
                            attempts = std::str::from_utf8(&v)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(1)
                        }
                        _ => {}
                    }
                }
                let (Some(job), Some(value)) = (job, value) else {
                    continue;
                };
                self.resolve(job, &value, attempts);
            }
        }
        ids
    }

    fn resolve(&self, job: u64, value: &[u8], attempts: u32) {
        let slot = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job);
        if let Some(slot) = slot {
            for _ in 1..attempts.min(10_000) {
                slot.add_attempt();
            }
            slot.resolve(results::read(value));
        }
    }

    /// Asks for the stored result of every job still waiting.
    fn resync(&mut self, go_on: &dyn Fn() -> bool) {
        let ids: Vec<u64> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for chunk in ids.chunks(512) {
            let keys: Vec<String> = chunk.iter().map(|&id| self.keys.result(id)).collect();
            let Ok(values) = self.conn.run(go_on, |con| {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query::<Vec<Option<Vec<u8>>>>(con)
            }) else {
                return;
            };
            for (&id, v) in chunk.iter().zip(values) {
                if let Some(v) = v.filter(|v| v.first() != Some(&b'P')) {
                    self.resolve(id, &v, 1);
                }
            }
        }
    }
}
