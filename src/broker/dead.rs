//! Dead letters: entries a worker host set aside instead of running —
//! why, and how to read them back.
//!
//! A host dead-letters an entry (the `DEAD` script: ownership check, copy
//! to the `dead` stream with the reason and the original fields prefixed
//! `f:`, acknowledge and delete, store the failure as the job's result and
//! tell a waiting client) when:
//!
//! - it is not a job: a field missing, twice or unreadable, or more bytes
//!   than the broker's `max_message_size` (its values are then not copied:
//!   the dead letter says how big they were);
//! - it is a job this host cannot run: an unknown name, a codec it was
//!   built without, another type fingerprint for the name;
//! - it was delivered more than `max_deliveries` times (every host it went
//!   to died or stalled under it).
//!
//! The dead stream is capped (about 100,000 entries, oldest dropped).
//! [`Client::dead_letters`](super::Client::dead_letters) reads it.

use super::BrokerError;
use super::conn::Conn;
use super::keys::{GROUP, Keys};
use super::scripts::Scripts;
use crate::batch::JobId;

/// At most this many entries are kept in the dead stream.
pub(crate) const DEAD_CAP: u64 = 100_000;

/// A job set aside in the dead-letter stream, as
/// [`Client::dead_letters`](super::Client::dead_letters) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub entry: String,
    /// Why it was set aside.
    pub reason: String,
    /// The stream it came from.
    pub stream: String,
    /// How many times it had been delivered.
    pub deliveries: u64,
    /// The worker host (its consumer name) that set it aside.
    pub host: String,
    /// The job id it carried, if it could be read.
    pub job_id: Option<JobId>,
    /// The job name it carried, if any.
    pub job: Option<String>,
    /// Its original fields, as they were (values of an oversized entry are
    /// replaced by a note of their size).
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DeadLetter {
    /// Reads one entry of the dead stream.
    pub(crate) fn from_entry(entry: String, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> DeadLetter {
        let mut d = DeadLetter {
            entry,
            reason: String::new(),
            stream: String::new(),
            deliveries: 0,
            host: String::new(),
            job_id: None,
            job: None,
            fields: Vec::new(),
        };
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        for (k, v) in pairs {
            match k.as_slice() {
                b"reason" => d.reason = text(&v),
                b"stream" => d.stream = text(&v),
                b"deliveries" => d.deliveries = text(&v).parse().unwrap_or(0),
                b"host" => d.host = text(&v),
                _ => {
                    if let Some(name) = k.strip_prefix(b"f:") {
                        match name {
                            b"id" => d.job_id = text(&v).parse().ok().map(JobId),
                            b"job" => d.job = Some(text(&v)),
                            _ => {}
                        }
                        d.fields.push((name.to_vec(), v));
                    }
                }
            }
        }
        d
    }
}

/// One entry to set aside.
pub(crate) struct Burial<'a> {
    pub stream: &'a str,
    pub entry: &'a str,
    pub deliveries: u64,
    pub reason: String,
    pub fields: &'a [(Vec<u8>, Vec<u8>)],
    /// Whether the values are copied (not for an oversized entry).
    pub copy_values: bool,
    /// The job's id and the client waiting for it, if known.
    pub job_id: Option<u64>,
    pub reply: Option<String>,
    /// How long the failure is kept as the job's result (ms).
    pub ttl_ms: u64,
}

/// Sets an entry aside; false if it was no longer this host's.
pub(crate) fn bury(
    conn: &mut Conn,
    go_on: &dyn Fn() -> bool,
    keys: &Keys,
    me: &str,
    b: &Burial<'_>,
) -> Result<bool, BrokerError> {
    let value = super::results::from_error(&crate::error::JobError::DeadLettered {
        reason: b.reason.clone(),
    });
    let res = b.job_id.map_or_else(|| keys.dead(), |id| keys.result(id));
    let reply = b.reply.clone().unwrap_or_else(|| keys.dead());
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&Scripts::get().dead.sha)
        .arg(4)
        .arg(b.stream)
        .arg(keys.dead())
        .arg(res)
        .arg(reply)
        .arg(GROUP)
        .arg(me)
        .arg(b.entry)
        .arg(b.deliveries)
        .arg(&b.reason)
        .arg(value)
        .arg(if b.job_id.is_some() { b.ttl_ms } else { 0 })
        .arg(if b.job_id.is_some() && b.reply.is_some() {
            "1"
        } else {
            "0"
        })
        .arg(b.job_id.unwrap_or(0))
        .arg(DEAD_CAP);
    // The original fields, at most 64 of them (a garbage entry may have
    // thousands): Lua's unpack has a limit.
    for (k, v) in b.fields.iter().take(64) {
        cmd.arg(k.as_slice());
        if b.copy_values {
            cmd.arg(v.as_slice());
        } else {
            cmd.arg(format!("({} bytes, not copied)", v.len()));
        }
    }
    conn.run(go_on, |con| cmd.query::<i64>(con)).map(|n| n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_reads_back() {
        let pairs = vec![
            (b"reason".to_vec(), b"unknown job name \"x\"".to_vec()),
            (b"stream".to_vec(), b"{forkpool}:q:default:0".to_vec()),
            (b"entry".to_vec(), b"1-0".to_vec()),
            (b"deliveries".to_vec(), b"2".to_vec()),
            (b"host".to_vec(), b"h:1:ab".to_vec()),
            (b"f:id".to_vec(), b"17".to_vec()),
            (b"f:job".to_vec(), b"x".to_vec()),
            (b"f:arg".to_vec(), vec![0, 1]),
        ];
        let d = DeadLetter::from_entry("5-0".into(), pairs);
        assert_eq!(d.reason, "unknown job name \"x\"");
        assert_eq!((d.deliveries, d.job_id), (2, Some(JobId(17))));
        assert_eq!(d.job.as_deref(), Some("x"));
        assert_eq!(d.fields.len(), 3);
        assert_eq!(d.fields[2], (b"arg".to_vec(), vec![0, 1]));
    }
}
