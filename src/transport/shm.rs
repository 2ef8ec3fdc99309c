//! One worker's shared memory: a status page and two byte rings.
//!
//! Each worker gets one `memfd` that both it and the supervisor map. It holds
//!
//! ```text
//! [ status page (4 KiB) ][ ring to the worker ][ ring to the supervisor ]
//! ```
//!
//! Each ring is mapped twice, back to back ("mirrored"), so that any run of up
//! to `ring_size` bytes starting anywhere in the ring is contiguous in memory:
//! a frame that wraps around the end can still be read or written with one
//! copy, and decoded in place.
//!
//! The status page's layout and the words in it are `status.rs`'s.
//!
//! Besides, a pool has one [`PoolPage`]: an anonymous shared page mapped
//! before the fork server is forked, so every process of the pool (the
//! caller, the fork server, each worker) sees the same bytes at the same
//! address without a descriptor (`seats.rs` keeps its spin seats there).
//!
//! This module owns `memfd_create`, `ftruncate`, `mmap` and `munmap`. The
//! mapping functions use raw system calls only, so a freshly forked worker
//! may call them before it enters its loop.

use crate::transport::status::StatusPage;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// Size of the status page; also the alignment of every part of the file.
pub(crate) const PAGE: usize = 4096;

/// Default size of each ring.
pub(crate) const DEFAULT_RING: usize = 2 << 20;

/// A worker's shared memory, mapped into this process.
pub(crate) struct Region {
    base: *mut u8,
    ring_size: usize,
}

// SAFETY: the mapping is plain shared memory whose shared fields are atomics;
// the region can be used from any thread of the process that maps it.
unsafe impl Send for Region {}

impl Region {
    /// Creates a new zeroed memfd for rings of `ring_size` bytes (a multiple
    /// of the page size) and maps it. Returns the mapping and the file, which
    /// is handed to the worker.
    pub(crate) fn create(ring_size: usize) -> io::Result<(Region, OwnedFd)> {
        debug_assert!(ring_size.is_multiple_of(PAGE) && ring_size.is_power_of_two());
        // SAFETY: the name is a valid NUL-terminated string; the returned fd
        // is checked and owned exactly once.
        let fd = unsafe { libc::memfd_create(c"forkpool-worker".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by memfd_create and nothing else owns it.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = (PAGE + 2 * ring_size) as libc::off_t;
        // SAFETY: ftruncate on a valid fd we own.
        if unsafe { libc::ftruncate(fd, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let region = Region::map(fd, ring_size).map_err(io::Error::from_raw_os_error)?;
        Ok((region, file))
    }

    /// Maps an existing worker memfd. Uses system calls only (no allocation,
    /// no locks), so it is safe in a freshly forked child. On failure returns
    /// the errno.
    pub(crate) fn map(fd: RawFd, ring_size: usize) -> Result<Region, i32> {
        let total = PAGE + 4 * ring_size;
        // SAFETY: reserving fresh address space with PROT_NONE touches no
        // existing mapping.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(errno());
        }
        let base = base.cast::<u8>();
        // (address offset, file offset, length) of the five views.
        let views = [
            (0, 0, PAGE),
            (PAGE, PAGE, ring_size),
            (PAGE + ring_size, PAGE, ring_size),
            (PAGE + 2 * ring_size, PAGE + ring_size, ring_size),
            (PAGE + 3 * ring_size, PAGE + ring_size, ring_size),
        ];
        for (at, off, len) in views {
            // SAFETY: each view lies inside the reservation made above, which
            // this function owns; MAP_FIXED replaces only reserved pages.
            let p = unsafe {
                libc::mmap(
                    base.add(at).cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    off as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                let e = errno();
                // SAFETY: unmapping our own reservation.
                unsafe { libc::munmap(base.cast(), total) };
                return Err(e);
            }
        }
        Ok(Region { base, ring_size })
    }

    /// The status page.
    pub(crate) fn page(&self) -> &StatusPage {
        // SAFETY: the first PAGE bytes are mapped read-write for as long as
        // self lives, are aligned to a page, and a zeroed StatusPage (all
        // atomics) is a valid value; all later access goes through atomics.
        unsafe { &*self.base.cast::<StatusPage>() }
    }

    /// Start of the data area of the ring to the worker (`to_worker == true`)
    /// or to the supervisor; `2 * ring_size` bytes are mapped from there.
    pub(crate) fn ring_data(&self, to_worker: bool) -> *mut u8 {
        let at = if to_worker {
            PAGE
        } else {
            PAGE + 2 * self.ring_size
        };
        // SAFETY: stays inside the mapping (see `map`).
        unsafe { self.base.add(at) }
    }

    pub(crate) fn ring_size(&self) -> usize {
        self.ring_size
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len describe exactly the reservation made in `map`,
        // and no reference into it outlives self (rings borrow from the
        // struct that owns the region and are dropped with it).
        unsafe { libc::munmap(self.base.cast(), PAGE + 4 * self.ring_size) };
    }
}

/// One page of memory shared by the caller and every process it forks
/// afterwards (`MAP_SHARED | MAP_ANONYMOUS`): children inherit the mapping
/// at the same address. Zeroed when made; unmapped when dropped in the
/// caller (a child never drops its copy: it leaves by `_exit`).
pub(crate) struct PoolPage {
    base: *mut u8,
}

// SAFETY: the page is plain shared memory accessed only through atomics
// (see `seats.rs`); any thread may use it.
unsafe impl Send for PoolPage {}
// SAFETY: as above: no thread holds a non-atomic reference into it.
unsafe impl Sync for PoolPage {}

impl PoolPage {
    /// Maps a fresh zeroed page.
    pub(crate) fn new() -> io::Result<PoolPage> {
        // SAFETY: a fresh anonymous mapping touches no existing memory.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PoolPage { base: base.cast() })
    }

    /// The page's first `n` words, as atomics (`n * 4 <= PAGE`).
    pub(crate) fn words(&self, n: usize) -> &[std::sync::atomic::AtomicU32] {
        assert!(n * 4 <= PAGE, "{n} words do not fit a page");
        // SAFETY: the page is mapped read-write, page-aligned and zeroed
        // (a valid AtomicU32 is any bit pattern) for as long as self lives;
        // every access goes through the atomics.
        unsafe { std::slice::from_raw_parts(self.base.cast(), n) }
    }
}

impl Drop for PoolPage {
    fn drop(&mut self) {
        // SAFETY: base is the page mapped in `new`; references into it
        // borrow from self and end with it.
        unsafe { libc::munmap(self.base.cast(), PAGE) };
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_views_alias() {
        let (r, fd) = Region::create(64 * 1024).unwrap();
        let data = r.ring_data(true);
        // SAFETY: both offsets are inside the mapping; writes go through raw
        // pointers only.
        unsafe {
            *data.add(10) = 42;
            assert_eq!(*data.add(64 * 1024 + 10), 42);
        }
        r.page().worker.current.start(7);
        let other = Region::map(std::os::fd::AsRawFd::as_raw_fd(&fd), 64 * 1024).unwrap();
        assert_eq!(other.page().worker.current.load().seq(), 7);
        let size = 64 * 1024;
        let to_sup = r.ring_data(false);
        // SAFETY: every offset is below 2 * size, inside each ring's views.
        unsafe {
            // The second ring is mirrored too, to its last byte, and is not
            // the first.
            *to_sup.add(5) = 9;
            *to_sup.add(2 * size - 1) = 3;
            assert_eq!(*to_sup.add(size + 5), 9);
            assert_eq!(*to_sup.add(size - 1), 3);
            assert_eq!(*data.add(5), 0);
            assert_eq!(*data.add(size + 5), 0);
            // The other process's mapping sees the same bytes in each view.
            let (a, b) = (other.ring_data(true), other.ring_data(false));
            assert_eq!((*a.add(10), *a.add(size + 10)), (42, 42));
            assert_eq!((*b.add(5), *b.add(size + 5)), (9, 9));
            assert_eq!((*b.add(size - 1), *b.add(2 * size - 1)), (3, 3));
        }
    }
}
