//! A finished job's result, as a worker host stores it (`res:<id>`, with
//! the job's result expiry) and sends it to the client that waits for it
//! (`reply:<client>`).
//!
//! One byte says what follows:
//!
//! - `R`, then the worker's record exactly as a local pool delivers it
//!   (`[len u32][tag u8][body]`, see `transport/wire.rs`): a value (`Ok`),
//!   a fallible job's `Err`, a panic's message, a codec error, `TooLarge`.
//!   The body is in the job's codec, so a client decodes it as a local
//!   handle does, and a JSON result is readable in `redis-cli`.
//! - `E`, then a [`JobError`] as JSON: a failure the host saw rather than
//!   the worker (a crash, a time limit, an expiry, a dead letter).
//!
//! A client trusts none of it: [`read`] checks the kind, the one record,
//! its tag and its length, and anything else is a `JobError::Broker`.

use crate::error::JobError;
use crate::transport::wire::{self, Tag};

/// The stored form of a worker's record (`buf` holds exactly one).
pub(crate) fn from_record(buf: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + buf.len());
    v.push(b'R');
    v.extend_from_slice(buf);
    v
}

/// The stored form of a failure.
pub(crate) fn from_error(error: &JobError) -> Vec<u8> {
    let mut v = vec![b'E'];
    if serde_json::to_writer(&mut v, error).is_err() {
        // A JobError always serializes; keep the form valid regardless.
        v.truncate(1);
        v.extend_from_slice(br#"{"Broker":{"message":"unencodable error"}}"#);
    }
    v
}

/// What a stored result means: the record to hand to a job's slot, or its
/// failure. Malformed bytes are a failure too, never a panic.
pub(crate) fn read(value: &[u8]) -> Result<Vec<u8>, JobError> {
    let malformed = |why: &str| JobError::Broker {
        message: format!("malformed result in Redis: {why}"),
    };
    match value.split_first() {
        Some((b'R', rec)) => {
            let h: [u8; wire::HEADER] = rec
                .get(..wire::HEADER)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| malformed("short record"))?;
            let (len, tag) = wire::split_header(h);
            if rec.len() - wire::HEADER != len as usize {
                return Err(malformed("record length"));
            }
            match Tag::from_u8(tag) {
                Some(Tag::Ok | Tag::Err | Tag::Panic | Tag::Codec | Tag::TooLarge) => {
                    Ok(rec.to_vec())
                }
                _ => Err(malformed("record tag")),
            }
        }
        Some((b'E', json)) => match serde_json::from_slice::<JobError>(json) {
            Ok(e) => Err(e),
            Err(e) => Err(malformed(&e.to_string())),
        },
        _ => Err(malformed("unknown kind")),
    }
}

/// Whether a stored result is a success (an `Ok` record).
pub(crate) fn succeeded(value: &[u8]) -> bool {
    read(value).is_ok_and(|rec| rec.get(4) == Some(&(Tag::Ok as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(tag: Tag, body: &[u8]) -> Vec<u8> {
        let mut r = wire::header(tag, body.len() as u32).to_vec();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn records_and_errors_round_trip() {
        let ok = record(Tag::Ok, &[7, 0, 0, 0]);
        let stored = from_record(&ok);
        assert_eq!(read(&stored), Ok(ok));
        assert!(succeeded(&stored));
        let err = record(Tag::Err, b"x");
        assert!(!succeeded(&from_record(&err)));
        for e in [
            JobError::Crashed {
                signal: Some(9),
                exit_code: None,
            },
            JobError::TimedOut {
                limit: Duration::from_millis(1500),
            },
            JobError::DeadLettered {
                reason: "delivered 5 times".into(),
            },
            JobError::Expired,
        ] {
            let stored = from_error(&e);
            assert_eq!(read(&stored), Err(e));
            assert!(!succeeded(&stored));
        }
    }

    #[test]
    fn malformed_results_are_failures() {
        let bad: [&[u8]; 7] = [
            b"",
            b"X123",
            b"R\x01\x00",
            b"R\x05\x00\x00\x00\x10abc",
            b"R\x00\x00\x00\x00\x01",
            b"E{not json",
            b"E\"NoSuchVariant\"",
        ];
        for v in bad {
            assert!(
                matches!(read(v), Err(JobError::Broker { .. })),
                "{v:?}: {:?}",
                read(v)
            );
        }
    }
}
