//! Receiving from a worker: pulling its records out of the result ring
//! and handing them to the books.
//!
//! Records are copied out of shared memory before they are parsed, and the
//! reader validates each header (tag, length under the cap) before it
//! buffers a byte of body; a worker caught breaking the protocol is not
//! believed any further (`violate`). One call pulls at most [`MAX_PULL`]
//! bytes, so one busy worker cannot hold the supervisor.

use super::{Conn, Ctx};
use crate::metrics::fate::Fate;
use crate::sys::prefault::{self, Spares};
use crate::transport::bell;
use crate::transport::wire::{self, HEADER};
use std::os::fd::AsRawFd;

/// Copy at most this much from a worker's ring per pass, so one chatty
/// worker cannot starve the others.
const MAX_PULL: usize = 8 << 20;

/// Most room reserved for a batch's answers ahead of their arrival.
const ANSWERS_HINT_CAP: usize = 4 << 20;

impl Conn {
    /// Takes in everything the worker has published.
    pub(in crate::supervisor) fn pump_rx(&mut self, ctx: &mut Ctx<'_>) {
        if self.violated.is_some() {
            return;
        }
        // At most MAX_PULL bytes per call, so one busy worker cannot hold
        // the supervisor (and its other workers' rings) for long: every
        // step pumps every worker again, and nobody sleeps while bytes wait.
        let mut pulled = 0;
        let broken = loop {
            let avail = match self.rx.available() {
                Ok(a) => a,
                Err(_) => break Some("moved its result ring write position impossibly".into()),
            };
            let n = avail.min(MAX_PULL - pulled);
            let direct = self.pulls_direct(n);
            let take = if direct {
                n
            } else {
                self.big_record_alone(n, ctx.spares)
            };
            if take > 0 {
                self.promoted_at = None;
            }
            if direct {
                self.pull_direct(take, ctx);
            } else {
                self.pull(take);
            }
            pulled += take;
            if let Err(e) = self.parse(ctx) {
                break Some(e);
            }
            if take == avail || take == 0 || pulled >= MAX_PULL {
                break None;
            }
        };
        // The answers gathered before a violation are believed (see
        // `death.rs`): deliver them either way, so that the books' count of
        // what was answered is what the sinks got.
        self.book.flush_out(ctx);
        if let Some(why) = broken {
            self.violate(why);
        }
        self.tell_batch_time();
        // Items handed back were never run: they count against no task limit.
        let back = std::mem::take(&mut self.book.handed_back);
        if let Some(t) = &mut self.tasks_left {
            *t += back;
        }
    }

    /// Tells the sink of the last batch of several items answered in full
    /// how long its worker says it took (see `BatchTime`): per item, an
    /// estimate that, unlike the supervisor's own clock, excludes waiting
    /// to be woken.
    fn tell_batch_time(&mut self) {
        let Some((seq0, count, sink)) = self.book.finished.take() else {
            return;
        };
        if let Some(ns) = self.page().worker.batch_time.get(seq0) {
            sink.timed(ns / u64::from(count), u64::from(count));
        }
    }

    /// How much of the `n` available bytes to pull: all of them, unless
    /// the next record is big and the last answer of the front batch. Such
    /// a record is pulled alone, into a buffer of its size from the pool's
    /// stocks (already faulted in; the caller gives it back once decoded),
    /// and is then handed on whole. (Answers to a batch of several items
    /// are gathered into one buffer anyway.)
    #[inline]
    pub(super) fn big_record_alone(&mut self, n: usize, spares: &Spares) -> usize {
        // (A big record is written whole, or a ring's worth at a time.)
        if n < prefault::MIN
            || !self.reader.at_record_start()
            || self.book.out_count != 0
            || self
                .book
                .inflight
                .front()
                .is_none_or(|f| f.batch.count() != 1)
        {
            return n;
        }
        let mut len = [0u8; 4];
        self.rx.copy_out(0, &mut len);
        let len = u32::from_le_bytes(len);
        // Only a size hint: the reader checks the header once it is copied.
        let size = HEADER + len as usize;
        if size < prefault::MIN || len as u64 > self.reader.cap() {
            return n;
        }
        self.reader.reserve_with(size, |size| spares.take(size));
        n.min(size)
    }

    /// Whether `n` bytes can be pulled straight into the front batch's
    /// answers (`pull_direct`): nothing is left over in the reader, no kill
    /// is pending, and they are not one big record to pull alone.
    #[inline]
    fn pulls_direct(&self, n: usize) -> bool {
        n > 0
            && self.reader.at_record_start()
            && self.book.kill.is_none()
            && self.book.inflight.front().is_some_and(|f| {
                n < prefault::MIN || self.book.out_count != 0 || f.batch.count() != 1
            })
    }

    /// Copies `n` bytes out of the ring straight behind the front batch's
    /// answers received so far, then keeps the run of its answers they
    /// start with (checked there, in memory the worker cannot touch) and
    /// hands what follows — a control record, the next batch's answers, a
    /// record not yet whole — to the reader, for `parse`. Most answers
    /// are then copied once on this side, not twice.
    fn pull_direct(&mut self, n: usize, ctx: &mut Ctx<'_>) {
        let out = &mut self.book.out;
        let old = out.len();
        if old == 0 {
            // A batch's first answers: room for all of them at the last
            // answers' size, so the buffer is not grown (and its pages
            // touched) again and again. Only a hint, from bytes received.
            let front = self.book.inflight.front().expect("checked by pulls_direct");
            let left = (front.batch.count() - self.book.out_count) as usize;
            out.reserve(
                n.max(
                    left.saturating_mul(self.book.answer_bytes)
                        .min(ANSWERS_HINT_CAP),
                ),
            );
        }
        out.reserve(n);
        self.rx.copy_into(0, &mut out.spare_capacity_mut()[..n]);
        // SAFETY: `copy_into` initialised these n bytes of spare capacity.
        unsafe { out.set_len(old + n) };
        if self.rx.consume(n) {
            bell::ring(self.bell_to.as_raw_fd());
        }
        let front = self.book.inflight.front().expect("checked by pulls_direct");
        let want = front.batch.count() - self.book.out_count;
        // A bad first header keeps nothing here: the reader finds it again.
        let run = wire::scan_items(&out[old..], want, self.reader.cap()).unwrap_or_default();
        let kept = old + run.bytes;
        if kept < out.len() {
            self.reader.extend_from(&out[kept..]);
            out.truncate(kept);
        }
        if run.count == 0 {
            return;
        }
        let key = front.batch.tally;
        for (fate, n) in Fate::of_run(&run) {
            ctx.count(key, fate, n);
        }
        self.book.ran(u64::from(run.count), ctx);
        self.book.out_count += run.count;
        if run.count == want {
            self.book.flush_out(ctx);
        }
    }

    pub(super) fn pull(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let rx = &self.rx;
        self.reader.extend_with(n, |dst| rx.copy_into(0, dst));
        if self.rx.consume(n) {
            bell::ring(self.bell_to.as_raw_fd());
        }
    }

    /// Handles every complete record received.
    pub(super) fn parse(&mut self, ctx: &mut Ctx<'_>) -> Result<(), String> {
        loop {
            // Fast path: a run of answers for the front batch, copied at once.
            if self.book.kill.is_none()
                && let Some(front) = self.book.inflight.front()
            {
                let want = front.batch.count() - self.book.out_count;
                let run = self.reader.scan_items(want).map_err(|e| e.to_string())?;
                if run.count > 0 {
                    let key = front.batch.tally;
                    for (fate, n) in Fate::of_run(&run) {
                        ctx.count(key, fate, n);
                    }
                    self.book.ran(u64::from(run.count), ctx);
                    let whole = (self.book.out_count == 0 && run.count == want)
                        .then(|| self.reader.take_whole(run.bytes))
                        .flatten();
                    if let Some(buf) = whole {
                        // The answers of the whole front batch, and nothing
                        // else: hand the buffer on as it is.
                        self.book.out = buf;
                        self.book.out_count = run.count;
                        self.book.flush_out(ctx);
                        continue;
                    }
                    self.book.out.extend_from_slice(self.reader.take(run.bytes));
                    self.book.out_count += run.count;
                    if run.count == want {
                        self.book.flush_out(ctx);
                    }
                    continue;
                }
            }
            // Slow path, one record: control records, a killed item, errors.
            match self.reader.next() {
                Ok(Some(rec)) => self.book.on_record(rec, ctx)?,
                Ok(None) => {
                    // One big result must not pin its size for the
                    // worker's lifetime.
                    self.reader.release_idle();
                    return Ok(());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
