//! Where a worker encodes a job's result: straight into its result ring
//! when there is room, otherwise into a spill buffer.
//!
//! Encoding in place saves copying every result once more (for a 1 MiB
//! result, a 1 MiB copy). The worker reserves the ring's free space — which
//! the mirrored mapping makes contiguous — leaves room for the record
//! header, and lets the job's serializer write after it. If the result
//! outgrows that space, what was written moves to the spill buffer and
//! encoding carries on there; the worker then sends the record the usual
//! way, streaming it through the ring if need be.

use std::io;
use std::ptr;

/// A writer over free ring space, with a spill buffer behind it.
pub(crate) struct Out<'a> {
    direct: *mut u8,
    cap: usize,
    len: usize,
    spill: &'a mut Vec<u8>,
    spilled: bool,
}

impl<'a> Out<'a> {
    /// # Safety
    /// `direct` must be valid for writes of `cap` bytes that nobody else
    /// reads or writes while the `Out` lives (`cap` may be 0).
    #[inline]
    pub(crate) unsafe fn new(direct: *mut u8, cap: usize, spill: &'a mut Vec<u8>) -> Out<'a> {
        spill.clear();
        Out {
            direct,
            cap,
            len: 0,
            spill,
            spilled: cap == 0,
        }
    }

    /// An `Out` with no ring space: everything goes to `spill`.
    #[cfg(test)]
    pub(crate) fn spill_only(spill: &'a mut Vec<u8>) -> Out<'a> {
        // SAFETY: a capacity of 0 means the pointer is never written.
        unsafe { Out::new(ptr::null_mut(), 0, spill) }
    }

    /// Appends bytes. Inlined, so that a serializer's fixed-size writes
    /// (8 bytes for a `u64`) compile to plain stores; the spill path is
    /// out of line to keep it small.
    #[inline]
    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        if !self.spilled && self.len + bytes.len() <= self.cap {
            // SAFETY: len + bytes.len() <= cap, inside the space `new` was
            // given.
            unsafe {
                ptr::copy_nonoverlapping(bytes.as_ptr(), self.direct.add(self.len), bytes.len())
            };
            self.len += bytes.len();
        } else {
            self.write_spilled(bytes);
        }
    }

    /// Appends bytes that do not fit the ring space: everything moves to
    /// the spill buffer.
    #[cold]
    #[inline(never)]
    fn write_spilled(&mut self, bytes: &[u8]) {
        if !self.spilled {
            // SAFETY: the first len bytes of the space were written.
            let written = unsafe { std::slice::from_raw_parts(self.direct, self.len) };
            self.spill.extend_from_slice(written);
            self.spilled = true;
        }
        self.spill.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Forgets everything written (to write an error message instead).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    /// Bytes written.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the bytes are in the ring space (else in the spill buffer).
    #[inline]
    pub(crate) fn is_direct(&self) -> bool {
        !self.spilled
    }
}

impl io::Write for Out<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf);
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_bytes(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_place_then_spills() {
        let mut space = [0u8; 8];
        let mut spill = vec![9; 3];
        // SAFETY: `space` is a local buffer of 8 bytes, used only via `out`.
        let mut out = unsafe { Out::new(space.as_mut_ptr(), space.len(), &mut spill) };
        out.write_bytes(b"abc");
        out.write_bytes(b"de");
        assert!(out.is_direct());
        assert_eq!(out.len(), 5);
        out.write_bytes(b"fghij");
        assert!(!out.is_direct());
        assert_eq!(out.len(), 10);
        assert_eq!(spill, b"abcdefghij");
        assert_eq!(&space[..5], b"abcde");
        // SAFETY: as above.
        let mut out = unsafe { Out::new(space.as_mut_ptr(), space.len(), &mut spill) };
        out.write_bytes(b"abcdefghi");
        out.clear();
        out.write_bytes(b"x");
        assert_eq!(spill, b"x", "clear forgets what spilled");
        let mut spill = Vec::new();
        let mut only = Out::spill_only(&mut spill);
        only.write_bytes(b"zz");
        assert!(!only.is_direct());
        assert_eq!(spill, b"zz");
    }
}
