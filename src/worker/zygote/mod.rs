//! The fork server ("zygote") and the supervisor's link to it.
//!
//! The caller is multi-threaded as soon as a pool exists, and forking a
//! multi-threaded process is only safe for code that stays
//! async-signal-safe. So the pool forks the caller exactly once, at
//! `build()`, into a single-threaded zygote; every worker — the first ones
//! and every replacement — is a fork of the zygote. Workers therefore see
//! the caller's memory as it was at `build()`, shared copy-on-write.
//!
//! Around that one fork the caller holds the locks of `stdout` and `stderr`
//! (after flushing `stdout`), so no other thread can be halfway through a
//! print when the copy is taken: a job may print. Locks a job takes that
//! another caller thread held at `build()` remain the job's hazard — see
//! the crate docs.
//!
//! Lifetime: the zygote reaps its workers and reports their exit status.
//! When its socket closes — the pool is dropped, or the caller died, even
//! by SIGKILL — it kills and reaps every worker and exits; dropping the
//! [`ZygoteLink`] waits for that, so no process outlives the pool.
//! A joining pool that has asked every worker to exit sends `DRAIN`
//! ([`ZygoteLink::drain`]): the zygote then exits by itself once the last
//! one is reaped and reported, without being woken by the socket's end.

mod msg;
mod postfork;
mod server;

use crate::config::WorkerConfig;
use crate::error::ExitStatus;
use crate::transport::seats::SpinSeats;
use crate::worker::panic;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Something the zygote reported.
#[derive(Debug)]
pub(crate) enum Event {
    /// Worker `key` was forked as `pid`; `pidfd` refers to it race-free.
    Spawned {
        key: u64,
        pid: i32,
        pidfd: Option<OwnedFd>,
    },
    /// Worker `key` could not be forked.
    SpawnFailed { key: u64, error: io::Error },
    /// Worker `key` exited and was reaped.
    Exited { key: u64, status: ExitStatus },
}

/// What [`ZygoteLink::poll`] found.
#[derive(Debug)]
pub(crate) enum Polled {
    Event(Event),
    /// Nothing pending.
    Empty,
    /// The zygote is gone.
    Closed,
}

/// The supervisor's end of the fork server.
#[derive(Debug)]
pub(crate) struct ZygoteLink {
    pid: libc::pid_t,
    sock: Option<OwnedFd>,
}

impl ZygoteLink {
    /// Forks the zygote from the calling process, with room for `capacity`
    /// children at once. `configs` holds what each queue's workers see, by
    /// queue index, and `seats` the pool's spin seats (in memory every
    /// worker shares); the child keeps its own copy of both (it is forked
    /// while this frame holds them, and never returns here).
    pub(crate) fn start(
        configs: &[WorkerConfig],
        seats: &SpinSeats,
        capacity: usize,
    ) -> io::Result<ZygoteLink> {
        let (ours, theirs) = msg::socket_pair()?;
        // SAFETY: socket_pair just returned both descriptors; each is owned once.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(ours), OwnedFd::from_raw_fd(theirs)) };
        // Everything the zygote will use is set up before the fork.
        panic::capture_job_panics();
        let table = server::Table::with_capacity(capacity);
        let mut out = io::stdout().lock();
        out.flush()?;
        let err = io::stderr().lock();
        // SAFETY: the child runs only `server::serve`, which is
        // async-signal-safe until it forks workers (see module docs); it
        // never returns into the caller's code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Release the stdio locks this thread took before the fork; in
            // the child this thread is their owner.
            drop(out);
            drop(err);
            server::serve(theirs.as_raw_fd(), table, configs, seats);
        }
        drop(out);
        drop(err);
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(theirs);
        Ok(ZygoteLink {
            pid,
            sock: Some(ours),
        })
    }

    /// The socket, for the supervisor's poller.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_ref().expect("zygote link is open").as_fd()
    }

    /// Asks for worker `key` of queue `queue` (it gets that queue's
    /// `WorkerConfig`) with its three descriptors: bell-in read end,
    /// bell-out write end, shared memory.
    pub(crate) fn spawn(&self, key: u64, queue: usize, fds: [BorrowedFd<'_>; 3]) -> io::Result<()> {
        let m = msg::Msg {
            kind: msg::SPAWN,
            pid: 0,
            key,
            value: queue as i64,
        };
        let raw = fds.map(|f| f.as_raw_fd());
        msg::send(self.fd().as_raw_fd(), &m, &raw)
    }

    /// The pool is joining and every worker was asked to exit: the zygote
    /// exits on its own once the last one is reaped (see `msg::DRAIN`).
    pub(crate) fn drain(&self) -> io::Result<()> {
        let m = msg::Msg {
            kind: msg::DRAIN,
            pid: 0,
            key: 0,
            value: 0,
        };
        msg::send(self.fd().as_raw_fd(), &m, &[])
    }

    /// Hands over worker `key` (pid `pid`) of a fork server that died, by
    /// its pidfd: this zygote kills it, too, when the caller goes away.
    pub(crate) fn adopt(&self, key: u64, pid: i32, pidfd: BorrowedFd<'_>) -> io::Result<()> {
        let m = msg::Msg {
            kind: msg::ADOPT,
            pid,
            key,
            value: 0,
        };
        msg::send(self.fd().as_raw_fd(), &m, &[pidfd.as_raw_fd()])
    }

    /// The next report from the zygote, without blocking.
    pub(crate) fn poll(&self) -> Polled {
        let got = match msg::recv(self.fd().as_raw_fd(), true) {
            Ok(Some(r)) => r,
            Ok(None) => return Polled::Closed,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Polled::Empty,
            Err(_) => return Polled::Closed,
        };
        // SAFETY: recv hands over ownership of the descriptors it received.
        let mut fds = got.fds[..got.nfds]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
        let m = got.msg;
        Polled::Event(match m.kind {
            msg::SPAWNED => Event::Spawned {
                key: m.key,
                pid: m.pid,
                pidfd: fds.next(),
            },
            msg::SPAWN_FAILED => Event::SpawnFailed {
                key: m.key,
                error: io::Error::from_raw_os_error(m.value as i32),
            },
            msg::EXITED => Event::Exited {
                key: m.key,
                status: ExitStatus(m.value as i32),
            },
            _ => return Polled::Closed,
        })
    }
}

impl Drop for ZygoteLink {
    fn drop(&mut self) {
        // Closing the socket tells the zygote to kill and reap every worker
        // and exit; then reap the zygote itself.
        self.sock = None;
        let mut status = 0;
        // SAFETY: waiting for our own child; it exits promptly on EOF.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}
