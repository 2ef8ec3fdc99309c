//! A job as it travels through Redis: the fields of its stream entry, and
//! how a worker host reads them without trusting them.
//!
//! A ready job is one stream entry with seven fields:
//!
//! | field | holds |
//! | --- | --- |
//! | `id` | the job id (decimal), unique per broker (`INCRBY` on `ids`) |
//! | `job` | the registered job name |
//! | `codec` | how `arg` (and the result) are encoded: `bincode`, `postcard`, `json`, `msgpack` |
//! | `fp` | the type fingerprint of the job's argument and result (16 hex digits, `shapes.rs`) |
//! | `try` | the attempt, from 1 (a retry is a new entry with the next number) |
//! | `opt` | the job's options, as JSON ([`Opts`]) |
//! | `arg` | the argument, encoded with `codec` |
//!
//! JSON options and a JSON codec make a job readable in `redis-cli` and
//! writable from any language. Nothing in an entry is executed: the name
//! selects one of the host's registered functions, or none.
//!
//! [`Envelope::parse`] checks everything: every field present, once;
//! numbers that parse; a codec this build has; options that decode; a total
//! size under the broker's cap. Whatever fails is a [`Malformed`] reason,
//! and the host dead-letters the entry with it — it never panics and never
//! leaves the entry to be delivered again.

use crate::error::JobError;
use crate::options::retry::RetryPolicy;
use crate::transport::codec::Codec;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The field names, in the order they are written.
pub(crate) const FIELDS: [&str; 7] = ["id", "job", "codec", "fp", "try", "opt", "arg"];

/// A job's options, as they travel (JSON, defaults left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Opts {
    /// The queue it was submitted to.
    pub queue: String,
    /// Its priority within the queue.
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The client's reply stream, for a job someone waits on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Hard time limit per attempt (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// Soft time limit per attempt (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_time_limit_ms: Option<u64>,
    /// Not started by then (ms since the Unix epoch): `Expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Store nothing but success or failure.
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_result: bool,
    /// How long the result is kept (ms); 0 stores none.
    pub result_ttl_ms: u64,
    /// Global rate limit of the job's name: the least time between two
    /// starts (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_interval_us: Option<u64>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A job read from a stream, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    pub id: u64,
    pub job: String,
    pub codec: Codec,
    pub fingerprint: u64,
    pub attempt: u32,
    pub opts: Opts,
    pub arg: Vec<u8>,
}

/// Why an entry is not a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A field is missing (or the entry has no fields).
    Missing(&'static str),
    /// A field appears twice.
    Twice(&'static str),
    /// A field holds what it cannot.
    Bad { field: &'static str, why: String },
    /// The entry's fields add up to more than the cap.
    Oversized { size: u64, limit: u64 },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Missing(field) => write!(f, "malformed entry: no field {field:?}"),
            Malformed::Twice(field) => write!(f, "malformed entry: field {field:?} twice"),
            Malformed::Bad { field, why } => {
                write!(f, "malformed entry: field {field:?}: {why}")
            }
            Malformed::Oversized { size, limit } => write!(
                f,
                "oversized entry: {size} bytes, above the broker's cap of {limit}"
            ),
        }
    }
}

impl Envelope {
    /// The entry's field values, in [`FIELDS`] order.
    pub(crate) fn fields(&self) -> [Vec<u8>; 7] {
        [
            self.id.to_string().into_bytes(),
            self.job.clone().into_bytes(),
            self.codec.name().as_bytes().to_vec(),
            format!("{:016x}", self.fingerprint).into_bytes(),
            self.attempt.to_string().into_bytes(),
            serde_json::to_vec(&self.opts).unwrap_or_default(),
            self.arg.clone(),
        ]
    }

    /// The entry's field values, or `TooLarge` if they would hold more
    /// than `limit` bytes in Redis (a field's name counted as 5).
    pub(crate) fn fields_within(&self, limit: u64) -> Result<[Vec<u8>; 7], JobError> {
        let fields = self.fields();
        let size: u64 = fields.iter().map(|f| f.len() as u64 + 5).sum();
        if size > limit {
            return Err(JobError::TooLarge { size, limit });
        }
        Ok(fields)
    }

    /// Checks and reads an entry's fields. `limit`: the most bytes the
    /// fields may hold in all (names included).
    pub(crate) fn parse(fields: &[(Vec<u8>, Vec<u8>)], limit: u64) -> Result<Envelope, Malformed> {
        let size: u64 = fields.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        if size > limit {
            return Err(Malformed::Oversized { size, limit });
        }
        let mut found: [Option<&[u8]>; 7] = [None; 7];
        for (k, v) in fields {
            let Some(i) = FIELDS.iter().position(|f| f.as_bytes() == k.as_slice()) else {
                continue; // an unknown field is ignored (and dropped on a retry)
            };
            if found[i].replace(v).is_some() {
                return Err(Malformed::Twice(FIELDS[i]));
            }
        }
        let get = |i: usize| found[i].ok_or(Malformed::Missing(FIELDS[i]));
        let text = |i: usize| -> Result<&str, Malformed> {
            std::str::from_utf8(get(i)?).map_err(|_| Malformed::Bad {
                field: FIELDS[i],
                why: "not UTF-8".into(),
            })
        };
        let bad = |i: usize, why: String| Malformed::Bad {
            field: FIELDS[i],
            why,
        };
        let id = text(0)?.parse::<u64>().map_err(|e| bad(0, e.to_string()))?;
        let job = text(1)?;
        if job.is_empty() {
            return Err(bad(1, "empty".into()));
        }
        let codec = text(2)?
            .parse::<Codec>()
            .map_err(|e| bad(2, e.to_string()))?;
        let fp = text(3)?;
        if fp.len() != 16 {
            return Err(bad(3, "not 16 hex digits".into()));
        }
        let fingerprint = u64::from_str_radix(fp, 16).map_err(|e| bad(3, e.to_string()))?;
        let attempt = text(4)?
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| bad(4, "not a number from 1".into()))?;
        let opts: Opts = serde_json::from_slice(get(5)?).map_err(|e| bad(5, e.to_string()))?;
        super::keys::check_queue(&opts.queue).map_err(|e| bad(5, e.to_string()))?;
        Ok(Envelope {
            id,
            job: job.to_string(),
            codec,
            fingerprint,
            attempt,
            opts,
            arg: get(6)?.to_vec(),
        })
    }

    /// The job id an entry claims, if it can be read at all: to report a
    /// malformed job to whoever waits for it.
    pub(crate) fn claimed_id(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<u64> {
        fields
            .iter()
            .find(|(k, _)| k == b"id")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
    }

    /// The reply stream an entry names, if its options can be read.
    pub(crate) fn claimed_reply(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<String> {
        let (_, v) = fields.iter().find(|(k, _)| k == b"opt")?;
        serde_json::from_slice::<Opts>(v).ok()?.reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: 42,
            job: "images.resize".into(),
            codec: Codec::Bincode,
            fingerprint: 0x0123_4567_89ab_cdef,
            attempt: 1,
            opts: Opts {
                queue: "default".into(),
                priority: -3,
                reply: Some("{forkpool}:reply:h:1:abc".into()),
                time_limit_ms: Some(5000),
                retry: Some(RetryPolicy::new(3).backoff(std::time::Duration::from_millis(10))),
                result_ttl_ms: 86_400_000,
                ..Opts::default()
            },
            arg: vec![1, 2, 3, 0, 255],
        }
    }

    fn pairs(e: &Envelope) -> Vec<(Vec<u8>, Vec<u8>)> {
        FIELDS
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .zip(e.fields())
            .collect()
    }

    #[test]
    fn an_envelope_round_trips_through_its_fields() {
        let e = sample();
        assert_eq!(Envelope::parse(&pairs(&e), 1 << 20), Ok(e.clone()));
        let opt = String::from_utf8(e.fields()[5].clone()).unwrap();
        assert!(opt.contains("\"priority\":-3"), "{opt}");
        assert!(
            !opt.contains("ignore_result"),
            "defaults are left out: {opt}"
        );
        assert_eq!(Envelope::claimed_id(&pairs(&e)), Some(42));
        assert_eq!(Envelope::claimed_reply(&pairs(&e)), e.opts.reply);
    }

    #[test]
    fn every_defect_has_its_reason() {
        let good = pairs(&sample());
        let with = |i: usize, v: &[u8]| {
            let mut p = good.clone();
            p[i].1 = v.to_vec();
            p
        };
        let parse = |p: &[(Vec<u8>, Vec<u8>)]| Envelope::parse(p, 1 << 20).unwrap_err();
        assert_eq!(parse(&good[1..]), Malformed::Missing("id"));
        let mut twice = good.clone();
        twice.push(good[1].clone());
        assert_eq!(parse(&twice), Malformed::Twice("job"));
        assert!(matches!(
            parse(&with(0, b"-1")),
            Malformed::Bad { field: "id", .. }
        ));
        assert!(matches!(
            parse(&with(1, b"")),
            Malformed::Bad { field: "job", .. }
        ));
        let codec = parse(&with(2, b"pickle"));
        assert!(
            codec.to_string().contains("unknown codec \"pickle\""),
            "{codec}"
        );
        assert!(matches!(
            parse(&with(3, b"xyz")),
            Malformed::Bad { field: "fp", .. }
        ));
        assert!(matches!(
            parse(&with(4, b"0")),
            Malformed::Bad { field: "try", .. }
        ));
        assert!(matches!(
            parse(&with(5, b"{")),
            Malformed::Bad { field: "opt", .. }
        ));
        let unknown = parse(&with(5, br#"{"queue":"default","result_ttl_ms":1,"x":1}"#));
        assert!(matches!(unknown, Malformed::Bad { field: "opt", .. }));
        let queue = parse(&with(5, br#"{"queue":"a b","result_ttl_ms":1}"#));
        assert!(matches!(queue, Malformed::Bad { field: "opt", .. }));
        assert!(matches!(
            parse(&with(0, &[0xff])),
            Malformed::Bad { field: "id", .. }
        ));
        let big = Envelope::parse(&with(6, &[0; 2000]), 1024).unwrap_err();
        assert!(matches!(big, Malformed::Oversized { limit: 1024, .. }));
        assert_eq!(Envelope::parse(&[], 1024), Err(Malformed::Missing("id")));
    }
}
