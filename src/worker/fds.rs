//! The descriptor contract between the fork server and a worker.
//!
//! A worker starts with exactly three descriptors above stderr, moved into
//! place by `zygote/postfork.rs::install_fds` right after `fork`: the read
//! end of its inbound doorbell, the write end of its outbound doorbell, and
//! its shared memory (mapped, then closed). A job must not touch 3 and 4:
//! a byte on the doorbell that is not a bell makes the supervisor kill the
//! worker.

use std::os::fd::RawFd;

/// The doorbell the supervisor rings (read end).
pub(crate) const WORKER_BELL_IN: RawFd = 3;
/// The doorbell the worker rings (write end).
pub(crate) const WORKER_BELL_OUT: RawFd = 4;
/// The worker's shared memory, until it is mapped.
pub(crate) const WORKER_SHM: RawFd = 5;
