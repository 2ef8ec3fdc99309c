//! The worker: a child process that runs jobs until told to stop.
//!
//! A worker reads batch frames from its inbox ring, runs each item under
//! `catch_unwind`, and writes one record per item to its outbox ring. For
//! every item it first publishes, in its status page, which item it is on
//! (and when it started, if the batch has a time limit), and afterwards
//! commits the item's record to the ring before marking the item done.
//! That is what lets the supervisor
//!
//! - kill it past a hard limit and charge exactly the item that overran,
//! - tell a job its soft limit passed ([`soft_time_limit_exceeded`]),
//! - recover the results of items that finished just before a crash, and
//!   charge only the item that was running.
//!
//! Committing a record is a plain store; the worker only pays for a fence
//! and, maybe, a doorbell (`flush`) at the end of a batch, or when the
//! supervisor has announced that it sleeps.
//!
//! A worker exits when its doorbell pipe reaches end-of-file (the supervisor
//! is gone), when it is sent an `Exit` frame, or — after reporting its
//! last result — when it is above its memory limit. It never runs the
//! caller's `atexit` handlers or destructors.

use crate::bell;
use crate::call::{Call, RawCall};
use crate::clock;
use crate::config::WorkerConfig;
use crate::out::Out;
use crate::ring::{Consumer, Producer};
use crate::shm::{DELIVERING, DONE, KILL, RUNNING, Region, SLOT_QUEUED, SLOT_TAKEN, StatusPage};
use crate::spin::{Budget, Wait};
use crate::wire::{self, BatchHeader, HEADER, Items, Tag};
use crate::zygote::{WORKER_BELL_IN, WORKER_BELL_OUT};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

/// This worker's status page, once it runs (null in the caller).
static PAGE: AtomicPtr<StatusPage> = AtomicPtr::new(std::ptr::null_mut());
/// `seq + 1` of the item running now, 0 between items.
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// The adaptive spin before a worker sleeps (see `crate::spin`): a worker
/// fed back to back never pays a wake-up, and an idle one spins at most
/// 200 µs once before it sleeps.
fn spin_budget() -> Budget {
    Budget::new(
        Duration::from_micros(100),
        Duration::from_micros(50),
        Duration::from_micros(200),
    )
}

/// Exit code for a broken frame from the supervisor (a bug, not a job's fault).
const EXIT_PROTOCOL: i32 = 70;
/// Exit code after the initializer panicked.
const EXIT_INIT_FAILED: i32 = 1;

/// Result buffer a worker keeps between frames.
const SCRATCH_RETAIN: usize = 16 << 20;

/// Whether the soft time limit of the running job has passed.
///
/// A job with a soft limit ([`PoolBuilder::soft_time_limit`](crate::PoolBuilder::soft_time_limit))
/// polls this to stop cleanly before the hard limit kills its worker. When
/// the soft limit passes, the worker also receives `SIGUSR1`, which
/// interrupts a blocking system call (it returns `EINTR`) so the job gets
/// to look. Outside a pool job this is always false.
///
/// ```
/// fn crunch(n: u64) -> u64 {
///     let mut acc = 0u64;
///     for i in 0..n {
///         if i % 1024 == 0 && forkpool::soft_time_limit_exceeded() {
///             break; // return what we have
///         }
///         acc = acc.wrapping_add(i * i);
///     }
///     acc
/// }
/// assert_eq!(crunch(4), 14);
/// ```
pub fn soft_time_limit_exceeded() -> bool {
    let page = PAGE.load(Ordering::Acquire);
    let cur = CURRENT.load(Ordering::Relaxed);
    if page.is_null() || cur == 0 {
        return false;
    }
    // SAFETY: PAGE is only set in a worker, to its leaked, never-unmapped region.
    unsafe { &*page }.soft_expired.0.load(Ordering::Acquire) == cur
}

/// The status page and `seq + 1` of the item this worker is running, when
/// called from inside a job; `None` anywhere else (the caller, a worker
/// between items). Read from the page's `current` word, which every item
/// sets (`CURRENT` is kept for timed batches only).
pub(crate) fn running_item() -> Option<(&'static StatusPage, u64)> {
    let page = PAGE.load(Ordering::Acquire);
    if page.is_null() {
        return None;
    }
    // SAFETY: PAGE is only set in a worker, to its leaked, never-unmapped region.
    let page = unsafe { &*page };
    let cur = page.worker.current.load(Ordering::Relaxed);
    matches!(cur & 3, RUNNING | KILL).then_some((page, (cur >> 2) + 1))
}

thread_local! {
    /// True while this thread runs user code whose panics we report.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// The last panic message the hook captured on this thread.
    static PANIC_TEXT: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Makes panics inside jobs be captured (message and location) instead of
/// printed: the caller receives them as `JobError::Panicked`.
///
/// The hook is installed once, in the caller, before the first fork server
/// is forked, and workers inherit it with the rest of the memory image. It
/// wraps whatever hook was there: on a thread that is not running a job —
/// every thread of the caller — it defers to it, so the caller's panics
/// print as before. Installing it in a worker instead would take std's hook
/// lock after a fork, which another caller thread, caught mid-panic at that
/// moment, may hold forever in the copy.
pub(crate) fn capture_job_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_JOB.get() {
                return previous(info);
            }
            let msg = payload_text(info.payload());
            let text = match info.location() {
                Some(l) => format!("{msg} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => msg,
            };
            PANIC_TEXT.set(Some(text));
        }));
    });
}

/// Runs `f` as user code: a panic comes back as its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    IN_JOB.set(true);
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    IN_JOB.set(false);
    r.map_err(|payload| {
        let text = PANIC_TEXT.take().unwrap_or_else(|| payload_text(&*payload));
        // Dropping a payload runs user code too.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        text
    })
}

/// Ends the worker: flush what jobs printed, then leave without running
/// the caller's exit handlers.
fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process immediately.
    unsafe { libc::_exit(code) }
}

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
}

struct Worker {
    page: &'static StatusPage,
    inbox: Consumer,
    outbox: Producer,
    config: &'static WorkerConfig,
    next_seq: u64,
    scratch: Vec<u8>,
    /// How long to spin for the next frame before sleeping (see `wait_for`).
    spin: Budget,
}

/// The worker's main: called by the zygote's child right after fork, with
/// the shared memory mapped and descriptors in place. Never returns.
pub(crate) fn run(region: Region, config: &WorkerConfig) -> ! {
    // The worker is its own process: its region and config live until exit.
    let region: &'static Region = Box::leak(Box::new(region));
    // SAFETY: `config` lives in memory copied from the caller at fork and is
    // never freed in this process.
    let config: &'static WorkerConfig = unsafe { &*(config as *const WorkerConfig) };
    let page = region.page();
    PAGE.store((page as *const StatusPage).cast_mut(), Ordering::Release);
    page.worker
        .cpu
        .store(crate::spin::NO_CPU, Ordering::Relaxed);
    let size = region.ring_size();
    // SAFETY: the region is leaked (mapped for the process lifetime); this
    // process is the only consumer of the inbox and producer of the outbox.
    let (inbox, outbox) = unsafe {
        (
            Consumer::new(&page.to_worker, region.ring_data(true), size),
            Producer::new(&page.to_supervisor, region.ring_data(false), size),
        )
    };
    let mut w = Worker {
        page,
        inbox,
        outbox,
        config,
        next_seq: 0,
        scratch: Vec::new(),
        spin: spin_budget(),
    };
    if let Some(init) = config.initializer
        && let Err(text) = guarded(init)
    {
        w.record(
            Tag::InitFailed,
            format!("initializer panicked: {text}").as_bytes(),
        );
        w.flush();
        exit(EXIT_INIT_FAILED);
    }
    w.record(Tag::Ready, &std::process::id().to_le_bytes());
    w.flush();
    loop {
        w.next_frame();
    }
}

impl Worker {
    /// Publishes finished records and wakes the supervisor if it sleeps.
    fn flush(&mut self) {
        if self.outbox.publish() {
            bell::ring(WORKER_BELL_OUT);
        }
    }

    /// Sleeps until the doorbell rings; exits if the supervisor is gone.
    fn sleep(&mut self) {
        if !bell::wait(WORKER_BELL_IN) {
            exit(0);
        }
    }

    /// Releases `n` inbox bytes, waking the supervisor if it waits for room.
    fn consume(&mut self, n: usize) {
        if self.inbox.consume(n) {
            bell::ring(WORKER_BELL_OUT);
        }
    }

    /// Waits until at least `need` bytes are in the inbox; returns how many.
    fn wait_for(&mut self, need: usize) -> usize {
        loop {
            let avail = self
                .inbox
                .available()
                .unwrap_or_else(|_| exit(EXIT_PROTOCOL));
            if avail >= need {
                return avail;
            }
            self.flush();
            if let Some(avail) = self.spin_for(need) {
                return avail;
            }
            match self.inbox.prepare_sleep(need) {
                Ok(true) => {
                    self.sleep();
                    self.inbox.awake();
                }
                Ok(false) => {}
                Err(_) => exit(EXIT_PROTOCOL),
            }
        }
    }

    /// Spins up to the current budget for `need` inbox bytes, adapting the
    /// budget to whether they came.
    fn spin_for(&mut self, need: usize) -> Option<usize> {
        let budget = self.spin.get();
        let wait = Wait::new(budget);
        self.page.worker.cpu.store(wait.cpu(), Ordering::Relaxed);
        loop {
            let avail = self.inbox.available().unwrap_or(0);
            if avail >= need {
                self.spin.adapt(true, budget);
                return Some(avail);
            }
            // The next frame comes from whoever steps the supervisor.
            if !wait.pause(self.page.driver_cpu.0.load(Ordering::Relaxed)) {
                self.spin.adapt(false, budget);
                return None;
            }
        }
    }

    /// Waits until the outbox has `need` free bytes (at most its size).
    ///
    /// Records are written only once a job is over, so a wait here is the
    /// supervisor's (it has not taken earlier results yet), not the job's:
    /// the item's time limits stop counting (see `WorkerStatus::started_ns`).
    fn reserve(&mut self, need: usize) {
        loop {
            if self.outbox.free().unwrap_or_else(|_| exit(EXIT_PROTOCOL)) >= need {
                return;
            }
            self.page
                .worker
                .started_ns
                .store(DELIVERING, Ordering::Relaxed);
            self.flush();
            match self.outbox.request_space(need) {
                Ok(true) => self.sleep(),
                Ok(false) => {}
                Err(_) => exit(EXIT_PROTOCOL),
            }
        }
    }

    /// Writes one record, streaming it through the ring if it is larger
    /// than the ring. A body over the message cap becomes `TooLarge`.
    fn record(&mut self, tag: Tag, body: &[u8]) {
        if body.len() as u64 > self.config.max_message_size {
            return self.record_too_large(body.len());
        }
        let head = wire::header(tag, body.len() as u32);
        if self.outbox.try_put(&head, body) {
            return;
        }
        let size = self.outbox.size();
        if HEADER + body.len() <= size {
            self.reserve(HEADER + body.len());
            self.outbox.put(&head);
            self.outbox.put(body);
            return;
        }
        self.reserve(HEADER);
        self.outbox.put(&head);
        let mut rest = body;
        while !rest.is_empty() {
            self.reserve(1);
            let n = self.outbox.free().unwrap_or(0).min(rest.len());
            self.outbox.put(&rest[..n]);
            rest = &rest[n..];
            self.flush();
        }
    }

    /// Answers an item whose result of `len` bytes is over the message cap.
    fn record_too_large(&mut self, len: usize) {
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&(len as u64).to_le_bytes());
        body[8..].copy_from_slice(&self.config.max_message_size.to_le_bytes());
        self.record(Tag::TooLarge, &body);
    }

    fn next_frame(&mut self) {
        self.wait_for(HEADER);
        let mut head = [0u8; HEADER];
        self.inbox.copy_out(0, &mut head);
        let (len, tag) = wire::split_header(head);
        let total = HEADER + len as usize;
        match tag {
            t if t == Tag::Exit as u8 => {
                self.consume(HEADER);
                self.flush();
                exit(0);
            }
            t if t == Tag::Batch as u8 => {}
            _ => exit(EXIT_PROTOCOL),
        }
        if total <= self.inbox.size() {
            self.wait_for(total);
            // SAFETY: the supervisor is the trusted producer: it never writes
            // to bytes it published until we consume them, which happens
            // once the batch's last argument is decoded — after which
            // run_batch reads nothing more from the slice.
            let body: &[u8] = unsafe { &*(self.inbox.slice(HEADER, len as usize) as *const [u8]) };
            if let Some(n) = self.run_batch(body, Some(total)) {
                self.consume(n);
            }
        } else {
            // A frame larger than the ring arrives in pieces.
            self.consume(HEADER);
            let mut body = Vec::with_capacity(len as usize);
            while body.len() < len as usize {
                let avail = self.wait_for(1);
                let n = avail.min(len as usize - body.len());
                let old = body.len();
                body.resize(old + n, 0);
                self.inbox.copy_out(0, &mut body[old..]);
                self.consume(n);
            }
            self.run_batch(&body, None);
        }
        self.flush();
        self.trim_scratch();
        self.check_memory();
    }

    /// Runs a batch; returns the inbox bytes of its frame if they are still
    /// to be released.
    fn run_batch(&mut self, body: &[u8], frame: Option<usize>) -> Option<usize> {
        let Some(h) = BatchHeader::decode(body) else {
            exit(EXIT_PROTOCOL)
        };
        if h.seq0 != self.next_seq || h.cancel_slot as usize >= self.page.cancel.len() {
            exit(EXIT_PROTOCOL);
        }
        let mut batch = Running {
            // SAFETY: the trampoline address comes from Call::new in the
            // caller, of which this process is a fork.
            shim: unsafe { Call::shim(h.trampoline as usize) },
            header: h,
            items: Items::new(&body[wire::BATCH_HEADER..]),
            left: h.count,
            current: None,
            frame,
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
        CURRENT.store(0, Ordering::Relaxed);
        batch.frame
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
            let claimed = status.current.compare_exchange(
                seq << 2 | RUNNING,
                seq << 2 | DONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if claimed.is_err() {
                loop {
                    // SAFETY: pause just waits for a signal; SIGKILL is coming.
                    unsafe { libc::pause() };
                }
            }
        } else if flags & wire::FLAG_TIMED != 0 {
            // So that the supervisor's limit checks see the item is over.
            status.current.store(seq << 2 | DONE, Ordering::Release);
        }
        // Otherwise `RUNNING` plus the committed record tell the supervisor
        // all it needs, and the store is saved.
        // A supervisor with nothing else to do sleeps: wake it for this
        // result now rather than at the end of the batch.
        if self.outbox.consumer_asleep() {
            self.flush();
        }
    }

    /// Frees the result buffer after a big result: its capacity would
    /// otherwise stay resident (and count against the memory limit) for the
    /// worker's lifetime.
    fn trim_scratch(&mut self) {
        if self.scratch.capacity() > SCRATCH_RETAIN {
            self.scratch = Vec::new();
        }
    }

    /// Retires the worker if its resident memory is above the limit.
    fn check_memory(&mut self) {
        let Some(limit) = self.config.max_memory_per_worker else {
            return;
        };
        let Some(rss) = resident_bytes() else { return };
        if rss > limit {
            self.record(Tag::Retire, &rss.to_le_bytes());
            self.flush();
            exit(0);
        }
    }
}

/// The worker's side of one batch, handed to the job's batch shim (see
/// `job::RawCall`): the shim loops through [`drive`](Self::drive) with its
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
                CURRENT.store(seq + 1, Ordering::Relaxed);
            }
            status.current.store(seq << 2 | RUNNING, Ordering::Release);
            let taken = !cancellable || {
                let slot = &w.page.cancel[h.cancel_slot as usize];
                let queued = h.job_id << 2 | SLOT_QUEUED;
                slot.compare_exchange(
                    queued,
                    h.job_id << 2 | SLOT_TAKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            };
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
            w.finish(seq, h.flags);
            batch.left -= 1;
        }
        w.scratch = scratch;
    }
}

/// This process's resident set size, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}
