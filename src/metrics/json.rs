//! How snapshots look once serialized (the `Serialize` impls of
//! [`Stats`](crate::Stats), [`Inspection`](crate::Inspection) and what
//! they hold): a duration is a number of seconds, a time a number of
//! seconds since the Unix epoch, both `f64` — what JSON readers and
//! Prometheus expect, rather than serde's `{secs, nanos}` structs.

use serde::Serializer;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration, as seconds.
pub(crate) fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A time, as seconds since the Unix epoch (negative before it).
pub(crate) fn epoch_secs<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(since_epoch(*t))
}

/// An optional time, as seconds since the Unix epoch, or none.
pub(crate) fn opt_epoch_secs<S: Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&since_epoch(*t)),
        None => s.serialize_none(),
    }
}

fn since_epoch(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
