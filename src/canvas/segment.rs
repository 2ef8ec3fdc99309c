//! Group members that travel as `map` items do: many jobs of one spec,
//! sent in batches, each batch with one sink for all its items.
//!
//! A group of a hundred thousand signatures of one job is a hundred
//! thousand jobs to account for, but sending them as single jobs would cost
//! a hundred thousand slots, sinks and frames. Consecutive members that are
//! jobs of one spec with bound arguments (`starmap`, `chunks`, or
//! signatures of one `Job` side by side) form a [`Segment`] instead: their
//! arguments sit in one buffer, go out in batches sized as `map` sizes
//! them (or one batch for a chunk of `chunks`), and each batch's answers
//! come back per delivery through a [`ChunkSink`], straight into the
//! group's assembly.
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
//! worker, while one a worker has taken runs to its end, as `imap`'s do.
//!
//! Accounting: the supervisor counts every item it resolves. The only
//! items it drops without a word are those of a batch whose sink declined
//! it ([`Sink::claim`]: the workflow is over); a `ChunkSink` knows how many
//! of its items it was told about, and counts the rest as cancelled when
//! the last part of its batch is gone.

use crate::batch::{Batch, JobOpts, Outcome, Sink};
use crate::canvas::flow::{Event, Flow, NodeId, post};
use crate::client::batcher::MAX_BATCH_BYTES;
use crate::client::map::auto_chunk;
use crate::config::PoolConfig;
use crate::options::signature::Spec;
use crate::transport::wire;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Consecutive members of a group that are jobs of one spec.
pub(crate) struct Segment {
    pub(crate) spec: Arc<Spec>,
    /// The group index of its first member.
    pub(crate) first: u32,
    pub(crate) count: u32,
    /// The members' arguments, one `[len][bytes]` item each.
    items: Arc<[u8]>,
    /// One batch for all (a chunk of `chunks`).
    whole: bool,
    /// The options its batches were sent with, for retries.
    pub(crate) opts: JobOpts,
    /// Where each member's argument starts in `items`: built on the first
    /// retry, which needs one argument out of many.
    offsets: Vec<usize>,
}

impl Segment {
    pub(crate) fn new(
        spec: Arc<Spec>,
        first: u32,
        items: Arc<[u8]>,
        count: u32,
        whole: bool,
    ) -> Segment {
        Segment {
            spec,
            first,
            count,
            items,
            whole,
            opts: JobOpts::default(),
            offsets: Vec::new(),
        }
    }

    /// The segment's members as batches with options `opts`, sized as
    /// `map` sizes its own (guided: a quarter per worker of what is left,
    /// within the pool's `chunk_size` if set and `MAX_BATCH_BYTES`), or
    /// one batch for a whole chunk. `sink(first, count)` gives each batch
    /// its sink; a batch's base is its first member's index in the group.
    pub(crate) fn batches(
        &mut self,
        opts: JobOpts,
        config: &PoolConfig,
        mut sink: impl FnMut(u32) -> Arc<dyn Sink>,
    ) -> Vec<Batch> {
        self.opts = opts;
        let mut out = Vec::new();
        let mut items = wire::Items::new(&self.items);
        let mut left = self.count;
        let mut base = self.first;
        while left > 0 {
            let chunk = if self.whole {
                left
            } else {
                let size = config
                    .chunk_size
                    .unwrap_or_else(|| auto_chunk(left as usize, config.workers));
                size.clamp(1, left as usize) as u32
            };
            let mut buf = Vec::new();
            let mut n = 0;
            while n < chunk && (self.whole || n == 0 || buf.len() < MAX_BATCH_BYTES) {
                let Some(item) = items.next() else { break };
                buf.extend_from_slice(&(item.len() as u32).to_le_bytes());
                buf.extend_from_slice(item);
                n += 1;
            }
            if n == 0 {
                // Fewer items than counted: cannot happen (the buffer was
                // built with its count); stop rather than loop.
                debug_assert!(false, "a segment's buffer holds fewer items than its count");
                break;
            }
            let batch = Batch::new(self.spec.call, buf, n, u64::from(base), sink(n), opts, None);
            out.push(batch);
            left -= n;
            base += n;
        }
        out
    }

    /// The argument of group member `index` (one of this segment's), as
    /// an item.
    pub(crate) fn item(&mut self, index: u32) -> Vec<u8> {
        if self.offsets.is_empty() {
            let mut at = 0;
            for item in wire::Items::new(&self.items) {
                self.offsets.push(at);
                at += 4 + item.len();
            }
        }
        let i = (index - self.first) as usize;
        let start = self.offsets[i];
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.items.len());
        self.items[start..end].to_vec()
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
                .counters()
                .cancelled
                .fetch_add(u64::from(left), Ordering::Relaxed);
        }
    }
}
