//! The books of one worker: the batches sent to it, in order, and the
//! answers received for the front one.
//!
//! Items are numbered by a sequence the worker follows (`seq`); a batch in
//! flight knows the number of its first undelivered item, so the next
//! record always belongs to [`Book::first_undelivered`]. Answers for the
//! front batch are gathered and delivered together, and a batch leaves the
//! books once nothing of it is left.

use super::{Ctx, Kill};
use crate::batch::progress::Progress;
use crate::batch::{Batch, Sink};
use crate::control::events::EventKind;
use crate::metrics::fate::Fate;
use crate::transport::wire::{self, BATCH_HEADER, BatchHeader, HEADER, Record, Tag};
use std::collections::VecDeque;
use std::sync::Arc;

/// A batch sent to the worker.
pub(super) struct InFlight {
    pub(super) batch: Batch,
    /// Sequence number of the batch's first undelivered item.
    pub(super) seq0: u64,
    /// Frame header and batch header, kept for streaming large frames.
    pub(super) head: [u8; HEADER + BATCH_HEADER],
    pub(super) slot: Option<u32>,
    /// A single job resolved early — withdrawn by a cancellation or an
    /// expiry — so its outcome was delivered and counted: whatever becomes
    /// of the worker, it must not be charged, counted or requeued again.
    pub(super) settled: bool,
    /// Precise-clock instant it was sent: the worker starts it then, or
    /// when it answers the batch before it, whichever is later.
    pub(super) sent_at: u64,
    /// Its start was told to event subscribers (single jobs only).
    pub(super) told_started: bool,
    /// The progress last told.
    pub(super) progress: Option<Progress>,
}

/// The accounting side of a conn: batches in flight and answers received.
pub(super) struct Book {
    pub(super) inflight: VecDeque<InFlight>,
    /// Records received for the front batch, not yet delivered.
    pub(super) out: Vec<u8>,
    pub(super) out_count: u32,
    /// Bytes per answer of the last answers handed on, to size the next
    /// batch's buffer at once (`pull_direct`) instead of growing it.
    pub(super) answer_bytes: usize,
    pub(super) cancel_used: u64,
    pub(super) kill: Option<Kill>,
    /// The killed item answered anyway; its answer was dropped.
    pub(super) swallowed: bool,
    pub(super) ready: bool,
    pub(super) init_failed: Option<String>,
    pub(super) retiring: bool,
    /// Items handed back by the worker (`Returned`) since the conn last
    /// looked: they count against no task limit.
    pub(super) handed_back: u64,
    /// Precise-clock instant of the last answer received: the earliest
    /// the worker can have started the next item.
    pub(super) answered_at: u64,
    /// Items answered, in all.
    pub(super) answered: u64,
    /// The worker's pid (0 until the fork server reports it).
    pub(super) pid: u32,
    /// The last batch of several items answered in full: its first item's
    /// sequence number, its items and its sink, to be told how long the
    /// worker says it took (`Conn::tell_batch_time`).
    pub(super) finished: Option<(u64, u32, Arc<dyn Sink>)>,
}

impl Book {
    pub(super) fn first_undelivered(&self) -> Option<u64> {
        self.inflight
            .front()
            .map(|f| f.seq0 + u64::from(self.out_count))
    }

    /// Handles one record. Err means the worker broke the protocol.
    pub(super) fn on_record(&mut self, rec: Record<'_>, ctx: &mut Ctx<'_>) -> Result<(), String> {
        if !rec.tag.is_item() {
            match rec.tag {
                Tag::Ready if rec.body.len() == 4 => self.ready = true,
                Tag::InitFailed => {
                    self.init_failed = Some(String::from_utf8_lossy(rec.body).into_owned())
                }
                Tag::Retire => self.retiring = true,
                Tag::Returned if rec.body.len() == 4 => {
                    let n = u32::from_le_bytes(rec.body.try_into().expect("4 bytes"));
                    self.on_returned(n, ctx)?;
                }
                t => return Err(format!("malformed {t:?} record")),
            }
            return Ok(());
        }
        if self.swallowed {
            return Err("answered past an item it was killed over".into());
        }
        let seq = self
            .first_undelivered()
            .ok_or("a result with no job in flight")?;
        if let Some(k) = &self.kill
            && k.seq == seq
        {
            self.swallowed = true;
            return Ok(());
        }
        self.out
            .extend_from_slice(&wire::header(rec.tag, rec.body.len() as u32));
        self.out.extend_from_slice(rec.body);
        self.out_count += 1;
        if let (Some(fate), Some(front)) = (Fate::of_tag(rec.tag), self.inflight.front()) {
            ctx.count(front.batch.tally, fate, 1);
            self.ran(1, ctx);
        }
        if self
            .inflight
            .front()
            .is_some_and(|f| f.batch.count() == self.out_count)
        {
            self.flush_out(ctx);
        }
        Ok(())
    }

    /// `n` answers of the front batch came: records how long they waited
    /// and ran. The worker runs one item at a time, so they started when
    /// the batch was sent or the worker last answered, whichever is later
    /// (for the first of them: the rest waited behind it), and ran until
    /// now — shared evenly among them.
    pub(super) fn ran(&mut self, n: u64, ctx: &mut Ctx<'_>) {
        let Some(front) = self.inflight.front() else {
            return;
        };
        let now = ctx.clock.precise();
        let started = front.sent_at.max(self.answered_at);
        let each = now.saturating_sub(started) / n.max(1);
        let key = front.batch.tally;
        let waited = started.saturating_sub(front.batch.since);
        ctx.tallies.timed(key, waited, each, n);
        if let Some(id) = front.batch.job
            && !front.told_started
            && ctx.events.watching()
        {
            // Started and answered between two looks: told now, stamped
            // with when it started.
            let ago = std::time::Duration::from_nanos(now.saturating_sub(started));
            let wall = std::time::SystemTime::now();
            ctx.events.publish_at(
                wall.checked_sub(ago).unwrap_or(wall),
                EventKind::Started {
                    id,
                    function: front.batch.name,
                    worker_pid: self.pid,
                    attempt: front.batch.sink.attempt(),
                },
            );
        }
        self.answered_at = now;
        self.answered += n;
    }

    /// The worker handed back, unstarted, the next `n` items of the front
    /// batch (a recall): the answers before them are delivered, and they go
    /// back to the supervisor to be queued again where they were — unless
    /// the job was withdrawn meanwhile (cancelled, expired), which settled
    /// it already.
    fn on_returned(&mut self, n: u32, ctx: &mut Ctx<'_>) -> Result<(), String> {
        if self.swallowed {
            return Err("handed back items past one it was killed over".into());
        }
        let first = self
            .first_undelivered()
            .ok_or("handed back items with nothing in flight")?;
        if self.kill.as_ref().is_some_and(|k| k.seq == first) {
            return Err("handed back an item it was killed over".into());
        }
        let left = self.inflight.front().map_or(0, |f| f.batch.count()) - self.out_count;
        if n == 0 || n > left {
            return Err(format!("handed back {n} items of {left}"));
        }
        self.flush_out(ctx);
        let front = self.inflight.front_mut().expect("items are left");
        let mut back = front.batch.split_front(n);
        front.seq0 += u64::from(n);
        self.handed_back += u64::from(n);
        if front.settled {
            back.forget(n);
        } else {
            ctx.returned.push(back);
        }
        self.pop_finished(ctx);
        Ok(())
    }

    /// Delivers the records received for the front batch.
    pub(super) fn flush_out(&mut self, ctx: &mut Ctx<'_>) {
        if self.out_count == 0 {
            return;
        }
        let front = self
            .inflight
            .front_mut()
            .expect("records belong to a batch");
        self.answer_bytes = self.out.len() / self.out_count as usize;
        front
            .batch
            .deliver_records(self.out_count, std::mem::take(&mut self.out));
        front.seq0 += u64::from(self.out_count);
        self.out_count = 0;
        self.pop_finished(ctx);
    }

    /// Drops the front batch if nothing of it is left.
    pub(super) fn pop_finished(&mut self, ctx: &mut Ctx<'_>) {
        if self.inflight.front().is_some_and(|f| f.batch.count() == 0) {
            let done = self.inflight.pop_front().expect("front exists");
            if let Some(h) = BatchHeader::decode(&done.head[HEADER..])
                && h.count > 1
            {
                self.finished = Some((h.seq0, h.count, done.batch.sink.clone()));
            }
            if let Some(slot) = done.slot {
                self.cancel_used &= !(1u64 << slot);
            }
            if let Some(id) = done.batch.job {
                ctx.done_jobs.push(id);
            }
        }
    }
}
