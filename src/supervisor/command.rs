//! What the pool's callers say to the supervisor ([`Command`]), and what
//! it tells them about one job ([`Whereabouts`]).
//!
//! Commands travel through an unbounded channel, so a caller never blocks
//! on the supervisor; a question (`Cancel`, `Inspect`) carries a one-shot
//! reply channel. When the supervisor is gone, a send fails and the caller
//! gets its command back: a `Submit` then resolves its jobs as cancelled
//! on the caller's side.

use crate::batch::progress::Progress;
use crate::batch::{Batch, JobId};
use crate::control::inspection::Inspection;
use crate::control::revoke::Revoked;
use crossbeam_channel::Sender;

/// What the pool's callers ask of the supervisor.
// A `Submit` carries its `Batch` by value (about 230 bytes): boxing it
// would cost an allocation per submission, to save copying bytes that the
// channel copies once anyway.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Submit(Batch),
    Cancel {
        id: JobId,
        reply: Sender<bool>,
    },
    /// Where is this single job now?
    Inspect {
        id: JobId,
        reply: Sender<Whereabouts>,
    },
    /// The job was cancelled before it was dispatched: if it waits in the
    /// timers, drop it now rather than when it falls due.
    Discard(JobId),
    /// Accept no new work (callers check; this stops replacements when idle).
    Close,
    /// Finish all work, let the workers exit, then end.
    Join,
    /// Kill everything now.
    Terminate,
    /// A snapshot of everything the supervisor holds.
    Snapshot {
        reply: Sender<Inspection>,
    },
    /// Revoke job `id` wherever it is; kill its worker if it runs and
    /// `terminate`.
    Revoke {
        id: JobId,
        terminate: bool,
        reply: Sender<Revoked>,
    },
    /// Callers gave up on some batches (a workflow was cancelled, an
    /// `imap` dropped): every worker that holds one takes back what it has
    /// not started (see `dispatch.rs`, `recall_declined`), so none of it
    /// runs. The reply, if asked, comes once the recalls are set.
    RecallDeclined(Option<Sender<()>>),
    /// Queue `queue` keeps between `min` and `max` workers from now on.
    Resize {
        queue: usize,
        min: usize,
        max: usize,
    },
}

/// Where a single job is, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whereabouts {
    /// Waiting for a start time (countdown, ETA, retry backoff, rate limit).
    Scheduled,
    /// Waiting for a worker: in the queue, or in a worker's inbox behind
    /// another job.
    Queued,
    /// A worker is running it; with the latest progress it reported.
    Running { progress: Option<Progress> },
    /// Not with the supervisor: finished, unknown, or not yet received.
    Elsewhere,
}
