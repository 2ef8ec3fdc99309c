//! Bringing back a fork server that died.
//!
//! When the zygote dies (killed from outside, or it broke the protocol),
//! the workers it forked keep serving: the supervisor talks to them through
//! their own shared memory, doorbells and pidfds, none of which go through
//! the zygote. What is lost is the ability to fork replacements, so the
//! supervisor forks a new zygote from the caller, the same way
//! `Pool::build` did (see [`ZygoteLink::start`]).
//!
//! That fork takes the caller's `stdout` and `stderr` locks. A thread of
//! the caller may hold one of them for as long as it likes — even while it
//! waits for this very pool (`let out = stdout().lock(); pool.map(..)`) —
//! so the supervisor must not block on them: the fork runs on a short-lived
//! helper thread that hands the new link back through a channel and wakes
//! the supervisor. Meanwhile the supervisor keeps serving the workers it
//! has.
//!
//! The old zygote's workers are re-parented to init: their death is still
//! seen (pidfd, doorbell end-of-file) but their exit status is not, so a job
//! such a worker dies under is `Crashed { signal: None, exit_code: None }`
//! unless the supervisor killed it itself (time limit, cancellation).

use super::Wake;
use crate::config::PoolConfig;
use crate::transport::seats::SpinSeats;
use crate::worker::zygote::ZygoteLink;
use crossbeam_channel::{Receiver, TryRecvError};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// How long a terminating pool waits for a fork in progress, so that the
/// new fork server is reaped with the pool rather than after it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A fork server being started on a helper thread.
pub(super) struct Restart {
    rx: Receiver<io::Result<ZygoteLink>>,
}

impl Restart {
    /// Starts forking a new fork server; `wake` is rung when it is done.
    pub(super) fn begin(
        config: Arc<PoolConfig>,
        seats: Arc<SpinSeats>,
        wake: Arc<Wake>,
    ) -> io::Result<Restart> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("forkpool-refork".into())
            .spawn(move || {
                let workers = super::worker_configs(&config);
                let link = ZygoteLink::start(&workers, &seats, config.fork_server_capacity());
                // If the supervisor is gone, the link comes back and is
                // dropped here, which stops and reaps the new zygote.
                let _ = tx.send(link);
                wake.notify();
            })?;
        Ok(Restart { rx })
    }

    /// Whether the helper is done (its answer waits in the channel).
    pub(super) fn done(&self) -> bool {
        !self.rx.is_empty()
    }

    /// The new link, once the helper is done.
    pub(super) fn poll(&self) -> Option<io::Result<ZygoteLink>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(io::Error::other(
                "the thread forking the fork server ended without an answer",
            ))),
        }
    }

    /// The pool is ending: wait (briefly) for the fork in progress and stop
    /// what it started.
    pub(super) fn abandon(self) {
        // Dropping the link (if any) closes its socket and reaps the zygote.
        drop(self.rx.recv_timeout(SHUTDOWN_WAIT));
    }
}
