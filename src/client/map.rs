//! Many items of one function: `map`, `imap` and `imap_unordered`.
//!
//! Items are encoded on the caller's thread into batches of consecutive
//! items, each sent to the supervisor as soon as it is full, so workers
//! start while the input is still being read. Results come back per batch
//! through a channel and are decoded on the caller's thread, too.
//!
//! `map` sends its input in about four batches per worker (up to 16384
//! items each), reading it only as fast as workers take it: at most 4 MiB
//! of encoded arguments per worker are out (and at least two items per
//! worker plus one). The `imap`s read lazily: they keep at most a window of
//! items in flight (4096 at most, and within the same byte window) and pull
//! more input only as results are taken, so an endless input runs in flat
//! memory; they start with one item per batch and, unless the user fixed
//! the batch size, grow batches while items prove quick.

use crate::batch::outcome::decode_result;
use crate::batch::{Batch, JobOpts, Outcome, Sink};
use crate::client::progress_bar::Bar;
use crate::client::shared::Shared;
use crate::error::{Error, JobError};
use crate::supervisor::Help;
use crate::sys::hugepage;
use crate::sys::prefault::{self, Spares};
use crate::transport::codec;
use crate::transport::wire;
use crate::worker::call::Call;
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt;
use std::iter::Fuse;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Close a batch once its encoded items reach this size.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long `map` keeps helping without an answer coming in, before it
/// leaves the rest to the supervisor thread and sleeps.
const MAP_PATIENCE: std::time::Duration = std::time::Duration::from_millis(2);
/// A batch at least this big is left to the supervisor thread: copying it
/// into a ring (and its answers out) then runs beside the calling thread,
/// which encodes and decodes. Smaller batches are cheaper driven by the
/// caller itself (see `map`). Above `MAX_BATCH_BYTES`, so only big items
/// ever cross it.
const HANDOFF_BYTES: usize = 512 << 10;
/// Argument bytes `map` keeps in flight per worker at most (with a floor
/// in items, see `Flow`): two rings' worth.
const IN_FLIGHT_PER_WORKER: usize = 4 << 20;

/// Largest batch `map` chooses by itself.
const MAX_AUTO_CHUNK: usize = 16384;
/// Largest batch the `imap`s choose by themselves, and most items they keep
/// in flight.
const MAX_IMAP_CHUNK: usize = 512;
const MAX_IMAP_WINDOW: u64 = 4096;
/// The `imap`s size batches to about this much work each.
const IMAP_BATCH_NS: f64 = 200_000.0;

/// Receives the outcomes of a map's batches.
pub(crate) struct StreamSink {
    tx: Sender<(u64, Outcome)>,
    abandoned: AtomicBool,
}

impl Sink for StreamSink {
    fn deliver(&self, base: u64, outcome: Outcome) {
        let _ = self.tx.send((base, outcome));
    }

    fn claim(&self) -> bool {
        !self.abandoned.load(Ordering::Relaxed)
    }
}

fn stream() -> (Arc<StreamSink>, Receiver<(u64, Outcome)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Arc::new(StreamSink {
            tx,
            abandoned: AtomicBool::new(false),
        }),
        rx,
    )
}

/// `map`'s batch size when the user did not choose one: a quarter per
/// worker of the `items` left, within bounds. Python applies this rule once
/// to the whole input; `map` applies it to what is left at every batch
/// (guided scheduling), so the last batches are small and no worker is left
/// finishing a big one alone.
fn auto_chunk(items: usize, workers: usize) -> usize {
    items.div_ceil(4 * workers).clamp(1, MAX_AUTO_CHUNK)
}

/// Groups consecutive items into batches.
struct Batcher {
    call: Call,
    sink: Arc<StreamSink>,
    opts: JobOpts,
    chunk: u32,
    cap: u64,
    items: Vec<u8>,
    count: u32,
    base: u64,
    /// Big argument buffers come from and go back to the pool's stocks.
    spares: Spares,
    /// Bytes of the last batch, the size expected of the next.
    last_bytes: usize,
    /// Items of the batches taken so far, and their bytes.
    pushed_items: u64,
    pushed_bytes: u64,
}

impl Batcher {
    fn new(shared: &Shared, call: Call, sink: Arc<StreamSink>, chunk: usize) -> Batcher {
        let config = &shared.config;
        Batcher {
            call,
            sink,
            opts: JobOpts::limits(config),
            chunk: chunk.clamp(1, u32::MAX as usize) as u32,
            cap: config.worker.max_message_size,
            items: Vec::new(),
            count: 0,
            base: 0,
            spares: shared.prefault.spares().clone(),
            last_bytes: 0,
            pushed_items: 0,
            pushed_bytes: 0,
        }
    }

    /// Adds item number `index`, which must follow the batch's last one
    /// (after a failed push, call [`take`](Self::take) first).
    fn push<A: Serialize>(&mut self, index: u64, item: &A) -> Result<(), JobError> {
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
        let len = wire::push_item(&mut self.items, |v| codec::encode_into(v, item))
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
    fn items_in_window(&self, workers: usize) -> u64 {
        let window = IN_FLIGHT_PER_WORKER.saturating_mul(workers) as u64;
        let avg = (self.pushed_bytes / self.pushed_items.max(1)).max(1);
        (window / avg).max(2 * workers as u64 + 1)
    }

    fn is_full(&self) -> bool {
        self.count >= self.chunk || self.items.len() >= MAX_BATCH_BYTES
    }

    fn take(&mut self) -> Option<Batch> {
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
        if big {
            batch.recycle = Some(self.spares.clone());
        }
        self.count = 0;
        Some(batch)
    }
}

/// Counts an item that failed before it could be sent.
fn refused(shared: &Shared, error: &JobError) {
    let c = &shared.counters;
    c.submitted.fetch_add(1, Ordering::Relaxed);
    c.count_error(error, 1);
}

/// Decodes one delivery into `(index, result)` pairs.
fn unpack<R: DeserializeOwned>(
    base: u64,
    outcome: Outcome,
    spares: Option<&Spares>,
    mut each: impl FnMut(u64, Result<R, JobError>),
) -> u64 {
    match outcome {
        Outcome::Records { count, buf } => {
            for (i, rec) in wire::records(&buf).enumerate() {
                each(base + i as u64, decode_result(rec, spares));
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

/// `Pool::map`: `f` over every item, results in input order; `progress_bar`
/// draws a bar (see `progress_bar.rs`).
pub(crate) fn map<A, R, I>(
    shared: &Shared,
    f: fn(A) -> R,
    items: I,
    progress_bar: bool,
) -> Result<Vec<R>, Error>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: IntoIterator<Item = A>,
{
    if shared.is_closed() {
        return Err(Error::PoolClosed);
    }
    let input = items.into_iter();
    let (lo, hi) = input.size_hint();
    let estimate = hi.unwrap_or(lo).max(lo);
    let workers = shared.config.workers;
    let chunk = shared
        .config
        .chunk_size
        .unwrap_or_else(|| auto_chunk(estimate, workers));
    // Automatic chunks over an input of known length shrink toward its end.
    let guided = shared.config.chunk_size.is_none() && hi == Some(lo);
    let (sink, rx) = stream();
    let mut batcher = Batcher::new(shared, Call::new(f), sink, chunk);
    let mut out = Collector::with_capacity(estimate, Some(shared.prefault.spares()));
    let bar = Bar::new(progress_bar, (hi == Some(lo)).then_some(lo as u64));
    let mut total = 0u64;
    // The calling thread hands its batches to workers and takes their
    // answers itself (see `supervisor::drive`): the bytes then cross
    // between cores once each way instead of twice, and the supervisor
    // thread can sleep through the map. Big items are the exception: there
    // copying dominates, and the supervisor thread takes the ring copies
    // while the caller encodes and decodes (1 MiB payloads, A/B: +4-20%).
    let mut flow = Flow {
        big: false,
        sent_items: 0,
        refused: 0,
    };
    let send = |flow: &mut Flow, mut batch: Batch| {
        flow.sent_items += u64::from(batch.count());
        if batch.items().len() >= HANDOFF_BYTES {
            flow.big = true;
            shared.submit(batch, false);
        } else {
            shared.submit(batch, true);
            shared.driver.step_once();
        }
    };
    let mut sent = false;
    for item in input {
        let index = total;
        total += 1;
        match batcher.push(index, &item) {
            Err(e) => {
                if let Some(b) = batcher.take() {
                    send(&mut flow, b);
                }
                refused(shared, &e);
                flow.refused += 1;
                out.accept(index, Outcome::Failed { count: 1, error: e });
            }
            Ok(()) if batcher.is_full() => {
                send(&mut flow, batcher.take().expect("full batch"));
                sent = true;
                if guided {
                    // Chunks shrink as the input runs out (guided
                    // scheduling): the last ones are small, so no worker
                    // is left finishing a big chunk alone.
                    let left = estimate.saturating_sub(total as usize);
                    batcher.chunk = auto_chunk(left, workers) as u32;
                }
            }
            Ok(()) => {}
        }
        // Decode what came back while the input is still being read, and
        // read no further while too many arguments are out.
        if sent {
            sent = false;
            while let Ok((base, outcome)) = rx.try_recv() {
                out.accept(base, outcome);
            }
            bar.set(out.resolved);
            let allowed = batcher.items_in_window(workers);
            if let Some(target) = flow.must_wait_for(out.resolved, allowed) {
                collect_until(shared, &rx, &mut out, &bar, flow.big, target);
            }
        }
    }
    if let Some(b) = batcher.take() {
        send(&mut flow, b);
    }
    drop(batcher);
    collect_until(shared, &rx, &mut out, &bar, flow.big, total);
    bar.finish();
    out.finish(total)
}

/// How much of `map`'s input is out, to keep its arguments in flight within
/// a window (see [`Batcher::items_in_window`]): an input of any length is
/// read only as fast as workers take it, so memory holds the results and a
/// bounded slice of the arguments.
struct Flow {
    /// Whether a batch went to the supervisor thread (see `HANDOFF_BYTES`).
    big: bool,
    sent_items: u64,
    /// Items that failed before they could be sent (resolved at once).
    refused: u64,
}

impl Flow {
    /// The number of resolved items to wait for, if more than `allowed`
    /// items are out.
    fn must_wait_for(&self, resolved: u64, allowed: u64) -> Option<u64> {
        // Saturating: were an item ever counted twice, map must not wait
        // for answers that cannot come.
        let answered = resolved.saturating_sub(self.refused);
        let out = self.sent_items.saturating_sub(answered);
        (out > allowed).then(|| resolved + (out - allowed))
    }
}

/// Takes answers until at least `target` items of the map have resolved.
fn collect_until<R: DeserializeOwned>(
    shared: &Shared,
    rx: &Receiver<(u64, Outcome)>,
    out: &mut Collector<'_, R>,
    bar: &Bar,
    big: bool,
    target: u64,
) {
    while out.resolved < target {
        while let Ok((base, outcome)) = rx.try_recv() {
            out.accept(base, outcome);
        }
        if out.resolved >= target {
            break;
        }
        // Keep stepping while answers keep coming; leave (and maybe wake
        // the supervisor thread) once.
        if big {
            // No help with big items; but the caller may have stepped the
            // supervisor for small ones (`step_once`), which leaves its
            // thread unannounced: hand over before blocking.
            shared.driver.hand_over();
        } else {
            shared.driver.help_while(MAP_PATIENCE, &mut || {
                let before = out.resolved;
                while let Ok((base, outcome)) = rx.try_recv() {
                    out.accept(base, outcome);
                }
                bar.set(out.resolved);
                match out.resolved {
                    n if n >= target => Help::Done,
                    n if n > before => Help::Progress,
                    _ => Help::Idle,
                }
            });
        }
        if out.resolved >= target {
            break;
        }
        // Every batch resolves exactly once (see `batch`), so this ends.
        let Ok((base, outcome)) = rx.recv() else {
            break;
        };
        out.accept(base, outcome);
        bar.set(out.resolved);
    }
    bar.set(out.resolved);
}

/// `map`'s results as they arrive, and its lowest failure.
///
/// Results land in place, in any order: each index is delivered exactly
/// once, and a bitmap records which slots hold a value.
struct Collector<'p, R> {
    /// The pool's stock of faulted-in buffers, for big byte strings.
    spares: Option<&'p Spares>,
    slots: Vec<MaybeUninit<R>>,
    filled: Vec<u64>,
    first_err: Option<(u64, JobError)>,
    resolved: u64,
}

impl<'p, R> Collector<'p, R> {
    fn with_capacity(n: usize, spares: Option<&'p Spares>) -> Self {
        // A size hint is only a hint: never reserve more than 1 GiB on its
        // word (`slots` grows as results arrive anyway).
        let n = n.min((1 << 30) / std::mem::size_of::<R>().max(1));
        let slots = Vec::with_capacity(n);
        hugepage::advise(&slots);
        Collector {
            spares,
            slots,
            filled: Vec::new(),
            first_err: None,
            resolved: 0,
        }
    }

    fn is_filled(&self, i: usize) -> bool {
        self.filled
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether any slot in `lo..hi` is filled.
    fn any_filled(&self, lo: usize, hi: usize) -> bool {
        let mut i = lo;
        while i < hi {
            let n = (64 - i % 64).min(hi - i);
            let word = self.filled.get(i / 64).copied().unwrap_or(0);
            if (word >> (i % 64)) & mask(n) != 0 {
                return true;
            }
            i += n;
        }
        false
    }

    /// Whether slots `0..n` are all filled, a word at a time.
    fn all_filled(&self, n: usize) -> bool {
        let (full, rest) = (n / 64, n % 64);
        self.filled.len() >= n.div_ceil(64)
            && self.filled[..full].iter().all(|&w| w == u64::MAX)
            && (rest == 0 || self.filled[full] & mask(rest) == mask(rest))
    }

    /// Marks slots `lo..hi` filled.
    fn fill_range(&mut self, lo: usize, hi: usize) {
        let mut i = lo;
        while i < hi {
            let n = (64 - i % 64).min(hi - i);
            self.filled[i / 64] |= mask(n) << (i % 64);
            i += n;
        }
    }

    fn fail(&mut self, i: u64, error: JobError) {
        if self.first_err.as_ref().is_none_or(|(j, _)| i < *j) {
            self.first_err = Some((i, error));
        }
    }

    fn finish(mut self, total: u64) -> Result<Vec<R>, Error> {
        if let Some((index, error)) = self.first_err.take() {
            return Err(Error::Job {
                index: index as usize,
                error,
            });
        }
        let total = total as usize;
        if self.slots.len() != total || !self.all_filled(total) {
            // Cannot happen either (every item resolves); refuse rather than
            // hand out uninitialised values.
            let missing = (0..total).find(|&i| !self.is_filled(i)).unwrap_or(total);
            return Err(Error::Job {
                index: missing,
                error: JobError::Cancelled,
            });
        }
        let slots = std::mem::take(&mut self.slots);
        self.filled.clear();
        let mut slots = std::mem::ManuallyDrop::new(slots);
        // SAFETY: every one of the `total` slots was written (checked just
        // above), and MaybeUninit<R> has the layout of R, so the buffer is a
        // valid Vec<R> of the same length and capacity.
        Ok(unsafe {
            Vec::from_raw_parts(
                slots.as_mut_ptr().cast::<R>(),
                slots.len(),
                slots.capacity(),
            )
        })
    }
}

impl<R: DeserializeOwned> Collector<'_, R> {
    fn accept(&mut self, base: u64, outcome: Outcome) {
        let Outcome::Records { count, buf } = outcome else {
            self.resolved += unpack(base, outcome, self.spares, |i, r: Result<R, JobError>| {
                if let Err(e) = r {
                    self.fail(i, e)
                }
            });
            return;
        };
        // The hot loop of `map`: decode each record straight into its slot.
        // The supervisor validated the records; a short buffer still just
        // ends the loop (the missing items stay unresolved: `finish` says so).
        let first = base as usize;
        let end = first + count as usize;
        if self.slots.len() < end {
            self.slots.resize_with(end, MaybeUninit::uninit);
            self.filled.resize(end.div_ceil(64), 0);
        }
        let mut rest = &buf[..];
        // Every index is delivered once, so the range is normally empty and
        // its bits are set in one sweep afterwards; otherwise each item is
        // checked, so that a value is never overwritten.
        let fresh = !self.any_filled(first, end);
        let mut holes = Vec::new();
        let mut i = first;
        while i < end {
            let Some((decoded, used)) = next_result::<R>(rest, self.spares) else {
                break;
            };
            rest = &rest[used..];
            match decoded {
                Ok(_) if !fresh && self.is_filled(i) => {
                    debug_assert!(false, "item {i} delivered twice");
                }
                Ok(v) => {
                    self.slots[i].write(v);
                    if !fresh {
                        self.filled[i / 64] |= 1 << (i % 64);
                    }
                }
                Err(e) => {
                    self.fail(i as u64, e);
                    holes.push(i);
                }
            }
            i += 1;
        }
        if fresh {
            self.fill_range(first, i);
            for h in holes {
                self.filled[h / 64] &= !(1 << (h % 64));
            }
        }
        self.resolved += u64::from(count);
        if let Some(spares) = self.spares {
            spares.give(buf);
        }
    }
}

/// The low `n` bits (1 <= n <= 64).
fn mask(n: usize) -> u64 {
    u64::MAX >> (64 - n)
}

/// Decodes the record at the start of `rest`: its result and its size, or
/// None if `rest` does not hold a whole record.
#[inline]
fn next_result<R: DeserializeOwned>(
    rest: &[u8],
    spares: Option<&Spares>,
) -> Option<(Result<R, JobError>, usize)> {
    let h = rest.get(..wire::HEADER)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let body = rest.get(wire::HEADER..wire::HEADER + len)?;
    let decoded = if h[4] == wire::Tag::Ok as u8 {
        // Only a big result can hold a string big enough for the stocks;
        // small ones keep the plain decode.
        let decoded = if body.len() >= prefault::MIN {
            codec::decode_with::<R>(body, spares)
        } else {
            codec::decode::<R>(body)
        };
        decoded.map_err(|e| JobError::Codec(format!("result: {e}")))
    } else {
        match wire::records(&rest[..wire::HEADER + len]).next() {
            Some(rec) => decode_result::<R>(rec, spares),
            None => Err(JobError::Codec("malformed record".into())),
        }
    };
    Some((decoded, wire::HEADER + len))
}

impl<R> Drop for Collector<'_, R> {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            if self.is_filled(i) {
                // SAFETY: the bitmap says slot i holds a value not yet moved out.
                unsafe { self.slots[i].assume_init_drop() };
            }
        }
    }
}

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
        f: fn(I::Item) -> R,
        input: I,
        ordered: bool,
        progress_bar: bool,
    ) -> Self {
        let config = &shared.config;
        let chunk = config.chunk_size.unwrap_or(1);
        let workers = config.workers;
        let window = Self::window_for(workers, chunk);
        let auto_chunk = config.chunk_size.is_none();
        let (sink, rx) = stream();
        let batcher = Batcher::new(&shared, Call::new(f), sink, chunk);
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
        // Batches not yet started are discarded by the supervisor.
        self.batcher.sink.abandoned.store(true, Ordering::Relaxed);
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
        f: fn(I::Item) -> R,
        input: I,
        progress_bar: bool,
    ) -> Self {
        Imap(Stream::new(shared, f, input, true, progress_bar))
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
        f: fn(I::Item) -> R,
        input: I,
        progress_bar: bool,
    ) -> Self {
        ImapUnordered(Stream::new(shared, f, input, false, progress_bar))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Guided chunks: as `map` sends batches, each is a quarter per worker
    /// of what is left (at most MAX_AUTO_CHUNK), so they shrink to single
    /// items at the end and cover the input exactly.
    #[test]
    fn guided_chunks_shrink_toward_the_end() {
        for (n, workers) in [(20_000, 2), (1_000_000, 2), (7, 4), (100, 1)] {
            let (mut left, mut sizes) = (n, Vec::new());
            while left > 0 {
                let c = auto_chunk(left, workers).min(left);
                sizes.push(c);
                left -= c;
            }
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            assert_eq!(*sizes.last().unwrap(), 1);
            assert!(sizes[0] <= MAX_AUTO_CHUNK);
            // Not too many batches: about 4 * workers * ln(n) past the cap.
            assert!(
                sizes.len() < n / MAX_AUTO_CHUNK + 4 * workers * 20,
                "{}",
                sizes.len()
            );
        }
    }

    /// The bitmap sweeps agree with bit-by-bit checks on unaligned ranges.
    #[test]
    fn range_sweeps_match_single_bits() {
        let mut c = Collector::<u64>::with_capacity(300, None);
        c.filled.resize(5, 0);
        c.fill_range(3, 70);
        c.fill_range(130, 131);
        c.fill_range(191, 257);
        let want = |i: usize| (3..70).contains(&i) || i == 130 || (191..257).contains(&i);
        for i in 0..320 {
            assert_eq!(c.is_filled(i), want(i), "bit {i}");
        }
        for (lo, hi) in [
            (0, 3),
            (70, 130),
            (131, 191),
            (257, 320),
            (0, 300),
            (69, 70),
            (60, 200),
        ] {
            assert_eq!(c.any_filled(lo, hi), (lo..hi).any(want), "{lo}..{hi}");
        }
        assert!(!c.all_filled(10) && c.all_filled(0));
        c.fill_range(0, 3);
        assert!(c.all_filled(70) && c.all_filled(64) && c.all_filled(1));
        assert!(!c.all_filled(71) && !c.all_filled(128) && !c.all_filled(400));
        // Nothing was written to the slots: forget the bits before Drop.
        c.filled.clear();
    }
}
