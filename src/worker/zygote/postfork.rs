//! What a freshly forked child may do before it runs its loop.
//!
//! Everything here is a raw system call on stack data: no allocation, no
//! lock, no formatting, no panic. The zygote is forked from the caller, which
//! may be multi-threaded, so until it reaches its own loop it must stay
//! within what is async-signal-safe; the same code then serves the zygote's
//! own forks of workers.

use std::mem::zeroed;
use std::os::fd::RawFd;
use std::ptr;

/// Ends the process at once: no destructors, no `atexit` handlers (which
/// belong to the caller's copy of the program, not to this child).
pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor numbered `first` or above.
pub(crate) fn close_from(first: RawFd) {
    // SAFETY: close_range only closes descriptors; nothing in this child
    // refers to them after this point.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close one by one up to the descriptor limit.
    // SAFETY: an all-zero rlimit is a valid value of this plain C struct.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: getrlimit writes into a local struct.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as RawFd
    } else {
        1024
    };
    for fd in first..max {
        // SAFETY: closing a descriptor number; EBADF for unused ones is fine.
        unsafe { libc::close(fd) };
    }
}

/// Moves `fds` to descriptors 3, 4, ... in order and closes every other
/// descriptor above 2. Returns false if a `dup` failed.
pub(crate) fn install_fds(fds: &[RawFd]) -> bool {
    let n = fds.len() as RawFd;
    let mut tmp = [-1; 8];
    assert!(fds.len() <= tmp.len());
    for (i, &fd) in fds.iter().enumerate() {
        // Copy above the target range first, so no target clobbers a source.
        // SAFETY: F_DUPFD on a descriptor this process owns.
        tmp[i] = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3 + n) };
        if tmp[i] < 0 {
            return false;
        }
    }
    for (i, &copy) in tmp[..fds.len()].iter().enumerate() {
        // SAFETY: dup2 onto a fixed number; whatever was there is replaced.
        if unsafe { libc::dup2(copy, 3 + i as RawFd) } < 0 {
            return false;
        }
    }
    close_from(3 + n);
    true
}

/// Sets close-on-exec on `fd`, so a job's subprocess does not inherit it.
pub(crate) fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn set_handler(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction with an empty mask and no flags, and a
    // handler that is SIG_DFL, SIG_IGN or an async-signal-safe function.
    unsafe {
        let mut sa: libc::sigaction = zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, ptr::null_mut());
    }
}

extern "C" fn soft_limit_notice(_: libc::c_int) {
    // Nothing to do: the flag lives in the status page. The signal only
    // interrupts a blocking system call so the job gets to look at it.
}

/// Signal dispositions for the zygote, which its workers inherit: Ctrl-C
/// is the caller's business (ignored here), SIGTERM and SIGCHLD do their
/// default, handlers the caller installed are dropped (their state lives
/// in the caller) — including Rust's stack-overflow handler for
/// SIGSEGV/SIGBUS, which would swallow a raised SIGSEGV: in a worker every
/// segfault is a crash the supervisor reports. Every signal is unblocked.
pub(crate) fn reset_signals() {
    for sig in 1..32 {
        match sig {
            libc::SIGKILL | libc::SIGSTOP => {}
            libc::SIGINT | libc::SIGPIPE => set_handler(sig, libc::SIG_IGN),
            libc::SIGTERM | libc::SIGCHLD => set_handler(sig, libc::SIG_DFL),
            _ => {
                // SAFETY: an all-zero sigaction is a valid value of this C struct.
                let mut old: libc::sigaction = unsafe { zeroed() };
                // SAFETY: querying the current action into a local struct.
                let ok = unsafe { libc::sigaction(sig, ptr::null(), &mut old) } == 0;
                if ok && old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                    set_handler(sig, libc::SIG_DFL);
                }
            }
        }
    }
    // SAFETY: unblocking every signal of this single-threaded process.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
    }
}

/// A worker's one change to the dispositions it inherits from the zygote
/// ([`reset_signals`], which the zygote ran before it forked any worker;
/// the zygote changes none after): a no-op SIGUSR1 handler without
/// `SA_RESTART`, so that the soft-limit notice interrupts a blocking call.
/// (Resetting all 31 again cost every worker ~30 system calls on its way
/// to ready.)
pub(crate) fn worker_signals() {
    set_handler(
        libc::SIGUSR1,
        soft_limit_notice as extern "C" fn(libc::c_int) as libc::sighandler_t,
    );
}

/// A pidfd for our own unreaped child `pid` (so it cannot be a recycled
/// pid), or -1 where the kernel has none.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> RawFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd >= 0 {
        set_cloexec(fd);
    }
    fd
}

/// Sends SIGKILL through a pidfd (which cannot name a recycled pid).
pub(crate) fn pidfd_kill(pidfd: RawFd) {
    // SAFETY: pidfd_send_signal on a descriptor we own; no pointer is passed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            libc::SIGKILL,
            ptr::null::<u8>(),
            0,
        )
    };
}
