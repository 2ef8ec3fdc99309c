//! Who turns the supervisor's crank, and when.
//!
//! The supervisor's state sits behind a mutex, and one `step` does
//! everything that can be done without waiting. Two kinds of threads take
//! steps:
//!
//! - **The supervisor thread** steps, then sleeps in `epoll` until a
//!   command, a worker, the fork server or a deadline needs it. Every
//!   wake-up of a sleeping thread costs a system call, and on a small VM
//!   whose idle vCPU halts, some 30 µs before the woken thread runs.
//! - **A caller waiting for its own job** (`apply`, `JobHandle::get`) steps
//!   too, for a short, adaptive while, instead of going to sleep: it hands
//!   its job to a worker and takes the answer itself. With the worker
//!   spinning between jobs as well, a round trip then involves no sleeping
//!   thread at all. A caller that leaves with work still outstanding wakes
//!   the supervisor thread, which is therefore never needed on the fast
//!   path and never missing on the slow one.
//!
//! # The rule for whoever steps
//!
//! Stepping the supervisor withdraws the sleeping thread's announcements,
//! so workers stop ringing it (see `sleep.rs`). A caller that steps
//! ([`Driver::step_once`]) must therefore, before it blocks, leave through
//! [`Driver::help_while`] or [`Driver::hand_over`], which wake the
//! supervisor thread if work is outstanding; a caller that simply blocks
//! after a bare step can leave an answer waiting for ever.
//!
//! Nothing here decides *what* a step does; that is `super`.

use super::{Command, Supervisor};
use crate::sys::spin::{Budget, NO_CPU, Wait};
use crossbeam_channel::Sender;
use nix::sys::epoll::{Epoll, EpollEvent, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Wakes the supervisor thread when it sleeps.
pub(crate) struct Wake {
    fd: EventFd,
    sleeping: AtomicBool,
    /// Callers that step only every few submissions ([`Deferring`]): while
    /// any is, the supervisor thread sleeps at most [`DEFERRED_POLL`].
    deferring: AtomicU32,
}

/// The longest a batch a caller sent quietly, without stepping, waits for
/// a step (see [`Deferring`]).
pub(super) const DEFERRED_POLL: Duration = Duration::from_millis(1);

impl Wake {
    pub(super) fn new() -> std::io::Result<Wake> {
        Ok(Wake {
            fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            sleeping: AtomicBool::new(false),
            deferring: AtomicU32::new(0),
        })
    }

    /// Whether a caller steps only every few submissions (see [`Deferring`]).
    pub(super) fn deferring(&self) -> bool {
        self.deferring.load(Ordering::SeqCst) > 0
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(super) fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }

    pub(super) fn drain(&self) {
        let _ = self.fd.read();
    }

    /// Wakes the supervisor thread if it sleeps (or is about to).
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let _ = self.fd.write(1);
        }
    }
}

/// A caller's handle for sending commands.
#[derive(Clone)]
pub(crate) struct Submitter {
    tx: Sender<Command>,
    wake: Arc<Wake>,
}

impl Submitter {
    pub(super) fn new(tx: Sender<Command>, wake: Arc<Wake>) -> Submitter {
        Submitter { tx, wake }
    }

    /// Sends a command and wakes the supervisor; gives the command back if
    /// the supervisor is gone.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Command> {
        self.send_quiet(cmd)?;
        self.wake.notify();
        Ok(())
    }

    /// Wakes the supervisor thread if it sleeps.
    pub(crate) fn nudge(&self) {
        self.wake.notify();
    }

    /// Sends a command without waking anyone: for a caller that is about to
    /// [`Driver::help_until`] it is taken care of.
    pub(crate) fn send_quiet(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)
    }
}

/// How long a helping caller spins before it sleeps (see `crate::sys::spin`):
/// up to 400 µs for quick jobs, down to 50 µs for long ones.
fn help_budget() -> Budget {
    Budget::new(
        Duration::from_micros(100),
        Duration::from_micros(50),
        Duration::from_micros(400),
    )
}

/// What a helping caller's check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Help {
    /// All it waited for is in.
    Done,
    /// Something came in: keep helping.
    Progress,
    /// Nothing yet.
    Idle,
}

/// Lets callers take supervisor steps.
pub(crate) struct Driver {
    core: Arc<Mutex<Supervisor>>,
    wake: Arc<Wake>,
    /// How long a helper spins.
    budget: Budget,
    /// A caller is helping: one at a time is enough (its steps deliver
    /// everyone's results); other waiters just wait.
    helping: AtomicBool,
}

fn lock(core: &Mutex<Supervisor>) -> MutexGuard<'_, Supervisor> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by a caller that sends batches quietly and steps the supervisor
/// only every few of them (`map` with small batches: a step per batch of
/// one item was a third of its caller's time). A batch sent and not yet
/// stepped would wait for the caller's next step — for ever, if the
/// caller's input stalls. So while a `Deferring` lives, the supervisor
/// thread never sleeps longer than [`DEFERRED_POLL`]: it takes such a
/// batch within about a millisecond whatever the caller does.
pub(crate) struct Deferring<'d>(&'d Wake);

impl Drop for Deferring<'_> {
    fn drop(&mut self) {
        self.0.deferring.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Driver {
    /// Starts deferring steps (see [`Deferring`]). A supervisor thread that
    /// chose its sleep before this is woken to choose again: either it
    /// sees the count, or this sees it sleeping and rings (the two sides
    /// store, fence, then load).
    pub(crate) fn deferring(&self) -> Deferring<'_> {
        self.wake.deferring.fetch_add(1, Ordering::SeqCst);
        self.wake.notify();
        Deferring(&self.wake)
    }

    pub(super) fn new(core: Arc<Mutex<Supervisor>>, wake: Arc<Wake>) -> Driver {
        Driver {
            core,
            wake,
            budget: help_budget(),
            helping: AtomicBool::new(false),
        }
    }

    /// Takes one supervisor step on this thread, if no one else is helping
    /// (then that helper, or the supervisor thread it wakes, takes care of
    /// what this caller sent quietly).
    pub(crate) fn step_once(&self) {
        if self.helping.swap(true, Ordering::Acquire) {
            self.wake.notify();
            return;
        }
        if let Ok(mut sup) = self.core.try_lock() {
            sup.helping();
            sup.step();
        } else {
            self.wake.notify();
        }
        self.helping.store(false, Ordering::Release);
    }

    /// Steps the supervisor on this thread until `done()` or the help budget
    /// runs out; true if `done()`. Afterwards the supervisor thread is woken
    /// if anything is left for it to do.
    pub(crate) fn help_until(&self, done: &dyn Fn() -> bool) -> bool {
        if self.helping.swap(true, Ordering::Acquire) {
            // Someone else helps; make sure the supervisor thread is not
            // needed meanwhile, then let the caller wait.
            self.leave();
            return done();
        }
        let finished = self.help(done);
        self.helping.store(false, Ordering::Release);
        self.leave();
        finished
    }

    fn help(&self, done: &dyn Fn() -> bool) -> bool {
        let budget = self.budget.get();
        let finished =
            self.steps_until(budget, &mut || if done() { Help::Done } else { Help::Idle });
        self.budget.adapt(finished, budget);
        finished
    }

    /// Steps the supervisor on this thread for as long as `check` keeps
    /// reporting progress no more than `patience` apart, or until it says
    /// done (true). For a caller collecting many answers (`map`): it leaves
    /// — and may wake the supervisor thread — once, not once per answer.
    pub(crate) fn help_while(&self, patience: Duration, check: &mut dyn FnMut() -> Help) -> bool {
        if self.helping.swap(true, Ordering::Acquire) {
            self.leave();
            return check() == Help::Done;
        }
        let finished = self.steps_until(patience, check);
        self.helping.store(false, Ordering::Release);
        self.leave();
        finished
    }

    /// The stepping loop; the wait restarts whenever `check` reports progress.
    fn steps_until(&self, budget: Duration, check: &mut dyn FnMut() -> Help) -> bool {
        let mut wait = Wait::new(budget);
        // True when done; restarts the wait on progress.
        let mut look = |wait: &mut Wait| match check() {
            Help::Done => true,
            Help::Progress => {
                *wait = Wait::new(budget);
                false
            }
            Help::Idle => false,
        };
        loop {
            if look(&mut wait) {
                return true;
            }
            // The answer comes from a worker: spin flat out only if none of
            // the busy ones runs on this CPU.
            let mut peer = NO_CPU;
            let cpu = wait.cpu();
            if let Ok(mut sup) = self.core.try_lock() {
                sup.helping();
                if !sup.step() {
                    // Terminate or join: the supervisor thread's business.
                    return look(&mut wait);
                }
                if sup.busy_worker_on(cpu) {
                    peer = cpu;
                }
            }
            if look(&mut wait) {
                return true;
            }
            if !wait.pause(peer) {
                return false;
            }
        }
    }

    /// For a caller about to block without helping (after `step_once`):
    /// wakes the supervisor thread if there is work it must see, since
    /// stepping withdrew its sleep announcements and workers no longer ring
    /// it.
    pub(crate) fn hand_over(&self) {
        self.leave();
    }

    /// Hands back to the supervisor thread: wake it if there is work it must
    /// see. If the lock is taken, its holder (the supervisor thread, or a
    /// helper that will make this same check) is active and sees it.
    fn leave(&self) {
        let needed = match self.core.try_lock() {
            Ok(sup) => sup.needs_driver(),
            Err(_) => false,
        };
        if needed {
            self.wake.notify();
        }
    }
}

/// The supervisor thread: step, sleep, repeat; shut down at the end.
pub(super) fn run(core: Arc<Mutex<Supervisor>>, epoll: Arc<Epoll>) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| main_loop(&core, &epoll)));
    if outcome.is_err() {
        log::error!("the supervisor thread panicked; the pool is terminated");
    }
    lock(&core).shutdown();
}

fn main_loop(core: &Mutex<Supervisor>, epoll: &Epoll) {
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let sleep = {
            let mut sup = lock(core);
            if !sup.step() {
                return;
            }
            sup.prepare_sleep()
        };
        // Sleep without the lock, so that callers can help meanwhile. With
        // work at hand, still poll (timeout 0) to learn of the fork server.
        let timeout = match sleep {
            Err(()) => EpollTimeout::ZERO,
            Ok(None) => EpollTimeout::NONE,
            Ok(Some(ms)) => EpollTimeout::try_from(Duration::from_millis(ms.clamp(1, 60_000)))
                .unwrap_or(EpollTimeout::NONE),
        };
        let n = epoll.wait(&mut events, timeout).unwrap_or(0);
        lock(core).after_sleep(&events[..n]);
    }
}
