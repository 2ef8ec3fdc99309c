//! Items into batches: what `map` and both `imap`s share.
//!
//! A [`Batcher`] encodes consecutive items of one function, on the
//! caller's thread, into batches of at most `chunk` items or
//! [`MAX_BATCH_BYTES`], each sent to the supervisor as soon as it is full,
//! so workers start while the input is still being read. It also keeps the
//! byte window both callers respect: at most [`IN_FLIGHT_PER_WORKER`] of
//! encoded arguments per worker are out. The answers of every batch come
//! back, per delivery, through one channel ([`StreamSink`]), and
//! [`unpack`] turns a delivery into `(index, result)` pairs.

use crate::batch::outcome::decode_result;
use crate::batch::{Batch, JobOpts, Outcome, Sink};
use crate::client::shared::Shared;
use crate::error::JobError;
use crate::sys::prefault::Spares;
use crate::transport::codec::Codec;
use crate::transport::wire;
use crate::worker::call::Call;
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Close a batch once its encoded items reach this size.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A batch at least this big is left to the supervisor thread: copying it
/// into a ring (and its answers out) then runs beside the calling thread,
/// which encodes and decodes. Smaller batches are cheaper driven by the
/// caller itself (see `map`). Above `MAX_BATCH_BYTES`, so only big items
/// ever cross it.
pub(super) const HANDOFF_BYTES: usize = 512 << 10;
/// Argument bytes `map` keeps in flight per worker at most (with a floor
/// in items, see `Flow`): two rings' worth.
pub(super) const IN_FLIGHT_PER_WORKER: usize = 4 << 20;

/// Receives the outcomes of a map's batches, and learns how long its items
/// take.
pub(crate) struct StreamSink {
    tx: Sender<(u64, Outcome)>,
    pub(super) abandoned: AtomicBool,
    /// A running estimate of the time per item, in ns (0: none yet).
    item_ns: AtomicU64,
}

impl StreamSink {
    /// About how long one item takes its worker, from the answers so far
    /// (`None` before the first). An overestimate when workers are kept
    /// off their CPUs or answers wait to be collected.
    pub(super) fn item_ns(&self) -> Option<u64> {
        match self.item_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }
}

impl Sink for StreamSink {
    fn deliver(&self, base: u64, outcome: Outcome) {
        let _ = self.tx.send((base, outcome));
    }

    fn claim(&self) -> bool {
        !self.abandoned.load(Ordering::Relaxed)
    }

    fn timed(&self, ns: u64, _n: u64) {
        // Only the supervisor's step calls this, one at a time.
        let ns = ns.max(1);
        let old = self.item_ns.load(Ordering::Relaxed);
        let new = if old == 0 { ns } else { (3 * old + ns) / 4 };
        self.item_ns.store(new.max(1), Ordering::Relaxed);
    }

    fn counts_declined(&self) -> bool {
        false
    }
}

pub(super) fn stream() -> (Arc<StreamSink>, Receiver<(u64, Outcome)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Arc::new(StreamSink {
            tx,
            abandoned: AtomicBool::new(false),
            item_ns: AtomicU64::new(0),
        }),
        rx,
    )
}

/// Groups consecutive items into batches.
pub(super) struct Batcher {
    pub(super) call: Call,
    pub(super) name: &'static str,
    pub(super) sink: Arc<StreamSink>,
    pub(super) opts: JobOpts,
    pub(super) chunk: u32,
    pub(super) cap: u64,
    pub(super) items: Vec<u8>,
    pub(super) count: u32,
    pub(super) base: u64,
    /// Big argument buffers come from and go back to the pool's stocks.
    pub(super) spares: Spares,
    /// The pool's codec: how items are encoded.
    pub(super) codec: Codec,
    /// Bytes of the last batch, the size expected of the next.
    pub(super) last_bytes: usize,
    /// Items of the batches taken so far, and their bytes.
    pub(super) pushed_items: u64,
    pub(super) pushed_bytes: u64,
}

impl Batcher {
    /// Batches of `call` for queue `queue`, `chunk` items at most.
    pub(super) fn new(
        shared: &Shared,
        call: Call,
        name: &'static str,
        sink: Arc<StreamSink>,
        chunk: usize,
        queue: usize,
    ) -> Batcher {
        let config = &shared.config;
        Batcher {
            call,
            name,
            sink,
            opts: JobOpts::for_queue(config, queue),
            chunk: chunk.clamp(1, u32::MAX as usize) as u32,
            cap: config.max_message_size,
            items: Vec::new(),
            count: 0,
            base: 0,
            spares: shared.prefault.spares().clone(),
            codec: shared.codec,
            last_bytes: 0,
            pushed_items: 0,
            pushed_bytes: 0,
        }
    }

    /// Adds item number `index`, which must follow the batch's last one
    /// (after a failed push, call [`take`](Self::take) first).
    ///
    /// Per item, on `map`'s hot path: `#[inline]`, because `map` is
    /// instantiated in the caller's crate and lives in another module, so
    /// without it the push is a call per item (1.4 ns of 8, measured).
    #[inline]
    pub(super) fn push<A: Serialize>(&mut self, index: u64, item: &A) -> Result<(), JobError> {
        if self.count == 0 {
            self.base = index;
            if self.items.capacity() == 0
                && self.last_bytes >= HANDOFF_BYTES
                && let Some(buf) = self.spares.take(self.last_bytes)
            {
                // Big items: encode into a buffer already faulted in.
                self.items = buf;
            }
        }
        debug_assert_eq!(self.base + u64::from(self.count), index);
        let codec = self.codec;
        let len = wire::push_item(&mut self.items, |v| codec.encode_into(v, item))
            .map_err(|e| JobError::Codec(format!("argument: {e}")))?;
        if len as u64 > self.cap {
            self.items.truncate(self.items.len() - len - 4);
            return Err(JobError::TooLarge {
                size: len as u64,
                limit: self.cap,
            });
        }
        self.count += 1;
        Ok(())
    }

    /// How many items may be in flight: as many as `IN_FLIGHT_PER_WORKER`
    /// bytes per worker hold at the average size encoded so far, and never
    /// fewer than two per worker plus one (every worker busy, one batch
    /// queued behind it), whatever their size.
    pub(super) fn items_in_window(&self, workers: usize) -> u64 {
        let window = IN_FLIGHT_PER_WORKER.saturating_mul(workers) as u64;
        let avg = (self.pushed_bytes / self.pushed_items.max(1)).max(1);
        (window / avg).max(2 * workers as u64 + 1)
    }

    /// Whether the batch is full (per item, like `push`).
    #[inline]
    pub(super) fn is_full(&self) -> bool {
        self.count >= self.chunk || self.items.len() >= MAX_BATCH_BYTES
    }

    pub(super) fn take(&mut self) -> Option<Batch> {
        if self.count == 0 {
            return None;
        }
        let items = std::mem::take(&mut self.items);
        self.last_bytes = items.len();
        self.pushed_items += u64::from(self.count);
        self.pushed_bytes += items.len() as u64;
        let big = items.len() >= HANDOFF_BYTES;
        let mut batch = Batch::new(
            self.call,
            items,
            self.count,
            self.base,
            self.sink.clone(),
            self.opts,
            None,
        );
        batch.name = self.name;
        if big {
            batch.recycle = Some(self.spares.clone());
        }
        self.count = 0;
        Some(batch)
    }
}

/// Counts an item that failed before it could be sent.
pub(super) fn refused(shared: &Shared, error: &JobError) {
    let c = &shared.counters;
    c.submitted.fetch_add(1, Ordering::Relaxed);
    c.count_error(error, 1);
}

/// Decodes one delivery into `(index, result)` pairs.
pub(super) fn unpack<R: DeserializeOwned>(
    base: u64,
    outcome: Outcome,
    spares: Option<&Spares>,
    codec: Codec,
    mut each: impl FnMut(u64, Result<R, JobError>),
) -> u64 {
    match outcome {
        Outcome::Records { count, buf } => {
            for (i, rec) in wire::records(&buf).enumerate() {
                each(base + i as u64, decode_result(rec, spares, codec));
            }
            if let Some(spares) = spares {
                spares.give(buf);
            }
            u64::from(count)
        }
        Outcome::Failed { count, error } => {
            for i in 0..u64::from(count) {
                each(base + i, Err(error.clone()));
            }
            u64::from(count)
        }
    }
}
