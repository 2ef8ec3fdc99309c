//! Huge pages for `map`'s result buffer.
//!
//! `map` allocates its whole result vector up front (8 MB for a million
//! `u64`s). Fresh memory is faulted in one 4 KiB page at a time as results
//! land, and on a VM each fault costs microseconds: a million-item `map` in
//! a fresh process spent about a fifth of its time faulting. Where the
//! kernel's transparent huge pages are in `madvise` mode (a common default),
//! asking for huge pages on the buffer turns ~2,000 faults into a handful.
//!
//! This module owns `madvise`. The advice changes only the page size the
//! kernel backs the range with, never its contents, so it is safe on any
//! memory the caller owns; a kernel without huge pages refuses it, which is
//! ignored.

use std::mem::size_of;

/// Size of a huge page on x86-64 and most arm64 kernels.
const HUGE: usize = 2 << 20;

/// Buffers smaller than this gain nothing worth a system call.
const MIN_BYTES: usize = 2 * HUGE;

/// Advises huge pages for the whole huge pages inside `buf`'s allocation.
pub(crate) fn advise<T>(buf: &Vec<T>) {
    let bytes = buf.capacity().saturating_mul(size_of::<T>());
    if bytes < MIN_BYTES {
        return;
    }
    let start = buf.as_ptr() as usize;
    // Round inward, so the range covers only pages of this allocation.
    let lo = start.next_multiple_of(HUGE);
    let hi = (start + bytes) & !(HUGE - 1);
    if hi <= lo {
        return;
    }
    // SAFETY: [lo, hi) lies inside `buf`'s allocation, which we borrow, and
    // is page-aligned. MADV_HUGEPAGE changes how the kernel backs those
    // pages, not what they hold or whether they are mapped; its result is
    // only advice, so an error (no THP support) is ignored.
    unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice is accepted (or refused harmlessly) and the buffer keeps
    /// working: it is filled and read back in full.
    #[test]
    fn advised_buffer_still_holds_its_values() {
        let mut v: Vec<u64> = Vec::with_capacity(3 << 20);
        advise(&v);
        v.extend(0..3u64 << 20);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        advise(&Vec::<u8>::new());
        advise(&Vec::<()>::with_capacity(usize::MAX));
    }
}
