//! What a worker's record means for its job: the bytes of a result, or
//! the [`JobError`] it stands for.
//!
//! Every path that reads a job's answer — a handle, a `map`, the result
//! store, callbacks, retries — turns records into outcomes here, so a
//! record tag means the same thing everywhere.

use crate::error::JobError;
use crate::sys::prefault::Spares;
use crate::transport::codec::Codec;
use crate::transport::wire::{Record, Tag};
use serde::de::DeserializeOwned;

/// What one item record means for its job.
pub(crate) fn outcome(rec: Record<'_>) -> Result<&[u8], JobError> {
    let text = || String::from_utf8_lossy(rec.body).into_owned();
    match rec.tag {
        // A fallible job's `Err` travels as its encoded `Result`, like `Ok`.
        Tag::Ok | Tag::Err => Ok(rec.body),
        Tag::Panic => Err(JobError::Panicked { message: text() }),
        Tag::Codec => Err(JobError::Codec(text())),
        Tag::Skipped => Err(JobError::Cancelled),
        Tag::TooLarge => {
            let n = |i: usize| {
                rec.body
                    .get(i..i + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
            };
            Err(JobError::TooLarge {
                size: n(0),
                limit: n(8),
            })
        }
        other => Err(JobError::Codec(format!("unexpected record {other:?}"))),
    }
}

/// Decodes a job's result from the bytes of its record.
/// `spares` is the pool's stock of faulted-in buffers, for big byte strings;
/// `codec`, the one the job's result was encoded with.
pub(crate) fn decode_result<R: DeserializeOwned>(
    rec: Record<'_>,
    spares: Option<&Spares>,
    codec: Codec,
) -> Result<R, JobError> {
    codec
        .decode_with(outcome(rec)?, spares)
        .map_err(|e| JobError::Codec(format!("result: {e}")))
}
