//! Doorbells: pipes that carry nothing but wake-ups, and a death notice.
//!
//! Each worker has two: one the supervisor rings to wake the worker, one the
//! worker rings to wake the supervisor. A doorbell byte is always [`BELL`];
//! anything else on a worker's bell means the worker (or a job in it) wrote
//! to a descriptor it should not have, and the supervisor stops believing it.
//!
//! The pipes also give the one signal shared memory cannot: when a process
//! dies, its pipe ends close, and the other side reads end-of-file.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The only byte a doorbell carries.
pub(crate) const BELL: u8 = 0xB1;

/// Creates a doorbell pipe: (read end, write end), both close-on-exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Makes a descriptor non-blocking.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Rings a bell whose write end is `fd`. Never blocks (the write end is
/// non-blocking); a full pipe already holds a wake-up, and a closed one
/// means the other side is gone, which its own end reports.
pub(crate) fn ring(fd: RawFd) {
    // SAFETY: writing one byte from a valid buffer; errors are ignored on
    // purpose (see above). Async-signal-safe.
    unsafe { libc::write(fd, (&BELL as *const u8).cast(), 1) };
}

/// What draining a non-blocking bell found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Only bells (possibly none).
    Bells,
    /// The other side closed its end: it is dead or dying.
    Eof,
    /// A byte that is not a bell: the writer is not to be believed.
    Garbage,
}

/// Reads everything pending on a non-blocking bell.
pub(crate) fn drain(fd: &OwnedFd) -> Drained {
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reading into a local buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Drained::Eof,
            n if n > 0 => {
                if buf[..n as usize].iter().any(|&b| b != BELL) {
                    return Drained::Garbage;
                }
            }
            _ => {
                return match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => Drained::Bells,
                    _ => Drained::Eof,
                };
            }
        }
    }
}

/// Blocks on a blocking bell until it rings. Returns false at end-of-file.
/// A signal (the soft-limit notice) simply means "look again".
pub(crate) fn wait(fd: RawFd) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a local buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    n > 0 || (n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bells_garbage_and_eof() {
        let (r, w) = pair().unwrap();
        set_nonblocking(std::os::fd::AsFd::as_fd(&r)).unwrap();
        assert_eq!(drain(&r), Drained::Bells);
        ring(w.as_raw_fd());
        ring(w.as_raw_fd());
        assert_eq!(drain(&r), Drained::Bells);
        nix::unistd::write(&w, b"GET / HTTP/1.1").unwrap();
        assert_eq!(drain(&r), Drained::Garbage);
        drop(w);
        assert_eq!(drain(&r), Drained::Eof);
    }
}
