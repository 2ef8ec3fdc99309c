//! `imap` and `imap_unordered`: lazy iterators of results, in input or
//! completion order.
//!
//! They read their input lazily: at most a window of items is in flight
//! (4096 at most, and within the same byte window as `map`), and more input
//! is pulled only as results are taken, so an endless input runs in flat
//! memory. They start with one item per batch and, unless the user fixed
//! the batch size, grow batches while items prove quick (about 0.2 ms of
//! work each). Dropping the iterator cancels the items not yet started.

use super::batcher::{Batcher, refused, stream, unpack};
use super::progress_bar::Bar;
use crate::batch::Outcome;
use crate::client::shared::Shared;
use crate::error::JobError;
use crate::worker::call::{Call, Func};
use crossbeam_channel::Receiver;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt;
use std::iter::Fuse;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Largest batch the `imap`s choose by themselves, and most items they keep
/// in flight.
const MAX_IMAP_CHUNK: usize = 512;
const MAX_IMAP_WINDOW: u64 = 4096;
/// The `imap`s size batches to about this much work each.
const IMAP_BATCH_NS: f64 = 200_000.0;

/// The machinery behind both `imap`s.
struct Stream<I: Iterator, R> {
    shared: Arc<Shared>,
    input: Option<Fuse<I>>,
    batcher: Batcher,
    rx: Receiver<(u64, Outcome)>,
    ordered: bool,
    /// Items pulled from the input.
    pulled: u64,
    /// Results handed out.
    yielded: u64,
    window: u64,
    /// Batch size chosen by the pool (not set by the user): adapts.
    auto_chunk: bool,
    workers: usize,
    /// Smoothed time between results, per item, and when the last came.
    per_item_ns: f64,
    last_result: Instant,
    /// Ordered: results for indices `yielded..`, in order, as they arrive.
    slots: VecDeque<Option<Result<R, JobError>>>,
    /// Unordered: results in arrival order.
    ready: VecDeque<Result<R, JobError>>,
    closed: bool,
    bar: Bar,
    _input: PhantomData<fn(I::Item)>,
}

impl<I, R> Stream<I, R>
where
    I: Iterator,
    I::Item: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn new(
        shared: Arc<Shared>,
        f: Func<I::Item, R>,
        input: I,
        ordered: bool,
        progress_bar: bool,
        queue: usize,
    ) -> Self {
        let config = &shared.config;
        let chunk = config.chunk_size.unwrap_or(1);
        let workers = config.queues[queue].max_workers;
        let window = Self::window_for(workers, chunk);
        let auto_chunk = config.chunk_size.is_none();
        let (sink, rx) = stream();
        let batcher = Batcher::new(
            &shared,
            Call::new(f.ptr, shared.codec),
            f.name,
            sink,
            chunk,
            queue,
        );
        let closed = shared.is_closed();
        let (lo, hi) = input.size_hint();
        let bar = Bar::new(progress_bar, (hi == Some(lo)).then_some(lo as u64));
        Stream {
            shared,
            input: Some(input.fuse()),
            batcher,
            rx,
            ordered,
            pulled: 0,
            yielded: 0,
            window,
            auto_chunk,
            workers,
            per_item_ns: 0.0,
            last_result: Instant::now(),
            slots: VecDeque::new(),
            ready: VecDeque::new(),
            closed,
            bar,
            _input: PhantomData,
        }
    }

    fn window_for(workers: usize, chunk: usize) -> u64 {
        ((4 * workers * chunk) as u64).clamp(64, MAX_IMAP_WINDOW.max(chunk as u64))
    }

    /// Learns how fast items come back and, if the pool picks the batch
    /// size, grows batches while items are quick (fewer frames per item)
    /// and shrinks them when items are slow (first results come sooner).
    fn observe(&mut self, items: u64) {
        let now = Instant::now();
        let interval = now.duration_since(self.last_result).as_nanos() as f64 / items.max(1) as f64;
        self.last_result = now;
        self.per_item_ns = if self.per_item_ns == 0.0 {
            interval
        } else {
            0.8 * self.per_item_ns + 0.2 * interval
        };
        if self.auto_chunk {
            let service = self.per_item_ns.max(1.0) * self.workers as f64;
            let chunk = (IMAP_BATCH_NS / service).clamp(1.0, MAX_IMAP_CHUNK as f64) as usize;
            self.batcher.chunk = chunk as u32;
            self.window = Self::window_for(self.workers, chunk);
        }
    }

    fn place(&mut self, index: u64, result: Result<R, JobError>) {
        if self.ordered {
            let at = (index - self.yielded) as usize;
            if self.slots.len() <= at {
                self.slots.resize_with(at + 1, || None);
            }
            self.slots[at] = Some(result);
        } else {
            self.ready.push_back(result);
        }
    }

    /// Pulls input until the window is full, and sends what was pulled.
    /// The window counts items, and big items count by their bytes too
    /// (as in `map`).
    fn fill(&mut self) {
        while self.pulled - self.yielded
            < self.window.min(self.batcher.items_in_window(self.workers))
        {
            let Some(item) = self.input.as_mut().and_then(Iterator::next) else {
                self.input = None;
                break;
            };
            let index = self.pulled;
            self.pulled += 1;
            match self.batcher.push(index, &item) {
                Err(e) => {
                    if let Some(b) = self.batcher.take() {
                        self.shared.submit_batch(b);
                    }
                    refused(&self.shared, &e);
                    self.place(index, Err(e));
                }
                Ok(()) if self.batcher.is_full() => self
                    .shared
                    .submit_batch(self.batcher.take().expect("full batch")),
                Ok(()) => {}
            }
        }
        // About to wait: a partial batch must not sit here.
        if let Some(b) = self.batcher.take() {
            self.shared.submit_batch(b);
        }
    }

    fn next_result(&mut self) -> Option<Result<R, JobError>> {
        if self.closed {
            self.closed = false;
            self.input = None;
            return Some(Err(JobError::PoolClosed));
        }
        loop {
            let next = if self.ordered {
                match self.slots.front() {
                    Some(Some(_)) => self.slots.pop_front().flatten(),
                    _ => None,
                }
            } else {
                self.ready.pop_front()
            };
            if let Some(r) = next {
                self.yielded += 1;
                return Some(r);
            }
            self.fill();
            if self.pulled == self.yielded {
                self.bar.finish();
                return None;
            }
            let (base, outcome) = self.rx.recv().ok()?;
            let mut got = Vec::new();
            let n = unpack(
                base,
                outcome,
                Some(self.shared.prefault.spares()),
                self.shared.codec,
                |i, r| got.push((i, r)),
            );
            self.bar.inc(n);
            for (i, r) in got {
                self.place(i, r);
            }
            self.observe(n);
        }
    }
}

impl<I: Iterator, R> Drop for Stream<I, R> {
    fn drop(&mut self) {
        // Batches not yet sent are discarded by the supervisor, and items
        // that workers hold but have not started are taken back from them.
        self.batcher.sink.abandoned.store(true, Ordering::Relaxed);
        self.shared.recall_declined();
    }
}

/// Results of [`Pool::imap`](crate::Pool::imap), in input order.
pub struct Imap<I: Iterator, R>(Stream<I, R>);

/// Results of [`Pool::imap_unordered`](crate::Pool::imap_unordered), in the order they finish.
pub struct ImapUnordered<I: Iterator, R>(Stream<I, R>);

impl<I, R> Imap<I, R>
where
    I: Iterator,
    I::Item: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared>,
        f: Func<I::Item, R>,
        input: I,
        progress_bar: bool,
        queue: usize,
    ) -> Self {
        Imap(Stream::new(shared, f, input, true, progress_bar, queue))
    }
}

impl<I, R> ImapUnordered<I, R>
where
    I: Iterator,
    I::Item: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared>,
        f: Func<I::Item, R>,
        input: I,
        progress_bar: bool,
        queue: usize,
    ) -> Self {
        ImapUnordered(Stream::new(shared, f, input, false, progress_bar, queue))
    }
}

impl<I, R> Iterator for Imap<I, R>
where
    I: Iterator,
    I::Item: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Result<R, JobError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_result()
    }
}

impl<I, R> Iterator for ImapUnordered<I, R>
where
    I: Iterator,
    I::Item: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Result<R, JobError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_result()
    }
}

impl<I: Iterator, R> fmt::Debug for Imap<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &(self.0.pulled - self.0.yielded))
            .finish()
    }
}

impl<I: Iterator, R> fmt::Debug for ImapUnordered<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("in_flight", &(self.0.pulled - self.0.yielded))
            .finish()
    }
}
