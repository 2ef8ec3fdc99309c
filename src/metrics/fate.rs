//! How a job ended, as every count sees it: one classification of record
//! tags and errors, shared by the pool's counters ([`Counters`]) and the
//! per-function and per-queue tallies, so they cannot disagree.
//!
//! [`Counters`]: super::stats::Counters

use crate::error::JobError;
use crate::transport::wire::{Run, Tag};

/// How one job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It returned a result.
    Completed,
    /// Its function panicked.
    Panicked,
    /// Its worker died under it.
    Crashed,
    /// It ran past its hard time limit.
    TimedOut,
    /// Its argument or result did not (de)serialize, or was too large.
    Codec,
    /// A fallible job returned its own `Err`.
    Errored,
    /// It had not started by its expiry.
    Expired,
    /// It was cancelled (or revoked) before it produced a result.
    Cancelled,
    /// Another failure (no worker could start, an unknown queue, a
    /// workflow step that failed, ...).
    Failed,
}

impl Fate {
    /// The fate of a job answered with a record of `tag`; `None` for a
    /// record that ends nothing by itself (a skipped job was counted when
    /// it was withdrawn).
    pub(crate) fn of_tag(tag: Tag) -> Option<Fate> {
        match tag {
            Tag::Ok => Some(Fate::Completed),
            Tag::Panic => Some(Fate::Panicked),
            Tag::Codec | Tag::TooLarge => Some(Fate::Codec),
            Tag::Err => Some(Fate::Errored),
            _ => None,
        }
    }

    /// The fate of a job that resolved with `error`.
    pub(crate) fn of_error(error: &JobError) -> Fate {
        match error {
            JobError::Cancelled | JobError::Revoked => Fate::Cancelled,
            JobError::Panicked { .. } => Fate::Panicked,
            JobError::Crashed { .. } => Fate::Crashed,
            JobError::TimedOut { .. } => Fate::TimedOut,
            JobError::Codec(_) | JobError::TooLarge { .. } => Fate::Codec,
            JobError::Expired => Fate::Expired,
            _ => Fate::Failed,
        }
    }

    /// The fates of a run of answers, with how many each: what the
    /// supervisor's fast path counted while it scanned them.
    pub(crate) fn of_run(run: &Run) -> [(Fate, u64); 4] {
        [
            (Fate::Completed, run.ok.into()),
            (Fate::Panicked, run.panicked.into()),
            (Fate::Codec, run.codec.into()),
            (Fate::Errored, run.errored.into()),
        ]
    }
}
