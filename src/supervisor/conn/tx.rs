//! Sending to a worker: batch frames, the exit request, and the
//! handshake before the supervisor sleeps.
//!
//! A frame that fits the ring is written whole; a bigger one streams in
//! pieces as the worker makes room (`pump_tx`), and no other frame is sent
//! to that worker meanwhile. Writes become visible only when published;
//! `prepare_sleep` asks the worker to ring when it writes, or when there is
//! room for what waits to be sent.

use super::book::InFlight;
use super::{Conn, ExitRequest};
use crate::batch::Batch;
use crate::transport::bell;
use crate::transport::wire::{self, BATCH_HEADER, BatchHeader, HEADER, Tag};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

impl Conn {
    /// Sends `batch` at `now` (precise clock), or gives it back when the
    /// ring has no room for it.
    pub(in crate::supervisor) fn try_send(
        &mut self,
        mut batch: Batch,
        now: u64,
    ) -> Result<(), Batch> {
        let items_len = batch.items().len();
        let frame = HEADER + BATCH_HEADER + items_len;
        if frame <= self.tx.size() {
            // Back to the ring's start if there is room there: a ring then
            // touches only the pages it holds at once (see `ring.rs`).
            self.tx.wrap_to_start(frame);
        }
        let Ok(free) = self.tx.free() else {
            self.violate("moved its inbox read position impossibly");
            return Err(batch);
        };
        let fits = if frame <= self.tx.size() {
            free >= frame
        } else {
            free >= HEADER + BATCH_HEADER
        };
        if !fits {
            return Err(batch);
        }
        let count = batch.count();
        let mut flags = 0;
        if batch.opts.time_limit.is_some() || batch.opts.soft_time_limit.is_some() {
            flags |= wire::FLAG_TIMED;
        }
        if batch.opts.time_limit.is_some() || batch.job.is_some() {
            flags |= wire::FLAG_KILLABLE;
        }
        let mut slot = None;
        if let Some(id) = batch.job {
            let s = self.book.cancel_used.trailing_ones();
            debug_assert!(s < 64, "caller checked for a free cancel slot");
            self.book.cancel_used |= 1u64 << s;
            self.page().cancel[s as usize].queue(id.0);
            flags |= wire::FLAG_CANCELLABLE;
            slot = Some(s);
        }
        let head = BatchHeader {
            seq0: self.next_seq,
            count,
            flags,
            trampoline: batch.call.trampoline as u64,
            func: batch.call.func as u64,
            job_id: batch.job.map_or(0, |j| j.0),
            cancel_slot: slot.unwrap_or(0),
        }
        .encode(items_len);
        self.book.inflight.push_back(InFlight {
            batch,
            seq0: self.next_seq,
            head,
            slot,
            settled: false,
            sent_at: now,
            told_started: false,
            progress: None,
        });
        self.next_seq += u64::from(count);
        if let Some(t) = &mut self.tasks_left {
            *t = t.saturating_sub(u64::from(count));
        }
        self.streaming = Some(0);
        self.pump_tx();
        Ok(())
    }

    /// Takes back every item sent so far that the worker has not started:
    /// it hands them back (a `Returned` record) after the item in progress,
    /// and they come back to the supervisor through `Ctx::returned`. Does
    /// nothing when no item waits behind the one that may be running.
    pub(in crate::supervisor) fn recall(&mut self) {
        if self.next_seq > self.recalled_below && self.inflight_items() > 1 {
            self.page().recall.0.recall(self.next_seq);
            self.recalled_below = self.next_seq;
        }
    }

    /// The batches in flight, oldest first.
    pub(in crate::supervisor) fn in_flight(&self) -> impl Iterator<Item = &Batch> {
        self.book.inflight.iter().map(|f| &f.batch)
    }

    /// Asks the worker to exit once it has answered everything sent so far.
    pub(in crate::supervisor) fn request_exit(&mut self) {
        if self.exit == ExitRequest::None {
            self.exit = ExitRequest::Wanted;
            self.pump_tx();
        }
    }

    /// Writes as much of a streaming frame, or the exit frame, as fits.
    pub(in crate::supervisor) fn pump_tx(&mut self) {
        if let Some(mut w) = self.streaming {
            let Some(entry) = self.book.inflight.back_mut() else {
                self.streaming = None;
                return;
            };
            let head = entry.head;
            let items = entry.batch.items();
            let total = head.len() + items.len();
            while w < total {
                let free = match self.tx.free() {
                    Ok(0) => break,
                    Ok(f) => f,
                    Err(_) => break,
                };
                if w < head.len() {
                    let n = free.min(head.len() - w);
                    self.tx.put(&head[w..w + n]);
                    w += n;
                } else {
                    let off = w - head.len();
                    let n = free.min(items.len() - off);
                    self.tx.put(&items[off..off + n]);
                    w += n;
                }
            }
            self.streaming = (w < total).then_some(w);
        }
        if self.exit == ExitRequest::Wanted
            && self.streaming.is_none()
            && self.tx.free().is_ok_and(|f| f >= HEADER)
        {
            self.tx.put(&wire::header(Tag::Exit, 0));
            self.exit = ExitRequest::Sent;
        }
    }

    /// Makes what was written visible to the worker, waking it if it sleeps.
    /// Also records the CPU of the stepping thread, which the worker checks
    /// before it spins for its next frame (see `crate::sys::spin`).
    pub(in crate::supervisor) fn publish(&mut self, cpu: u32) {
        let driver_cpu = &self.page().driver_cpu.0;
        if driver_cpu.load(Ordering::Relaxed) != cpu {
            driver_cpu.store(cpu, Ordering::Relaxed);
        }
        if self.tx.publish() {
            bell::ring(self.bell_to.as_raw_fd());
        }
    }

    /// Prepares to sleep: asks the worker to ring when it writes, and when
    /// there is room for `room` bytes (0: no need). False when there is
    /// already something to do.
    pub(in crate::supervisor) fn prepare_sleep(&mut self, room: usize) -> bool {
        if self.dying() && self.violated.is_some() {
            return true;
        }
        match self.rx.prepare_sleep(1) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(_) => {
                self.violate("moved its result ring write position impossibly");
                return false;
            }
        }
        let Ok(free) = self.tx.free() else {
            self.violate("moved its inbox read position impossibly");
            return false;
        };
        // Something of ours still to write: free space means work, not sleep.
        let owed = if self.streaming.is_some() {
            1
        } else if self.exit == ExitRequest::Wanted {
            HEADER
        } else {
            0
        };
        if owed > 0 {
            return free < owed && self.tx.request_space(owed).unwrap_or(false);
        }
        // A batch waits for room here: be woken when there is.
        let room = room.min(self.tx.size());
        if room > free {
            return self.tx.request_space(room).unwrap_or(false);
        }
        true
    }

    /// After sleeping.
    pub(in crate::supervisor) fn awake(&self) {
        self.rx.awake();
    }
}
