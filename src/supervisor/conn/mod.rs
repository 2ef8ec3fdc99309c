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
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | the `Conn`: descriptors, shared memory, life-cycle flags, signals |
//! | `book.rs` | the books: batches in flight, answers received, in order |
//! | `tx.rs` | sending: batch frames (streamed when big), the exit request, the sleep handshake |
//! | `rx.rs` | receiving: pulling records out of the result ring, parsing them |
//! | `limits.rs` | time limits, cancellation, expiry, where a job is |
//! | `death.rs` | closing the books of a dead worker: whose fault, what is charged, what is requeued |
//! | `tests.rs` | the conn against an in-process region, the test playing the worker |

mod book;
mod death;
mod limits;
mod rx;
mod tx;
mod view;

#[cfg(test)]
mod tests;

pub(super) use limits::Withdrawal;

use crate::batch::{Batch, JobId};
use crate::control::events::Bus;
use crate::error::{ExitStatus, JobError};
use crate::metrics::fate::Fate;
use crate::metrics::stats::Counters;
use crate::metrics::tally::{Tallies, TallyKey};
use crate::sys::clock::{self, StepClock};
use crate::sys::prefault::Spares;
use crate::transport::bell::{self, Drained};
use crate::transport::ring::{Consumer, Producer};
use crate::transport::shm::Region;
use crate::transport::status::StatusPage;
use crate::transport::wire::RecordReader;
use book::Book;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

/// What the supervisor shares with a conn while it works.
pub(super) struct Ctx<'a> {
    pub counters: &'a Counters,
    /// Cancellable jobs that resolved (their cancel index entries can go).
    pub done_jobs: &'a mut Vec<JobId>,
    /// Big buffers for answers, from and back to the pool's stocks.
    pub spares: &'a Spares,
    /// Batches a worker handed back unstarted (a recall), to requeue.
    pub returned: &'a mut Vec<Batch>,
    /// Each function's and queue's outcomes and durations.
    pub tallies: &'a mut Tallies,
    /// The clocks of this step.
    pub clock: &'a mut StepClock,
    /// Where events go.
    pub events: &'a Bus,
}

impl Ctx<'_> {
    /// Counts `n` jobs of a batch counted under `key` that ended with
    /// `fate`: in the pool's counters and in the tallies.
    pub(super) fn count(&mut self, key: TallyKey, fate: Fate, n: u64) {
        self.counters.count(fate, n);
        self.tallies.count(key, fate, n);
    }

    /// Counts `n` jobs that resolved with `error`.
    pub(super) fn count_error(&mut self, key: TallyKey, error: &JobError, n: u64) {
        self.count(key, Fate::of_error(error), n);
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitRequest {
    None,
    Wanted,
    Sent,
}

/// One worker process, from the supervisor's side.
pub(super) struct Conn {
    pub key: u64,
    /// The queue whose jobs it runs.
    pub queue: usize,
    /// Since when (coarse ns) it has been up and idle, for the keep-alive.
    pub idle_since: Option<u64>,
    /// The autoscaler asked it to leave: it owes no replacement.
    pub shrunk: bool,
    /// It was forked to replace a worker that was lost.
    pub replacing: bool,
    /// Items numbered below this were recalled (see `Recall`).
    recalled_below: u64,
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
    /// Coarse-clock instant the conn was made, for the worker's uptime.
    born: u64,
}

impl Conn {
    /// Creates the shared memory and doorbells for a new worker.
    pub(super) fn new(
        key: u64,
        queue: usize,
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
            queue,
            idle_since: None,
            shrunk: false,
            replacing: false,
            recalled_below: 0,
            tx,
            rx,
            reader: RecordReader::new(cap),
            book: Book {
                inflight: VecDeque::new(),
                out: Vec::new(),
                out_count: 0,
                answer_bytes: 0,
                cancel_used: 0,
                kill: None,
                swallowed: false,
                ready: false,
                init_failed: None,
                retiring: false,
                handed_back: 0,
                answered_at: 0,
                answered: 0,
                pid: 0,
                finished: None,
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
            born: clock::coarse_ns(),
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

    pub(super) fn dying(&self) -> bool {
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
        self.book.pid = pid as u32;
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
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.status.is_none() && !self.spawn_failed {
            self.signal(libc::SIGKILL);
        }
    }
}
