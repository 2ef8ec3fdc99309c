//! The fork server's loop: fork workers on request, report their exits,
//! and take them all down when the caller goes away.
//!
//! The zygote is a single-threaded copy of the caller taken at
//! `Pool::build()` (or when the previous one died). It keeps one descriptor
//! (its socket to the supervisor) plus one pidfd per live worker, and uses
//! only system calls and the fixed-size [`Table`] allocated before it was
//! forked.
//!
//! A fork server that replaces a dead one also *adopts* the dead one's
//! workers (now init's children): it gets their pidfds, forgets each when
//! its pidfd reports it gone, and kills them with its own children when the
//! caller goes away — so a caller killed with SIGKILL still takes every
//! worker along.

use super::msg::{self, ADOPT, DRAIN, EXITED, Msg, SPAWN, SPAWN_FAILED, SPAWNED};
use super::postfork;
use crate::config::WorkerConfig;
use crate::transport::seats::SpinSeats;
use crate::transport::shm::Region;
use crate::worker::fds::{WORKER_BELL_IN, WORKER_BELL_OUT, WORKER_SHM};
use crate::worker::run;
use std::os::fd::RawFd;

/// The zygote's socket, after `install_fds`.
const SOCK: RawFd = 3;

/// Live children, in storage allocated before the zygote was forked.
pub(crate) struct Table {
    keys: Vec<u64>,
    pids: Vec<libc::pid_t>,
    pidfds: Vec<RawFd>,
    /// Not our child: a dead fork server's worker, known by its pidfd only.
    adopted: Vec<bool>,
    /// Index in `polls` of each entry's pidfd, for the last poll.
    slots: Vec<usize>,
    polls: Vec<libc::pollfd>,
    len: usize,
    /// Asked to exit once no worker is left (`DRAIN`).
    draining: bool,
}

impl Table {
    /// Room for `capacity` simultaneous children. Allocates: call before fork.
    pub(crate) fn with_capacity(capacity: usize) -> Table {
        Table {
            keys: vec![0; capacity],
            pids: vec![0; capacity],
            pidfds: vec![-1; capacity],
            adopted: vec![false; capacity],
            slots: vec![0; capacity],
            polls: vec![
                libc::pollfd {
                    fd: -1,
                    events: 0,
                    revents: 0
                };
                capacity + 1
            ],
            len: 0,
            draining: false,
        }
    }

    fn remove(&mut self, i: usize) {
        if self.pidfds[i] >= 0 {
            // SAFETY: closing our own pidfd for a reaped child.
            unsafe { libc::close(self.pidfds[i]) };
        }
        let last = self.len - 1;
        self.keys[i] = self.keys[last];
        self.pids[i] = self.pids[last];
        self.pidfds[i] = self.pidfds[last];
        self.adopted[i] = self.adopted[last];
        self.slots[i] = self.slots[last];
        self.len = last;
    }
}

/// Runs the fork server in the freshly forked zygote. Never returns.
pub(crate) fn serve(
    sock: RawFd,
    mut table: Table,
    configs: &[WorkerConfig],
    seats: &SpinSeats,
) -> ! {
    if !postfork::install_fds(&[sock]) {
        postfork::exit(70);
    }
    // dup2 cleared close-on-exec; the zygote never execs, but nothing of
    // the pool's may leak into a program started by a descendant.
    postfork::set_cloexec(SOCK);
    postfork::reset_signals();
    loop {
        table.polls[0] = libc::pollfd {
            fd: SOCK,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut n = 1;
        let mut blind = false;
        for i in 0..table.len {
            if table.pidfds[i] >= 0 {
                table.slots[i] = n;
                table.polls[n] = libc::pollfd {
                    fd: table.pidfds[i],
                    events: libc::POLLIN,
                    revents: 0,
                };
                n += 1;
            } else {
                blind = true;
            }
        }
        // Without pidfds (old kernels), look for exits every 50 ms.
        let timeout = if blind { 50 } else { -1 };
        // SAFETY: polls has at least n initialised entries.
        let r = unsafe { libc::poll(table.polls.as_mut_ptr(), n as libc::nfds_t, timeout) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            shutdown(&mut table);
        }
        forget_adopted(&mut table);
        reap(&mut table);
        if table.polls[0].revents != 0 {
            serve_request(&mut table, configs, seats);
        }
        if table.draining && table.len == 0 {
            // Every exit was reported (each EXITED went out before this);
            // the supervisor reads them, then the socket's end.
            postfork::exit(0);
        }
    }
}

/// Forgets adopted workers whose pidfd reported them gone (their exit is
/// not ours to report: the supervisor sees it on its own pidfd). Runs
/// before `reap`, while `slots` still match the last poll.
fn forget_adopted(table: &mut Table) {
    for i in (0..table.len).rev() {
        if table.adopted[i] && table.polls[table.slots[i]].revents != 0 {
            table.remove(i);
        }
    }
}

/// Reports and forgets every child that has exited.
fn reap(table: &mut Table) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let Some(i) = (0..table.len).find(|&i| !table.adopted[i] && table.pids[i] == pid) else {
            continue;
        };
        let m = Msg {
            kind: EXITED,
            pid,
            key: table.keys[i],
            value: status as i64,
        };
        table.remove(i);
        if msg::send(SOCK, &m, &[]).is_err() {
            shutdown(table);
        }
    }
}

fn serve_request(table: &mut Table, configs: &[WorkerConfig], seats: &SpinSeats) {
    let req = match msg::recv(SOCK, true) {
        Ok(Some(req)) => req,
        Ok(None) => shutdown(table),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(_) => shutdown(table),
    };
    let key = req.msg.key;
    let fail = |table: &mut Table, errno: i32| {
        for fd in &req.fds[..req.nfds] {
            // SAFETY: closing descriptors we received and own.
            unsafe { libc::close(*fd) };
        }
        let m = Msg {
            kind: SPAWN_FAILED,
            pid: 0,
            key,
            value: errno as i64,
        };
        if msg::send(SOCK, &m, &[]).is_err() {
            shutdown(table);
        }
    };
    if req.msg.kind == DRAIN && req.nfds == 0 {
        table.draining = true;
        return;
    }
    if req.msg.kind == ADOPT && req.nfds == 1 {
        let i = table.len;
        if i == table.keys.len() {
            // SAFETY: closing the descriptor we received and own.
            unsafe { libc::close(req.fds[0]) };
            return;
        }
        postfork::set_cloexec(req.fds[0]);
        table.keys[i] = key;
        table.pids[i] = req.msg.pid;
        table.pidfds[i] = req.fds[0];
        table.adopted[i] = true;
        table.len += 1;
        return;
    }
    // The queue whose settings the worker takes.
    let config = usize::try_from(req.msg.value)
        .ok()
        .and_then(|q| configs.get(q));
    let (Some(config), true) = (config, req.msg.kind == SPAWN && req.nfds == 3) else {
        return fail(table, libc::EINVAL);
    };
    if table.len == table.keys.len() {
        return fail(table, libc::EAGAIN);
    }
    // SAFETY: the zygote is single-threaded; the child only runs
    // `become_worker`, which stays async-signal-safe until the worker loop.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EAGAIN);
        return fail(table, e);
    }
    if pid == 0 {
        become_worker(req.fds, config, seats);
    }
    for fd in &req.fds[..req.nfds] {
        // SAFETY: the worker has its copies; ours are closed.
        unsafe { libc::close(*fd) };
    }
    let pidfd = postfork::pidfd_open(pid);
    let i = table.len;
    table.keys[i] = key;
    table.pids[i] = pid;
    table.pidfds[i] = pidfd;
    table.adopted[i] = false;
    table.len += 1;
    let m = Msg {
        kind: SPAWNED,
        pid,
        key,
        value: 0,
    };
    let fds = [pidfd];
    let sent = msg::send(SOCK, &m, if pidfd >= 0 { &fds } else { &[] });
    if sent.is_err() {
        shutdown(table);
    }
}

/// Turns the freshly forked child into a worker. Never returns.
fn become_worker(fds: [RawFd; 3], config: &WorkerConfig, seats: &SpinSeats) -> ! {
    if !postfork::install_fds(&fds) {
        postfork::exit(70);
    }
    postfork::set_cloexec(WORKER_BELL_IN);
    postfork::set_cloexec(WORKER_BELL_OUT);
    postfork::worker_signals();
    let region = match Region::map(WORKER_SHM, config.ring_size) {
        Ok(r) => r,
        Err(_) => postfork::exit(71),
    };
    // SAFETY: the mapping holds its own reference to the file.
    unsafe { libc::close(WORKER_SHM) };
    run::run(region, config, seats)
}

/// Kills and reaps every child, then exits: the caller is gone (or asked).
fn shutdown(table: &mut Table) -> ! {
    for i in 0..table.len {
        if table.adopted[i] {
            postfork::pidfd_kill(table.pidfds[i]);
        } else {
            // SAFETY: our unreaped children, so the pids cannot be recycled.
            unsafe { libc::kill(table.pids[i], libc::SIGKILL) };
        }
    }
    for i in (0..table.len).filter(|&i| !table.adopted[i]) {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        while unsafe { libc::waitpid(table.pids[i], &mut status, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    postfork::exit(0)
}
