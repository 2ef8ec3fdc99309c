//! `map`: every item of an input, results in input order.
//!
//! `map` sends its input in about four batches per worker (up to 16384
//! items each; smaller toward the end of an input of known length, but
//! never below about 0.2 ms of work once its workers have said how long
//! items take — see [`sized`]), reading
//! it only as fast as workers take it: at most 4 MiB of encoded arguments
//! per worker are out (and at least two items per worker plus one). The
//! calling thread hands its batches to workers and takes their answers
//! itself while it waits (see `supervisor/drive.rs`), and decodes each
//! result straight into its slot of a result vector allocated up front.
//! Every item runs even if some fail; the lowest failing item is reported.

use super::batcher::{Batcher, HANDOFF_BYTES, refused, stream, unpack};
use super::progress_bar::Bar;
use crate::batch::outcome::decode_result;
use crate::batch::{Batch, Outcome};
use crate::client::shared::Shared;
use crate::error::{Error, JobError};
use crate::supervisor::{Deferring, Help};
use crate::sys::hugepage;
use crate::sys::prefault::{self, Spares};
use crate::transport::codec::Codec;
use crate::transport::wire;
use crate::worker::call::{Call, Func};
use crossbeam_channel::Receiver;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::mem::MaybeUninit;

/// How long `map` keeps helping without an answer coming in, before it
/// leaves the rest to the supervisor thread and sleeps.
const MAP_PATIENCE: std::time::Duration = std::time::Duration::from_millis(2);
/// Largest batch `map` chooses by itself.
const MAX_AUTO_CHUNK: usize = 16384;
/// Once it knows how long an item takes, `map` makes its batches at least
/// about this much work: below it, what a batch costs besides its items
/// (a frame, a step, often a wake-up) is no longer small beside them.
const MIN_BATCH_NS: u64 = 200_000;
/// Batches of fewer items than this are small: a supervisor step per such
/// batch (taking in, dispatching, reading every worker's ring) cost more
/// than the batch itself — with chunk size 1, a third of the caller's time.
const SMALL_BATCH: u32 = 16;
/// `map` steps the supervisor once every this many small batches (chunk
/// size 1, 2 workers: 1.36 M items/s stepping every batch, 1.68 every 2,
/// 1.83 every 4, 2.02 every 8, 2.07 every 16). The batches between wait
/// in the command queue; if the input stalls before the next step, the
/// supervisor thread takes them within about a millisecond (see
/// `supervisor::drive::Deferring`).
const STEP_EVERY: u32 = 8;

/// `map`'s batch size when the user did not choose one: a quarter per
/// worker of the `items` left, within bounds. Python applies this rule once
/// to the whole input; `map` applies it to what is left at every batch
/// (guided scheduling), so the last batches are small and no worker is left
/// finishing a big one alone.
pub(crate) fn auto_chunk(items: usize, workers: usize) -> usize {
    items.div_ceil(4 * workers).clamp(1, MAX_AUTO_CHUNK)
}

/// The next batch's size: `rule`'s, but at least [`MIN_BATCH_NS`] of work
/// once the time per item is known (`item_ns`, from the answers so far).
/// Guided chunks over many workers shrink toward single items; with tiny
/// items that made a million-item `map` on 256 workers thousands of
/// batches, each a frame and a wake-up for microseconds of work.
fn sized(rule: usize, item_ns: Option<u64>) -> usize {
    let floor = item_ns.map_or(1, |ns| (MIN_BATCH_NS / ns.max(1)) as usize);
    rule.max(floor).clamp(1, MAX_AUTO_CHUNK)
}

/// `Pool::map`: `f` over every item, results in input order, run by the
/// workers of queue `queue`; `progress_bar` draws a bar (see
/// `progress_bar.rs`).
pub(crate) fn map<A, R, I>(
    shared: &Shared,
    f: Func<A, R>,
    items: I,
    progress_bar: bool,
    queue: usize,
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
    let workers = shared.config.queues[queue].max_workers;
    let chunk = shared
        .config
        .chunk_size
        .unwrap_or_else(|| auto_chunk(estimate, workers));
    // Automatic chunks over an input of known length shrink toward its end;
    // any automatic chunk grows to a floor once items are timed.
    let auto = shared.config.chunk_size.is_none();
    let guided = auto && hi == Some(lo);
    let (sink, rx) = stream();
    let mut batcher = Batcher::new(
        shared,
        Call::new(f.ptr, shared.codec),
        f.name,
        sink,
        chunk,
        queue,
    );
    let mut out = Collector::with_capacity(estimate, Some(shared.prefault.spares()), shared.codec);
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
        deferring: None,
        sent_items: 0,
        unstepped: 0,
        refused: 0,
    };
    let mut sent = false;
    for item in input {
        let index = total;
        total += 1;
        match batcher.push(index, &item) {
            Err(e) => {
                if let Some(b) = batcher.take() {
                    flow.send(shared, b);
                }
                refused(shared, &e);
                flow.refused += 1;
                out.accept(index, Outcome::Failed { count: 1, error: e });
            }
            Ok(()) if batcher.is_full() => {
                flow.send(shared, batcher.take().expect("full batch"));
                sent = true;
                if auto {
                    // Chunks shrink as the input runs out (guided
                    // scheduling): the last ones are small, so no worker
                    // is left finishing a big chunk alone — but never
                    // below a floor of work per batch.
                    let rule = if guided {
                        auto_chunk(estimate.saturating_sub(total as usize), workers)
                    } else {
                        chunk
                    };
                    batcher.chunk = sized(rule, batcher.sink.item_ns()) as u32;
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
                // Waiting, the caller steps (and wakes the supervisor thread
                // when it leaves): the supervisor thread need not poll.
                flow.deferring = None;
                collect_until(shared, &rx, &mut out, &bar, flow.big, target);
            }
        }
    }
    if let Some(b) = batcher.take() {
        flow.send(shared, b);
    }
    drop(batcher);
    flow.deferring = None;
    collect_until(shared, &rx, &mut out, &bar, flow.big, total);
    bar.finish();
    out.finish(total)
}

/// How much of `map`'s input is out, to keep its arguments in flight within
/// a window (see [`Batcher::items_in_window`]): an input of any length is
/// read only as fast as workers take it, so memory holds the results and a
/// bounded slice of the arguments.
struct Flow<'d> {
    /// Held while small batches may wait for a step (see `STEP_EVERY`);
    /// dropped whenever the caller waits for answers, since it steps then,
    /// so that a long wait (a map of slow jobs) costs no polling.
    deferring: Option<Deferring<'d>>,
    /// Whether a batch went to the supervisor thread (see `HANDOFF_BYTES`).
    big: bool,
    sent_items: u64,
    /// Small batches sent since the last step.
    unstepped: u32,
    /// Items that failed before they could be sent (resolved at once).
    refused: u64,
}

impl<'d> Flow<'d> {
    /// Hands `batch` to the supervisor. Big batches go to the supervisor
    /// thread, which takes their ring copies; the caller steps the
    /// supervisor after other batches itself — after every few small ones
    /// (see `STEP_EVERY`).
    fn send(&mut self, shared: &'d Shared, mut batch: Batch) {
        self.sent_items += u64::from(batch.count());
        if batch.items().len() >= HANDOFF_BYTES {
            self.big = true;
            shared.submit(batch, false);
        } else if batch.count() < SMALL_BATCH {
            shared.submit(batch, true);
            self.unstepped += 1;
            if self.unstepped >= STEP_EVERY {
                self.unstepped = 0;
                shared.driver.step_once();
            } else if self.deferring.is_none() {
                self.deferring = Some(shared.driver.deferring());
            }
        } else {
            shared.submit(batch, true);
            self.unstepped = 0;
            shared.driver.step_once();
        }
    }

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
    /// The pool's codec: how results are encoded.
    codec: Codec,
    slots: Vec<MaybeUninit<R>>,
    filled: Vec<u64>,
    first_err: Option<(u64, JobError)>,
    resolved: u64,
}

impl<'p, R> Collector<'p, R> {
    fn with_capacity(n: usize, spares: Option<&'p Spares>, codec: Codec) -> Self {
        // A size hint is only a hint: never reserve more than 1 GiB on its
        // word (`slots` grows as results arrive anyway).
        let n = n.min((1 << 30) / std::mem::size_of::<R>().max(1));
        let slots = Vec::with_capacity(n);
        hugepage::advise(&slots);
        Collector {
            spares,
            codec,
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
            self.resolved += unpack(
                base,
                outcome,
                self.spares,
                self.codec,
                |i, r: Result<R, JobError>| {
                    if let Err(e) = r {
                        self.fail(i, e)
                    }
                },
            );
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
            let Some((decoded, used)) = next_result::<R>(rest, self.spares, self.codec) else {
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
    codec: Codec,
) -> Option<(Result<R, JobError>, usize)> {
    let h = rest.get(..wire::HEADER)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let body = rest.get(wire::HEADER..wire::HEADER + len)?;
    let decoded = if h[4] == wire::Tag::Ok as u8 {
        // Only a big result can hold a string big enough for the stocks;
        // small ones keep the plain decode.
        let decoded = if body.len() >= prefault::MIN {
            codec.decode_with::<R>(body, spares)
        } else {
            codec.decode::<R>(body)
        };
        decoded.map_err(|e| JobError::Codec(format!("result: {e}")))
    } else {
        match wire::records(&rest[..wire::HEADER + len]).next() {
            Some(rec) => decode_result::<R>(rec, spares, codec),
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

    /// Once items are timed, batches carry at least `MIN_BATCH_NS` of
    /// work (within the cap); before, and for slow items, the rule stands.
    #[test]
    fn timed_items_keep_batches_above_a_floor_of_work() {
        assert_eq!(sized(1, None), 1);
        assert_eq!(sized(977, None), 977);
        assert_eq!(sized(1, Some(10)), MAX_AUTO_CHUNK, "tiny items: the cap");
        assert_eq!(sized(1, Some(1_000)), 200);
        assert_eq!(sized(500, Some(1_000)), 500, "the rule when it is bigger");
        assert_eq!(sized(1, Some(10_000_000)), 1, "slow items: one at a time");
        assert_eq!(
            sized(3, Some(0)),
            MAX_AUTO_CHUNK,
            "a zero time is not a division by zero"
        );
        // A million tiny items on 256 workers: a few dozen batches once
        // timed, where the guided rule alone made thousands.
        let (mut left, mut batches) = (1_000_000usize, 0);
        while left > 0 {
            let c = sized(auto_chunk(left, 256), Some(8)).min(left);
            left -= c;
            batches += 1;
        }
        assert!(batches < 70, "{batches}");
    }

    /// The bitmap sweeps agree with bit-by-bit checks on unaligned ranges.
    #[test]
    fn range_sweeps_match_single_bits() {
        let mut c = Collector::<u64>::with_capacity(300, None, Codec::Bincode);
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
