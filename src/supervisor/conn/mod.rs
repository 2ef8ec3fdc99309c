//! One worker as the supervisor sees it.
//!
//! A `Conn` owns the worker's shared memory, its two doorbells and its pidfd,
//! and keeps the books for it: which batches were sent (in order), how many
//! of their items have answered, and — when the worker dies — which items
//! finished (their results are delivered, published or not), which one was
//! running (it is charged with the crash, the time limit or the
//! cancellation that killed it), and which never started (they go back to
//! the queue, so nothing runs twice).
//!
//! Nothing the worker writes is believed without a check: ring positions,
//! record headers and doorbell bytes are validated, and a worker caught
//! lying is killed and treated as crashed.

use super::Whereabouts;
use crate::batch::progress::Progress;
use crate::batch::{Batch, JobId};
use crate::error::{ExitStatus, JobError};
use crate::metrics::stats::Counters;
use crate::sys::clock;
use crate::sys::prefault::{self, Spares};
use crate::transport::bell::{self, Drained};
use crate::transport::ring::{Consumer, Producer};
use crate::transport::shm::{DONE, KILL, RUNNING, Region, SLOT_CANCELLED, SLOT_QUEUED, StatusPage};
use crate::transport::wire::{self, BATCH_HEADER, BatchHeader, HEADER, Record, RecordReader, Tag};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

/// Copy at most this much from a worker's ring per pass, so one chatty
/// worker cannot starve the others.
const MAX_PULL: usize = 8 << 20;

/// What the supervisor shares with a conn while it works.
pub(super) struct Ctx<'a> {
    pub counters: &'a Counters,
    /// Cancellable jobs that resolved (their cancel index entries can go).
    pub done_jobs: &'a mut Vec<JobId>,
    /// Big buffers for answers, from and back to the pool's stocks.
    pub spares: &'a Spares,
}

/// Why the supervisor killed a worker, and over which item.
#[derive(Debug)]
pub(super) struct Kill {
    pub seq: u64,
    pub reason: JobError,
}

/// The worker's ends of its descriptors, to be handed to the zygote.
pub(super) struct WorkerFds {
    pub bell_in: OwnedFd,
    pub bell_out: OwnedFd,
    pub shm: OwnedFd,
}

impl WorkerFds {
    pub(super) fn borrow(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.bell_in.as_fd(),
            self.bell_out.as_fd(),
            self.shm.as_fd(),
        ]
    }
}

/// A batch sent to the worker.
struct InFlight {
    batch: Batch,
    /// Sequence number of the batch's first undelivered item.
    seq0: u64,
    /// Frame header and batch header, kept for streaming large frames.
    head: [u8; HEADER + BATCH_HEADER],
    slot: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitRequest {
    None,
    Wanted,
    Sent,
}

/// The accounting side of a conn: batches in flight and answers received.
struct Book {
    inflight: VecDeque<InFlight>,
    /// Records received for the front batch, not yet delivered.
    out: Vec<u8>,
    out_count: u32,
    cancel_used: u64,
    kill: Option<Kill>,
    /// The killed item answered anyway; its answer was dropped.
    swallowed: bool,
    ready: bool,
    init_failed: Option<String>,
    retiring: bool,
}

impl Book {
    fn first_undelivered(&self) -> Option<u64> {
        self.inflight
            .front()
            .map(|f| f.seq0 + u64::from(self.out_count))
    }

    /// Handles one record. Err means the worker broke the protocol.
    fn on_record(&mut self, rec: Record<'_>, ctx: &mut Ctx<'_>) -> Result<(), String> {
        if !rec.tag.is_item() {
            match rec.tag {
                Tag::Ready if rec.body.len() == 4 => self.ready = true,
                Tag::InitFailed => {
                    self.init_failed = Some(String::from_utf8_lossy(rec.body).into_owned())
                }
                Tag::Retire => self.retiring = true,
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
        ctx.counters.count_record(rec.tag);
        if self
            .inflight
            .front()
            .is_some_and(|f| f.batch.count() == self.out_count)
        {
            self.flush_out(ctx);
        }
        Ok(())
    }

    /// Delivers the records received for the front batch.
    fn flush_out(&mut self, ctx: &mut Ctx<'_>) {
        if self.out_count == 0 {
            return;
        }
        let front = self
            .inflight
            .front_mut()
            .expect("records belong to a batch");
        front
            .batch
            .deliver_records(self.out_count, std::mem::take(&mut self.out));
        front.seq0 += u64::from(self.out_count);
        self.out_count = 0;
        self.pop_finished(ctx);
    }

    /// Drops the front batch if nothing of it is left.
    fn pop_finished(&mut self, ctx: &mut Ctx<'_>) {
        if self.inflight.front().is_some_and(|f| f.batch.count() == 0) {
            let done = self.inflight.pop_front().expect("front exists");
            if let Some(slot) = done.slot {
                self.cancel_used &= !(1u64 << slot);
            }
            if let Some(id) = done.batch.job {
                ctx.done_jobs.push(id);
            }
        }
    }
}

/// One worker process, from the supervisor's side.
pub(super) struct Conn {
    pub key: u64,
    tx: Producer,
    rx: Consumer,
    reader: RecordReader,
    book: Book,
    bell_to: OwnedFd,
    bell_from: OwnedFd,
    pub bell_registered: bool,
    pid: Option<i32>,
    pidfd: Option<OwnedFd>,
    pub pidfd_registered: bool,
    next_seq: u64,
    /// Bytes of the last batch frame written so far, while it streams.
    streaming: Option<usize>,
    exit: ExitRequest,
    kill_pending: bool,
    violated: Option<String>,
    /// The worker's pipe reached end-of-file.
    pub hup: bool,
    /// Its pidfd reported the process gone.
    pub gone: bool,
    /// The zygote could not fork it.
    pub spawn_failed: bool,
    /// Its fork server died: it is nobody's child of ours any more, so its
    /// exit status cannot be learned (see `supervisor::restart`).
    pub orphaned: bool,
    /// Its wait status, once the zygote reaped it.
    pub status: Option<ExitStatus>,
    /// A spare, given no work until it is promoted (see `standby.rs`).
    pub standby: bool,
    /// When it was promoted from standby (coarse ns), until it first answers.
    pub promoted_at: Option<u64>,
    /// Items it may still be given (`max_tasks_per_worker`).
    tasks_left: Option<u64>,
    region: Region,
}

impl Conn {
    /// Creates the shared memory and doorbells for a new worker.
    pub(super) fn new(
        key: u64,
        ring_size: usize,
        cap: u64,
        tasks: Option<u64>,
    ) -> io::Result<(Conn, WorkerFds)> {
        let (region, shm) = Region::create(ring_size)?;
        let (in_r, in_w) = bell::pair()?;
        let (out_r, out_w) = bell::pair()?;
        for fd in [in_w.as_fd(), out_r.as_fd(), out_w.as_fd()] {
            bell::set_nonblocking(fd)?;
        }
        let page = region.page();
        let size = region.ring_size();
        // SAFETY: the region is owned by the conn and outlives both ends;
        // the supervisor is the only producer to and consumer from this worker.
        let (tx, rx) = unsafe {
            (
                Producer::new(&page.to_worker, region.ring_data(true), size),
                Consumer::new(&page.to_supervisor, region.ring_data(false), size),
            )
        };
        let conn = Conn {
            key,
            tx,
            rx,
            reader: RecordReader::new(cap),
            book: Book {
                inflight: VecDeque::new(),
                out: Vec::new(),
                out_count: 0,
                cancel_used: 0,
                kill: None,
                swallowed: false,
                ready: false,
                init_failed: None,
                retiring: false,
            },
            bell_to: in_w,
            bell_from: out_r,
            bell_registered: false,
            pid: None,
            pidfd: None,
            pidfd_registered: false,
            next_seq: 0,
            streaming: None,
            exit: ExitRequest::None,
            kill_pending: false,
            violated: None,
            hup: false,
            gone: false,
            spawn_failed: false,
            orphaned: false,
            status: None,
            standby: false,
            promoted_at: None,
            tasks_left: tasks,
            region,
        };
        Ok((
            conn,
            WorkerFds {
                bell_in: in_r,
                bell_out: out_w,
                shm,
            },
        ))
    }

    fn page(&self) -> &StatusPage {
        self.region.page()
    }

    pub(super) fn bell_fd(&self) -> BorrowedFd<'_> {
        self.bell_from.as_fd()
    }

    pub(super) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    pub(super) fn pid(&self) -> Option<i32> {
        self.pid
    }

    pub(super) fn is_ready(&self) -> bool {
        self.book.ready
    }

    pub(super) fn init_failure(&self) -> Option<&str> {
        self.book.init_failed.as_deref()
    }

    /// Whether the supervisor (not the job or the world) ended this worker.
    pub(super) fn ended_on_purpose(&self) -> bool {
        self.book.kill.is_some()
            || self.book.retiring
            || self.exit != ExitRequest::None
            || self.violated.is_some()
    }

    /// Whether this worker is one of the pool's N, alive and taking work.
    pub(super) fn counts_toward_strength(&self) -> bool {
        !self.dying()
            && !self.book.retiring
            && self.exit == ExitRequest::None
            && self.tasks_left != Some(0)
    }

    fn dying(&self) -> bool {
        self.status.is_some()
            || self.gone
            || self.hup
            || self.spawn_failed
            || self.book.kill.is_some()
            || self.violated.is_some()
            || self.book.init_failed.is_some()
    }

    /// Whether a new batch may be sent now (room in the ring aside).
    pub(super) fn accepts(&self, cancellable: bool) -> bool {
        !self.standby
            && self.counts_toward_strength()
            && self.streaming.is_none()
            && (!cancellable || self.book.cancel_used != u64::MAX)
    }

    pub(super) fn tasks_left(&self) -> Option<u64> {
        self.tasks_left
    }

    pub(super) fn inflight_batches(&self) -> usize {
        self.book.inflight.len()
    }

    pub(super) fn inflight_items(&self) -> u64 {
        self.book
            .inflight
            .iter()
            .map(|f| u64::from(f.batch.count()))
            .sum()
    }

    pub(super) fn busy(&self) -> bool {
        !self.book.inflight.is_empty()
    }

    /// The zygote forked this worker.
    pub(super) fn spawned(&mut self, pid: i32, pidfd: Option<OwnedFd>) {
        self.pid = Some(pid);
        self.pidfd = pidfd;
        if self.kill_pending {
            self.signal(libc::SIGKILL);
        }
    }

    /// Sends `sig` to the worker, race-free through its pidfd when there is one.
    pub(super) fn signal(&mut self, sig: i32) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on our pidfd; a pidfd never refers
            // to a recycled pid, so this cannot hit another process.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<u8>(),
                    0,
                )
            };
        } else if let Some(pid) = self.pid {
            // An orphan's pid may already be reaped (by init) and reused.
            if self.status.is_none() && !self.orphaned {
                // SAFETY: plain kill of a worker not yet known to be reaped.
                unsafe { libc::kill(pid, sig) };
            }
        } else if sig == libc::SIGKILL {
            self.kill_pending = true;
        }
    }

    fn kill(&mut self, seq: u64, reason: JobError) {
        self.book.kill = Some(Kill { seq, reason });
        self.signal(libc::SIGKILL);
    }

    /// Stops believing the worker: kill it; it will be treated as crashed.
    pub(super) fn violate(&mut self, why: impl Into<String>) {
        if self.violated.is_none() {
            self.violated = Some(why.into());
            self.signal(libc::SIGKILL);
        }
    }

    pub(super) fn violation(&self) -> Option<&str> {
        self.violated.as_deref()
    }

    /// Sends `batch`, or gives it back when the ring has no room for it.
    pub(super) fn try_send(&mut self, mut batch: Batch) -> Result<(), Batch> {
        let items_len = batch.items().len();
        let frame = HEADER + BATCH_HEADER + items_len;
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
            self.page().cancel[s as usize].store(id.0 << 2 | SLOT_QUEUED, Ordering::Relaxed);
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
        });
        self.next_seq += u64::from(count);
        if let Some(t) = &mut self.tasks_left {
            *t = t.saturating_sub(u64::from(count));
        }
        self.streaming = Some(0);
        self.pump_tx();
        Ok(())
    }

    /// Asks the worker to exit once it has answered everything sent so far.
    pub(super) fn request_exit(&mut self) {
        if self.exit == ExitRequest::None {
            self.exit = ExitRequest::Wanted;
            self.pump_tx();
        }
    }

    /// Writes as much of a streaming frame, or the exit frame, as fits.
    pub(super) fn pump_tx(&mut self) {
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
    pub(super) fn publish(&mut self, cpu: u32) {
        let driver_cpu = &self.page().driver_cpu.0;
        if driver_cpu.load(Ordering::Relaxed) != cpu {
            driver_cpu.store(cpu, Ordering::Relaxed);
        }
        if self.tx.publish() {
            bell::ring(self.bell_to.as_raw_fd());
        }
    }

    /// The CPU the worker last ran on as it waited for work.
    pub(super) fn worker_cpu(&self) -> u32 {
        self.page().worker.cpu.load(Ordering::Relaxed)
    }

    /// Reads the doorbell after the poller flagged it.
    pub(super) fn drain_bell(&mut self) -> Drained {
        let d = bell::drain(&self.bell_from);
        match d {
            Drained::Garbage => self.violate("wrote bytes that are not doorbells to its pipe"),
            Drained::Eof => {
                self.hup = true;
                // Its end closed: it is dead, or a job closed the pipe, in
                // which case it can no longer be trusted to answer.
                self.signal(libc::SIGKILL);
            }
            Drained::Bells => {}
        }
        d
    }

    /// Prepares to sleep: asks the worker to ring when it writes, and when
    /// there is room for `room` bytes (0: no need). False when there is
    /// already something to do.
    pub(super) fn prepare_sleep(&mut self, room: usize) -> bool {
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
    pub(super) fn awake(&self) {
        self.rx.awake();
    }

    /// Takes in everything the worker has published.
    pub(super) fn pump_rx(&mut self, ctx: &mut Ctx<'_>) {
        if self.violated.is_some() {
            return;
        }
        // At most MAX_PULL bytes per call, so one busy worker cannot hold
        // the supervisor (and its other workers' rings) for long: every
        // step pumps every worker again, and nobody sleeps while bytes wait.
        let mut pulled = 0;
        loop {
            let avail = match self.rx.available() {
                Ok(a) => a,
                Err(_) => return self.violate("moved its result ring write position impossibly"),
            };
            let take = self.big_record_alone(avail.min(MAX_PULL - pulled), ctx.spares);
            if take > 0 {
                self.promoted_at = None;
            }
            self.pull(take);
            pulled += take;
            if let Err(e) = self.parse(ctx) {
                return self.violate(e);
            }
            if take == avail || take == 0 || pulled >= MAX_PULL {
                break;
            }
        }
        self.book.flush_out(ctx);
    }

    /// How much of the `n` available bytes to pull: all of them, unless
    /// the next record is big and the last answer of the front batch. Such
    /// a record is pulled alone, into a buffer of its size from the pool's
    /// stocks (already faulted in; the caller gives it back once decoded),
    /// and is then handed on whole. (Answers to a batch of several items
    /// are gathered into one buffer anyway.)
    #[inline]
    fn big_record_alone(&mut self, n: usize, spares: &Spares) -> usize {
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

    fn pull(&mut self, n: usize) {
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
    fn parse(&mut self, ctx: &mut Ctx<'_>) -> Result<(), String> {
        loop {
            // Fast path: a run of answers for the front batch, copied at once.
            if self.book.kill.is_none()
                && let Some(front) = self.book.inflight.front()
            {
                let want = front.batch.count() - self.book.out_count;
                let run = self.reader.scan_items(want).map_err(|e| e.to_string())?;
                if run.count > 0 {
                    ctx.counters.count_run(&run);
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

    /// Enforces time limits. Returns the next instant (coarse ns) at which
    /// the supervisor must look again: when the running item's limit falls
    /// due, or — for a timed batch whose items have not started — when the
    /// earliest of them could.
    pub(super) fn check_deadlines(&mut self, now: u64) -> Option<u64> {
        if self.dying() {
            return None;
        }
        let waiting = self
            .book
            .inflight
            .iter()
            .filter_map(
                |f| match (f.batch.opts.soft_time_limit, f.batch.opts.time_limit) {
                    (Some(s), Some(h)) => Some(s.min(h)),
                    (s, h) => s.or(h),
                },
            )
            .min()
            .map(|limit| now.saturating_add(clock::ns(limit)));
        let running = self.check_running(now);
        match (waiting, running) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn check_running(&mut self, now: u64) -> Option<u64> {
        // Reading the worker's status line makes its next store to it miss
        // the cache: look only when something in flight has a limit.
        let timed = |f: &InFlight| {
            f.batch.opts.time_limit.is_some() || f.batch.opts.soft_time_limit.is_some()
        };
        if !self.book.inflight.iter().any(timed) {
            return None;
        }
        let page = self.region.page();
        let cur = page.worker.current.load(Ordering::Acquire);
        if cur & 3 != RUNNING {
            return None;
        }
        let seq = cur >> 2;
        let entry = self
            .book
            .inflight
            .iter()
            .find(|f| seq >= f.seq0 && seq < f.seq0 + u64::from(f.batch.count()))?;
        let opts = entry.batch.opts;
        if opts.time_limit.is_none() && opts.soft_time_limit.is_none() {
            return None;
        }
        // Started no earlier than this, in real time (see clock::coarse_tick_ns).
        let started =
            page.worker.started_ns.load(Ordering::Relaxed).min(now) + clock::coarse_tick_ns();
        let mut next = None;
        let mut notify_soft = false;
        if let Some(soft) = opts.soft_time_limit {
            let at = started.saturating_add(clock::ns(soft));
            if now < at {
                next = Some(at);
            } else {
                notify_soft = page.soft_expired.0.swap(seq + 1, Ordering::AcqRel) != seq + 1;
            }
        }
        let mut timed_out = None;
        if let Some(hard) = opts.time_limit {
            let at = started.saturating_add(clock::ns(hard));
            if now < at {
                next = Some(next.map_or(at, |n: u64| n.min(at)));
            } else if page
                .worker
                .current
                .compare_exchange(cur, seq << 2 | KILL, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                timed_out = Some(hard);
            }
        }
        if notify_soft {
            self.signal(libc::SIGUSR1);
        }
        if let Some(limit) = timed_out {
            self.kill(seq, JobError::TimedOut { limit });
            return None;
        }
        next
    }

    /// Cancels dispatched job `id`. True if it will not produce a result.
    pub(super) fn cancel(&mut self, id: JobId, ctx: &mut Ctx<'_>) -> bool {
        self.withdraw(id, JobError::Cancelled, ctx)
    }

    /// Where dispatched job `id` is: running (with its latest progress
    /// report) or still queued in the worker's inbox.
    pub(super) fn whereabouts(&self, id: JobId) -> Option<Whereabouts> {
        let entry = self
            .book
            .inflight
            .iter()
            .find(|f| f.batch.job == Some(id))?;
        if entry.batch.count() == 0 {
            return None;
        }
        let seq = entry.seq0;
        let page = self.page();
        let cur = page.worker.current.load(Ordering::Acquire);
        if cur >> 2 == seq && matches!(cur & 3, RUNNING | KILL) {
            let progress = page
                .progress
                .read(seq + 1)
                .map(|(done, total)| Progress { done, total });
            Some(Whereabouts::Running { progress })
        } else {
            Some(Whereabouts::Queued)
        }
    }

    /// Takes dispatched job `id` back with `why`: a job still queued in the
    /// worker's inbox is skipped; a running one is killed only for a
    /// cancellation (an expiry spares a job that has started). True if it
    /// will not produce a result.
    pub(super) fn withdraw(&mut self, id: JobId, why: JobError, ctx: &mut Ctx<'_>) -> bool {
        let may_kill = why == JobError::Cancelled;
        let Some(entry) = self.book.inflight.iter().find(|f| f.batch.job == Some(id)) else {
            return false;
        };
        let (Some(slot), true) = (entry.slot, entry.batch.count() > 0) else {
            return false;
        };
        let seq = entry.seq0;
        let page = self.region.page();
        let queued = id.0 << 2 | SLOT_QUEUED;
        let cancelled = page.cancel[slot as usize]
            .compare_exchange(
                queued,
                id.0 << 2 | SLOT_CANCELLED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        let killed = !cancelled
            && may_kill
            && page
                .worker
                .current
                .compare_exchange(
                    seq << 2 | RUNNING,
                    seq << 2 | KILL,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if !cancelled && !killed {
            return false;
        }
        if entry.batch.sink.fail_now(why.clone()) {
            if why == JobError::Cancelled {
                ctx.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
                ctx.counters.count_error(&why, 1);
            }
        }
        if killed {
            self.kill(seq, JobError::Cancelled);
        }
        true
    }

    /// Whether the worker is seen leaving (its pipe closed or its pidfd
    /// fired) but the fork server has not yet reported how it ended.
    pub(super) fn awaiting_exit_status(&self) -> bool {
        (self.hup || self.gone) && !self.finished()
    }

    /// Whether the process is known to be dead and its books can be closed.
    /// An orphan's death is seen by its pidfd (or, without one, its pipe).
    pub(super) fn finished(&self) -> bool {
        self.spawn_failed
            || self.status.is_some()
            || (self.orphaned && (self.gone || (self.hup && !self.pidfd_registered)))
    }

    /// Closes the books of a dead worker: delivers every result it left
    /// (a worker commits each record before it marks the item done), charges
    /// every item it started without answering, and returns the batches
    /// whose items never started, to be run elsewhere.
    pub(super) fn finalize(&mut self, ctx: &mut Ctx<'_>) -> Vec<Batch> {
        if self.violated.is_none() {
            self.pump_rx(ctx);
        } else {
            self.salvage(ctx);
        }
        let cur = self.page().worker.current.load(Ordering::Acquire);
        let (cseq, cstate) = (cur >> 2, cur & 3);
        // Items it started: those before `cseq`, and `cseq` itself unless
        // the word is still the initial "nothing started". A position past
        // what was sent is a lie; it cannot make us charge more than that.
        let started_through = match cstate {
            DONE | RUNNING | KILL => cseq.saturating_add(1),
            _ => 0,
        }
        .min(self.next_seq);
        // Every item it started and did not answer is charged: the running
        // one with what killed it; an earlier one whose record could not be
        // read (only after a protocol violation) with the crash too — it
        // ran, so it must not run again. Items it never started are requeued.
        while let Some(first) = self.book.first_undelivered()
            && first < started_through
        {
            let error = match self.book.kill.take_if(|k| k.seq == first) {
                Some(k) => k.reason,
                None => ExitStatus::crashed(self.status),
            };
            let front = self.book.inflight.front_mut().expect("first item exists");
            if error == JobError::Cancelled {
                front.batch.forget(1); // resolved and counted when cancelled
            } else {
                ctx.counters.count_error(&error, 1);
                front.batch.fail(1, error);
            }
            front.seq0 += 1;
            self.book.pop_finished(ctx);
        }
        let page = self.region.page();
        let mut requeue = Vec::new();
        for mut f in self.book.inflight.drain(..) {
            if let (Some(slot), Some(id)) = (f.slot, f.batch.job) {
                let word = page.cancel[slot as usize].load(Ordering::Acquire);
                if word == id.0 << 2 | SLOT_CANCELLED {
                    f.batch.forget(f.batch.count());
                }
                ctx.done_jobs.push(id);
            }
            if f.batch.count() > 0 {
                requeue.push(f.batch);
            }
        }
        self.book.cancel_used = 0;
        requeue
    }

    /// After a protocol violation `pump_rx` believes nothing more; when the
    /// worker is dead, the well-formed records it committed before the first
    /// bad one are still delivered, so that only the item it was running
    /// when caught is not believed. (If its ring position itself is
    /// impossible, nothing more is read.)
    fn salvage(&mut self, ctx: &mut Ctx<'_>) {
        if let Ok(n) = self.rx.available() {
            self.pull(n);
            let _ = self.parse(ctx);
        }
        if !self.book.inflight.is_empty() {
            self.book.flush_out(ctx);
        }
    }

    /// Gives up on everything in flight (the pool is terminating): counts
    /// it as cancelled; dropping the conn then resolves it.
    pub(super) fn abandon(&mut self, ctx: &mut Ctx<'_>) {
        if !self.book.inflight.is_empty() {
            self.book.flush_out(ctx);
        }
        let left: u64 = self
            .book
            .inflight
            .iter()
            .map(|f| u64::from(f.batch.count()))
            .sum();
        ctx.counters.cancelled.fetch_add(left, Ordering::Relaxed);
        self.signal(libc::SIGKILL);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.status.is_none() && !self.spawn_failed {
            self.signal(libc::SIGKILL);
        }
    }
}
