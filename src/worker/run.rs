//! The worker's main loop: frames in, records out.
//!
//! A worker waits for a frame in its inbox ring (spinning briefly, then
//! sleeping on its doorbell), runs the batch it carries (`batch_run.rs`),
//! and publishes the records — ringing the supervisor only when it has
//! said it sleeps. It exits when its doorbell reaches end-of-file (the
//! supervisor is gone), on an `Exit` frame, or — after reporting its last
//! result — when it is above its memory limit; never through the caller's
//! `atexit` handlers or destructors. A frame it cannot parse is a bug of
//! ours, not the job's: it exits with [`EXIT_PROTOCOL`].

use super::current;
use super::fds::{WORKER_BELL_IN, WORKER_BELL_OUT};
use super::panic::guarded;
use crate::config::WorkerConfig;
use crate::sys::spin::{self, Budget, Wait};
use crate::transport::bell;
use crate::transport::ring::{Consumer, Producer};
use crate::transport::seats::SpinSeats;
use crate::transport::shm::Region;
use crate::transport::status::{DELIVERING, StatusPage};
use crate::transport::wire::{self, HEADER, Tag};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The adaptive spin before a worker sleeps (see `crate::sys::spin`): a worker
/// fed back to back never pays a wake-up, and an idle one spins at most
/// 200 µs once before it sleeps — and only in one of the pool's spin seats
/// (`transport/seats.rs`), so no more workers spin than the pool has CPUs.
fn spin_budget() -> Budget {
    Budget::new(
        Duration::from_micros(100),
        Duration::from_micros(50),
        Duration::from_micros(200),
    )
}

/// Exit code for a broken frame from the supervisor (a bug, not a job's fault).
pub(super) const EXIT_PROTOCOL: i32 = 70;
/// Exit code after the initializer panicked.
const EXIT_INIT_FAILED: i32 = 1;

/// Result buffer a worker keeps between frames.
const SCRATCH_RETAIN: usize = 16 << 20;

/// Ends the worker: flush what jobs printed, then leave without running
/// the caller's exit handlers.
pub(super) fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process immediately.
    unsafe { libc::_exit(code) }
}

/// A worker's state: its rings, its status page and its settings.
pub(super) struct Worker {
    pub(super) page: &'static StatusPage,
    pub(super) inbox: Consumer,
    pub(super) outbox: Producer,
    pub(super) config: &'static WorkerConfig,
    pub(super) next_seq: u64,
    pub(super) scratch: Vec<u8>,
    /// How long to spin for the next frame before sleeping (see `wait_for`).
    pub(super) spin: Budget,
    /// The pool's spin seats: the worker spins only in one (`seats.rs`).
    pub(super) seats: &'static SpinSeats,
    /// This process's id, the name it takes a seat by.
    pub(super) pid: u32,
    /// Result bytes the last batch wrote: the room at the outbox's start
    /// that lets the next batch go back there (see `run_batch`).
    pub(super) answer_bytes: usize,
}

/// The worker's main: called by the zygote's child right after fork, with
/// the shared memory mapped and descriptors in place. Never returns.
pub(crate) fn run(region: Region, config: &WorkerConfig, seats: &SpinSeats) -> ! {
    // The worker is its own process: its region and config live until exit.
    let region: &'static Region = Box::leak(Box::new(region));
    // SAFETY: `config` and `seats` live in memory copied from the caller at
    // fork and never freed in this process (`seats` maps a page shared with
    // the pool, which this process never unmaps).
    let (config, seats): (&'static WorkerConfig, &'static SpinSeats) = unsafe {
        (
            &*(config as *const WorkerConfig),
            &*(seats as *const SpinSeats),
        )
    };
    let page = region.page();
    current::enter(page);
    page.worker.cpu.store(spin::NO_CPU, Ordering::Relaxed);
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
        seats,
        pid: std::process::id(),
        answer_bytes: 0,
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
    w.record(Tag::Ready, &w.pid.to_le_bytes());
    w.flush();
    loop {
        w.next_frame();
    }
}

impl Worker {
    /// Publishes finished records and wakes the supervisor if it sleeps.
    pub(super) fn flush(&mut self) {
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
    pub(super) fn consume(&mut self, n: usize) {
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
        // No seat free: as many workers as the pool has CPUs spin already,
        // and one more would only take a CPU from a worker with work.
        let _seat = self.seats.take(self.pid)?;
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
    pub(super) fn record(&mut self, tag: Tag, body: &[u8]) {
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
    pub(super) fn record_too_large(&mut self, len: usize) {
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

/// This process's resident set size, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}
