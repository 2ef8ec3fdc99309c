//! Group members that travel as `map` items do: many jobs of one spec,
//! sent in batches, each batch with one sink for all its items.
//!
//! A group of a hundred thousand signatures of one job is a hundred
//! thousand jobs to account for, but sending them as single jobs would cost
//! a hundred thousand slots, sinks and frames. Consecutive members that are
//! jobs of one spec with bound arguments (`starmap`, `chunks`, or
//! signatures of one `Job` side by side) form a [`Segment`] instead: their
//! arguments go out in batches sized as `map` sizes them (or one batch for
//! a chunk of `chunks`), encoded as they go when they are still typed
//! (`args.rs`), and each batch's answers come back per delivery through a
//! [`ChunkSink`], straight into the group's assembly. Sent at submission,
//! on the caller's thread, the batches are handed to workers by that
//! thread as it goes, as `map`'s are, so the workers start on the first
//! batch while the next is encoded.
//!
//! Every option of the job still applies per member: time limits per item;
//! a start time and an expiry per batch (all of a segment's items are
//! submitted together, so they are the same instant); a rate limit through
//! the function's throttle; callbacks per member; and a failure the job's
//! retry policy retries is retried as a single job of its own, which takes
//! the member's place (see `flow.rs`).
//!
//! What differs from single jobs: a member's expiry is checked when its
//! batch is handed to a worker, not at the instant it passes; and
//! cancelling the workflow withdraws the batches not yet handed to a
//! worker and recalls the unstarted items of those a worker holds
//! (`Command::RecallDeclined`), while the item a worker is on runs to its
//! end, as with a dropped `imap`.
//! Members with a start time (a countdown, an ETA) go as single jobs: a
//! batch waiting in the supervisor's timers would be dropped only when it
//! fell due, so cancelling could not free it (nor `join` stop waiting).
//!
//! Accounting: the supervisor counts every item it resolves; a member whose
//! argument cannot be sent is counted here, as refused. The only items the
//! supervisor drops without a word are those of a batch whose sink
//! declined it ([`Sink::claim`]: the workflow is over); a `ChunkSink` knows
//! how many of its items it was told about, and counts the rest as
//! cancelled when the last part of its batch is gone.

use crate::batch::gate::Ticket;
use crate::batch::{Batch, JobOpts, Outcome, Sink};
use crate::canvas::args::Args;
use crate::canvas::flow::{Event, Flow, NodeId, post, take_queued};
use crate::client::batcher::MAX_BATCH_BYTES;
use crate::client::map::auto_chunk;
use crate::config::PoolConfig;
use crate::error::JobError;
use crate::options::signature::Spec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Consecutive members of a group that are jobs of one spec.
pub(crate) struct Segment {
    pub(crate) spec: Arc<Spec>,
    /// The group index of its first member.
    pub(crate) first: u32,
    pub(crate) count: u32,
    /// Its members' arguments are `args[from..from + count]`.
    pub(crate) args: Arc<dyn Args>,
    pub(crate) from: u32,
    /// One batch for all (a chunk of `chunks`).
    pub(crate) whole: bool,
    /// The options its batches were sent with, for retries.
    pub(crate) opts: JobOpts,
}

impl Segment {
    /// The argument of group member `index` (one of this segment's), as an
    /// item, or why it cannot be sent. (Only for arguments already
    /// encoded: see `args.rs`.)
    pub(crate) fn item(&self, index: u32, cap: u64) -> Result<Vec<u8>, JobError> {
        debug_assert!(
            !self.args.is_typed(),
            "user code on the coordinator's thread"
        );
        let mut out = Vec::new();
        let w = self
            .args
            .write(self.from + index - self.first, 1, usize::MAX, cap, &mut out);
        match (w.count, w.refused) {
            (1, _) => Ok(out),
            (_, Some(error)) => Err(error),
            _ => Err(JobError::Codec("a member's argument is missing".into())),
        }
    }
}

/// Sending one segment's batches: done after the coordinator's lock is
/// released (encoding may take a while, and stepping the supervisor
/// delivers answers, which take that lock).
pub(crate) struct Sending {
    pub(crate) node: NodeId,
    pub(crate) segment: u32,
    pub(crate) spec: Arc<Spec>,
    pub(crate) args: Arc<dyn Args>,
    pub(crate) from: u32,
    pub(crate) first: u32,
    pub(crate) count: u32,
    pub(crate) whole: bool,
    pub(crate) opts: JobOpts,
    /// Queue places for the batches, taken at submission.
    pub(crate) ticket: Option<Ticket>,
    /// Sent at submission, by the submitting caller: it steps the
    /// supervisor after each batch, as `map` does, so the workers start at
    /// once.
    pub(crate) by_caller: bool,
    /// ... who then waits for the workflow, driving the supervisor: the
    /// supervisor thread need not be woken when the batches are sent.
    pub(crate) attended: bool,
}

impl Sending {
    /// The most workers of the queue the members go to.
    fn workers(&self, config: &PoolConfig) -> usize {
        let q = usize::from(self.opts.queue).min(config.queues.len() - 1);
        config.queues[q].max_workers
    }

    /// Sends the members in batches, sized as `map` sizes its own (guided:
    /// a quarter per worker of what is left, within the pool's `chunk_size`
    /// if set and [`MAX_BATCH_BYTES`]), or one batch for a whole chunk. A
    /// member whose argument cannot be sent fails alone. Stops if the
    /// workflow ends meanwhile: what was not sent was never counted.
    pub(crate) fn run(mut self, flow: &Arc<Flow>) {
        let feed = flow.feed();
        let config = &feed.config;
        let cap = config.max_message_size;
        let budget = if self.whole {
            usize::MAX
        } else {
            MAX_BATCH_BYTES
        };
        let mut sent = false;
        let mut at = 0;
        while at < self.count {
            if flow.is_over() {
                break;
            }
            let left = self.count - at;
            let chunk = if self.whole {
                left
            } else {
                let size = config
                    .chunk_size
                    .unwrap_or_else(|| auto_chunk(left as usize, self.workers(config)));
                size.clamp(1, left as usize) as u32
            };
            let mut buf = Vec::new();
            let w = self
                .args
                .write(self.from + at, chunk, budget, cap, &mut buf);
            if w.count > 0 {
                let base = self.first + at;
                let sink = ChunkSink::new(flow, self.node, self.segment, w.count);
                let mut batch = Batch::new(
                    self.spec.call,
                    buf,
                    w.count,
                    u64::from(base),
                    Arc::new(sink),
                    self.opts,
                    None,
                );
                batch.name = self.spec.name;
                batch.ticket = (self.ticket.as_mut()).map(|t| Box::new(t.split(w.count.into())));
                match feed.send_quiet(batch) {
                    Ok(()) => {
                        sent = true;
                        if self.by_caller {
                            feed.step_once();
                            // Answers the step took in, taken in too.
                            take_queued();
                        }
                    }
                    // The supervisor is gone: dropping the batch resolves it.
                    Err(batch) => drop(batch),
                }
                at += w.count;
            }
            match w.refused {
                Some(error) => {
                    // Refused before it reached the supervisor, as
                    // `Shared::refuse` does.
                    feed.counters.submitted.fetch_add(1, Ordering::Relaxed);
                    feed.counters.count_error(&error, 1);
                    let index = self.first + at;
                    post(
                        flow,
                        Event::Refused {
                            node: self.node,
                            index,
                            error,
                        },
                    );
                    at += 1;
                }
                None if w.count == 0 => {
                    debug_assert!(false, "a segment's arguments ran out early");
                    break;
                }
                None => {}
            }
        }
        if sent && !self.attended {
            feed.hand_over();
        }
    }
}

/// The sink of one batch of a segment: hands each delivery to the
/// workflow, and declines the batch once the workflow is over.
pub(crate) struct ChunkSink {
    flow: Arc<Flow>,
    node: NodeId,
    segment: u32,
    count: u32,
    /// Items delivered so far (by any part of the batch, if the supervisor
    /// split it).
    delivered: AtomicU32,
}

impl ChunkSink {
    pub(crate) fn new(flow: &Arc<Flow>, node: NodeId, segment: u32, count: u32) -> ChunkSink {
        ChunkSink {
            flow: flow.clone(),
            node,
            segment,
            count,
            delivered: AtomicU32::new(0),
        }
    }
}

impl Sink for ChunkSink {
    fn deliver(&self, base: u64, outcome: Outcome) {
        let n = match &outcome {
            Outcome::Records { count, .. } | Outcome::Failed { count, .. } => *count,
        };
        self.delivered.fetch_add(n, Ordering::Relaxed);
        let event = Event::Chunk {
            node: self.node,
            segment: self.segment,
            base: base as u32,
            outcome,
        };
        post(&self.flow, event);
    }

    fn claim(&self) -> bool {
        !self.flow.is_over()
    }
}

impl Drop for ChunkSink {
    /// Every part of the batch is gone: items never delivered were dropped
    /// by the supervisor because this sink declined them. They never ran:
    /// count them cancelled, once.
    fn drop(&mut self) {
        let left = self.count.saturating_sub(*self.delivered.get_mut());
        if left > 0 {
            debug_assert!(self.flow.is_over(), "items dropped from a live workflow");
            self.flow
                .feed()
                .counters
                .cancelled
                .fetch_add(u64::from(left), Ordering::Relaxed);
        }
    }
}
