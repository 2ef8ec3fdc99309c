//! Running one batch in a worker.
//!
//! For every item the worker first publishes in its status page which item
//! it is on (`ItemWord::start`, and the start time for a timed batch),
//! runs it — the job's shim decodes, calls and encodes, inlined in
//! [`BatchRun::drive`] — writes the item's record, *commits* it to the
//! result ring, and only then marks the item done. A crash at any point
//! therefore leaves the supervisor a committed record for every item that
//! finished and a status word naming the one that was running.
//!
//! For a killable item, "done" is a compare-and-swap `RUNNING → DONE`
//! against the supervisor's `RUNNING → KILL`: whoever wins decides. A
//! worker that loses waits for its SIGKILL instead of starting another
//! item, so a kill never hits an innocent item.
//!
//! The whole batch runs under one unwind guard; a panicking item is
//! answered with a `Panic` record and the batch resumes after it.
//!
//! Before each item the worker also looks at the status page's recall word
//! (one relaxed load): items the supervisor took back are handed back
//! unstarted, in one `Returned` record, instead of run. That is what lets
//! a higher-priority job wait for at most the item in progress, even
//! behind a batch of thousands of `map` items.

use super::call::{Call, RawCall};
use super::current;
use super::fds::WORKER_BELL_OUT;
use super::out::Out;
use super::panic::guarded;
use super::run::{EXIT_PROTOCOL, Worker, exit};
use crate::sys::clock;
use crate::transport::bell;
use crate::transport::ring::Consumer;
use crate::transport::wire::{self, BatchHeader, HEADER, Items, Tag};
use std::sync::atomic::Ordering;

/// A batch being run: what is left of it, and which item's user code is
/// running (so that a panic can be charged to it).
struct Running<'a> {
    shim: RawCall,
    header: BatchHeader,
    items: Items<'a>,
    left: u32,
    current: Option<u64>,
    /// Inbox bytes of the frame, still to be released once its last
    /// argument is decoded (`None` once released, or for a frame that was
    /// copied out of the ring).
    frame: Option<usize>,
    /// When a batch of several items started (precise clock), to tell the
    /// supervisor how long it took (`WorkerStatus::batch_time`); 0 for a
    /// single item.
    started: u64,
}

impl Worker {
    /// Runs a batch; returns the inbox bytes of its frame if they are still
    /// to be released.
    pub(super) fn run_batch(&mut self, body: &[u8], frame: Option<usize>) -> Option<usize> {
        let Some(h) = BatchHeader::decode(body) else {
            exit(EXIT_PROTOCOL)
        };
        if h.seq0 != self.next_seq || h.cancel_slot as usize >= self.page.cancel.len() {
            exit(EXIT_PROTOCOL);
        }
        // The batch's records go back to the outbox's start if the last
        // batch's worth of room is free there, so that the ring touches
        // only the pages it holds at once (see `transport::ring`).
        let need = self.answer_bytes.clamp(4096, self.outbox.size() / 2);
        self.outbox.wrap_to_start(need);
        let start = self.outbox.position();
        let mut batch = Running {
            // SAFETY: the trampoline address comes from Call::new in the
            // caller, of which this process is a fork.
            shim: unsafe { Call::shim(h.trampoline as usize) },
            header: h,
            items: Items::new(&body[wire::BATCH_HEADER..]),
            left: h.count,
            current: None,
            frame,
            started: if h.count > 1 { clock::precise_ns() } else { 0 },
        };
        // The whole batch runs under one unwind guard (cheaper than one per
        // item); when an item panics, it is answered and the loop resumes
        // with the next one.
        while batch.left > 0 {
            let (shim, func) = (batch.shim, h.func as usize);
            // SAFETY: shim and func were paired by a Call constructor.
            let outcome = guarded(|| unsafe {
                shim(
                    func,
                    &mut BatchRun {
                        w: self,
                        b: &mut batch,
                    },
                )
            });
            if let Err(text) = outcome {
                let Some(seq) = batch.current.take() else {
                    // A panic outside user code is a bug of ours.
                    exit(EXIT_PROTOCOL)
                };
                let mut out = std::mem::take(&mut self.scratch);
                out.clear();
                out.extend_from_slice(text.as_bytes());
                self.record(Tag::Panic, &out);
                self.scratch = out;
                self.finish(seq, h.flags);
                batch.left -= 1;
            }
        }
        current::set_timed_item(0);
        self.answer_bytes = (self.outbox.position() - start) as usize;
        batch.frame
    }

    /// Hands the next `n` items of `batch` back unstarted, as the
    /// supervisor's recall asks: one `Returned` record for all of them,
    /// committed like an answer, and the input frame released if they were
    /// the batch's last. Their status word is never set: they did not
    /// start, so a death from here on requeues them too.
    #[cold]
    #[inline(never)]
    fn hand_back(&mut self, batch: &mut Running<'_>, n: u32) {
        for _ in 0..n {
            if batch.items.next().is_none() {
                exit(EXIT_PROTOCOL);
            }
        }
        self.record(Tag::Returned, &n.to_le_bytes());
        self.outbox.commit();
        self.next_seq += u64::from(n);
        batch.left -= n;
        if batch.left == 0
            && let Some(bytes) = batch.frame.take()
        {
            self.consume(bytes);
        }
        if self.outbox.consumer_asleep() {
            self.flush();
        }
    }

    /// Marks item `seq` done: its record is committed first, so a crash
    /// from here on cannot lose it. If the supervisor claimed the item first
    /// (to kill this worker over it), wait for the kill rather than run
    /// anything else.
    #[inline]
    fn finish(&mut self, seq: u64, flags: u32) {
        self.outbox.commit();
        let status = &self.page.worker;
        if flags & wire::FLAG_KILLABLE != 0 {
            if status.current.finish(seq).is_err() {
                loop {
                    // SAFETY: pause just waits for a signal; SIGKILL is coming.
                    unsafe { libc::pause() };
                }
            }
        } else if flags & wire::FLAG_TIMED != 0 {
            // So that the supervisor's limit checks see the item is over.
            status.current.mark_done(seq);
        }
        // Otherwise `RUNNING` plus the committed record tell the supervisor
        // all it needs, and the store is saved.
        // A supervisor with nothing else to do sleeps: wake it for this
        // result now rather than at the end of the batch.
        if self.outbox.consumer_asleep() {
            self.flush();
        }
    }
}

/// The worker's side of one batch, handed to the job's batch shim (see
/// `call::RawCall`): the shim loops through [`drive`](Self::drive) with its
/// item function inlined, and the bookkeeping around each item is inlined
/// there too.
pub(crate) struct BatchRun<'w, 'b> {
    w: &'w mut Worker,
    b: &'w mut Running<'b>,
}

/// Releases a batch's input frame once its last argument is decoded, so
/// the supervisor can send the next frame while the job runs.
pub(crate) struct Release<'a> {
    inbox: &'a mut Consumer,
    frame: &'a mut Option<usize>,
    last: bool,
}

impl Release<'_> {
    /// The argument is decoded: its bytes are no longer read.
    #[inline(always)]
    pub(crate) fn done(&mut self) {
        if self.last
            && let Some(n) = self.frame.take()
            && self.inbox.consume(n)
        {
            bell::ring(WORKER_BELL_OUT);
        }
    }
}

impl BatchRun<'_, '_> {
    /// Runs the batch's remaining items with `item` (decode, call, encode);
    /// a panic unwinds out of here with `current` naming the item.
    #[inline(always)]
    pub(crate) fn drive<F>(&mut self, mut item: F)
    where
        F: FnMut(&[u8], &mut Out<'_>, &mut Release<'_>) -> Tag,
    {
        let (w, batch) = (&mut *self.w, &mut *self.b);
        let h = batch.header;
        let timed = h.flags & wire::FLAG_TIMED != 0;
        let cancellable = h.flags & wire::FLAG_CANCELLABLE != 0;
        let mut scratch = std::mem::take(&mut w.scratch);
        while batch.left > 0 {
            let back = w.page.recall.0.returns(w.next_seq, batch.left);
            if back > 0 {
                w.hand_back(batch, back);
                continue;
            }
            let Some(arg) = batch.items.next() else {
                exit(EXIT_PROTOCOL)
            };
            let seq = w.next_seq;
            w.next_seq += 1;
            let status = &w.page.worker;
            if timed {
                status
                    .started_ns
                    .store(clock::coarse_ns(), Ordering::Relaxed);
                current::set_timed_item(seq + 1);
            }
            status.current.start(seq);
            let taken = !cancellable || w.page.cancel[h.cancel_slot as usize].take(h.job_id);
            if taken {
                batch.current = Some(seq);
                let mut release = Release {
                    inbox: &mut w.inbox,
                    frame: &mut batch.frame,
                    last: batch.left == 1,
                };
                // The result is encoded straight into the ring's free
                // space, after room for its record header.
                let (space, free) = w.outbox.space();
                let room = free.saturating_sub(HEADER);
                // SAFETY: the free space belongs to this producer until it
                // advances; nothing else touches it while `out` lives.
                let mut out = unsafe { Out::new(space.wrapping_add(HEADER), room, &mut scratch) };
                let tag = item(arg, &mut out, &mut release);
                batch.current = None;
                let (len, direct) = (out.len(), out.is_direct());
                if len as u64 > w.config.max_message_size {
                    w.record_too_large(len);
                } else if direct {
                    w.outbox
                        .advance_with_head(&wire::header(tag, len as u32), len);
                } else {
                    w.record(tag, &scratch);
                }
            } else {
                w.record(Tag::Skipped, &[]);
            }
            if batch.left == 1 && batch.started != 0 {
                // Before the last answer is committed (see `BatchTime`).
                let took = clock::precise_ns().saturating_sub(batch.started);
                status.batch_time.set(h.seq0, took);
            }
            w.finish(seq, h.flags);
            batch.left -= 1;
        }
        w.scratch = scratch;
    }
}
