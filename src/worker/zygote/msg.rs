//! The fork server's messages, and passing descriptors with them.
//!
//! The supervisor and the zygote talk over a `SOCK_SEQPACKET` socket pair:
//! each message is one fixed-size [`Msg`], optionally with descriptors
//! attached (`SCM_RIGHTS`). Both functions here use only system calls and
//! stack buffers, because the zygote calls them in a forked child of a
//! multi-threaded process.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::RawFd;
use std::ptr;

/// Supervisor → zygote: fork a worker; fds: bell-in read end, bell-out
/// write end, shared memory.
pub(crate) const SPAWN: u32 = 1;
/// Zygote → supervisor: worker `key` is pid `pid`; fd: its pidfd, if any.
pub(crate) const SPAWNED: u32 = 2;
/// Zygote → supervisor: worker `key` could not be forked; `value` is errno.
pub(crate) const SPAWN_FAILED: u32 = 3;
/// Zygote → supervisor: worker `key` (pid `pid`) exited; `value` is its wait status.
pub(crate) const EXITED: u32 = 4;

/// Supervisor → zygote: watch worker `key` (pid `pid`) of a fork server that
/// died, and kill it when shutting down; fd: its pidfd. No answer.
pub(crate) const ADOPT: u32 = 5;

/// Supervisor → zygote: the pool is joining and has asked every worker to
/// exit: report each exit as usual, and once no worker is left, exit
/// without waiting for the socket to close (the join then finds the zygote
/// gone or going instead of waking it). No answer.
pub(crate) const DRAIN: u32 = 6;

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 3;

/// One message, in either direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Msg {
    pub kind: u32,
    pub pid: i32,
    pub key: u64,
    pub value: i64,
}

/// Room for the control message of up to `MAX_FDS` descriptors, aligned
/// for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends `msg` with `fds` attached. Blocks if the socket is full.
pub(crate) fn send(sock: RawFd, msg: &Msg, fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: (msg as *const Msg).cast_mut().cast(),
        iov_len: size_of::<Msg>(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: zeroed msghdr is a valid "no name, no control" header.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = size_of_val(fds) as u32;
        hdr.msg_control = cbuf.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        hdr.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
        debug_assert!(hdr.msg_controllen <= cbuf.0.len());
        // SAFETY: msg_control points at a buffer of msg_controllen bytes, so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA has room for `bytes`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
            ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: hdr and everything it points to are live for the call.
        let n = unsafe { libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// A received message and the descriptors that came with it (close-on-exec,
/// owned by the receiver; unused entries are -1).
pub(crate) struct Received {
    pub msg: Msg,
    pub fds: [RawFd; MAX_FDS],
    pub nfds: usize,
}

/// Receives one message. `Ok(None)` means the peer closed the socket.
/// With `nonblocking`, an empty socket gives `ErrorKind::WouldBlock`.
pub(crate) fn recv(sock: RawFd, nonblocking: bool) -> io::Result<Option<Received>> {
    let mut msg = Msg::default();
    let mut iov = libc::iovec {
        iov_base: (&mut msg as *mut Msg).cast(),
        iov_len: size_of::<Msg>(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: zeroed msghdr is a valid empty header.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.0.as_mut_ptr().cast();
    hdr.msg_controllen = cbuf.0.len() as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    let n = loop {
        // SAFETY: hdr points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock, &mut hdr, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    let mut out = Received {
        msg,
        fds: [-1; MAX_FDS],
        nfds: 0,
    };
    // SAFETY: the kernel filled hdr's control area; CMSG_* walk it within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count =
                    ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = ptr::read_unaligned(data.add(i));
                    if out.nfds < MAX_FDS {
                        out.fds[out.nfds] = fd;
                        out.nfds += 1;
                    } else {
                        libc::close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if n == 0 {
        for fd in &out.fds[..out.nfds] {
            // SAFETY: closing descriptors we were just given and own.
            unsafe { libc::close(*fd) };
        }
        return Ok(None);
    }
    if n != size_of::<Msg>() {
        for fd in &out.fds[..out.nfds] {
            // SAFETY: as above.
            unsafe { libc::close(*fd) };
        }
        // A raw errno, not a boxed message: the zygote must not allocate.
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    out.msg = msg;
    Ok(Some(out))
}

/// Creates the supervisor/zygote socket pair, close-on-exec.
pub(crate) fn socket_pair() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_descriptors() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = crate::transport::bell::pair().unwrap();
        use std::os::fd::AsRawFd;
        let m = Msg {
            kind: SPAWN,
            pid: 0,
            key: 9,
            value: -1,
        };
        send(a, &m, &[r.as_raw_fd(), w.as_raw_fd()]).unwrap();
        let got = recv(b, false).unwrap().unwrap();
        assert_eq!(got.msg, m);
        assert_eq!(got.nfds, 2);
        // The passed write end works.
        crate::transport::bell::ring(got.fds[1]);
        // SAFETY: closing descriptors the test owns.
        unsafe {
            libc::close(got.fds[0]);
            libc::close(got.fds[1]);
            libc::close(a);
        }
        assert!(recv(b, false).unwrap().is_none(), "peer closed");
        // SAFETY: as above.
        unsafe { libc::close(b) };
    }
}
