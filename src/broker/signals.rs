//! SIGTERM and SIGINT for a worker host: the first asks it to stop (finish
//! or hand back its jobs), a second to stop now.
//!
//! The handler only counts the signal in an atomic — async-signal-safe —
//! and the host's loop, which wakes at least every 200 ms, reads the count.
//! The handlers are installed when [`Host::run`](super::Host::run) starts
//! (after the host's pool forked its fork server, so no child inherits
//! them) and the previous dispositions are put back when it returns.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Signals received since the handlers were installed.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// How many of the two signals arrived since the last `install`.
pub(crate) fn received() -> usize {
    RECEIVED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    RECEIVED.fetch_add(1, Ordering::SeqCst);
}

/// The host's handlers, while it lives; the previous ones come back on
/// drop.
pub(crate) struct Handlers {
    previous: Vec<(Signal, SigAction)>,
}

impl Handlers {
    /// Counts SIGTERM and SIGINT from now on.
    pub(crate) fn install() -> Handlers {
        RECEIVED.store(0, Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut previous = Vec::new();
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            // SAFETY: the handler only increments an atomic, which is
            // async-signal-safe; it touches no lock, no allocation.
            if let Ok(old) = unsafe { sigaction(sig, &action) } {
                previous.push((sig, old));
            }
        }
        Handlers { previous }
    }

    /// How many of the two signals arrived.
    pub(crate) fn received(&self) -> usize {
        received()
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: puts back the disposition that was there before
            // `install`, as the kernel gave it to us.
            let _ = unsafe { sigaction(sig, &old) };
        }
    }
}
