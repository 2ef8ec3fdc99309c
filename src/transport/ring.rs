//! A single-producer, single-consumer byte ring in shared memory.
//!
//! The ring behaves like a pipe without the kernel: the producer copies bytes
//! in and *publishes* its write position; the consumer copies them out and
//! *consumes* them. Neither side makes a system call unless the other one is
//! asleep: a consumer about to sleep sets `consumer_sleeping`, and the
//! producer that publishes after that rings the consumer's doorbell (a pipe,
//! see [`crate::transport::bell`]); the same handshake runs the other way when the
//! producer waits for space. Both handshakes are store-then-load on each side
//! with a `SeqCst` fence in between, so a wake-up cannot be lost.
//!
//! Because the data area is mapped twice back to back (see [`crate::transport::shm`]),
//! any `len <= size` bytes at any position are contiguous.
//!
//! Positions only grow; `write - read` is the number of bytes in the ring.
//! Either side may be the untrusted worker, so positions read from the other
//! side are checked: an impossible position is reported as [`Corrupt`].

use crate::transport::status::RingCtl;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{Ordering, fence};

/// [`Producer::space`] looks at the consumer's position again below this.
const SPACE_REFRESH: usize = 64 * 1024;

/// The other side left the ring's positions in an impossible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// The producer's end of a ring.
pub(crate) struct Producer {
    ctl: *const RingCtl,
    data: *mut u8,
    size: u64,
    /// `size - 1`: the size is a power of two, so positions wrap with a mask.
    mask: u64,
    /// Write position including unpublished bytes.
    local: u64,
    /// Last write position published.
    published: u64,
    /// Last read position seen (the consumer may only move it forward).
    read_seen: u64,
}

/// The consumer's end of a ring.
pub(crate) struct Consumer {
    ctl: *const RingCtl,
    data: *const u8,
    size: u64,
    mask: u64,
    /// Read position.
    local: u64,
}

// SAFETY: the pointers refer to a shared mapping that the owner keeps alive
// alongside the ring; all shared state is accessed atomically or through the
// single-producer / single-consumer protocol documented above.
unsafe impl Send for Producer {}
// SAFETY: as for `Producer`.
unsafe impl Send for Consumer {}

impl Producer {
    /// # Safety
    /// `ctl` and `data` (with `2 * size` mirrored bytes) must stay mapped for
    /// as long as the producer is used, and this must be the only producer.
    pub(crate) unsafe fn new(ctl: &RingCtl, data: *mut u8, size: usize) -> Producer {
        assert!(size.is_power_of_two());
        let local = ctl.write.0.load(Ordering::Relaxed);
        Producer {
            ctl,
            data,
            size: size as u64,
            mask: size as u64 - 1,
            local,
            published: local,
            read_seen: ctl.read.0.load(Ordering::Relaxed),
        }
    }

    fn ctl(&self) -> &RingCtl {
        // SAFETY: guaranteed mapped by the contract of `new`.
        unsafe { &*self.ctl }
    }

    pub(crate) fn size(&self) -> usize {
        self.size as usize
    }

    /// Bytes that can be written now.
    pub(crate) fn free(&mut self) -> Result<usize, Corrupt> {
        let read = self.ctl().read.0.load(Ordering::Acquire);
        if read < self.read_seen || read > self.local {
            return Err(Corrupt);
        }
        self.read_seen = read;
        Ok((self.size - (self.local - read)) as usize)
    }

    /// Copies `bytes` in at the write position. The caller checked that
    /// [`free`](Self::free) is at least `bytes.len()`.
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        assert!(
            (self.local - self.read_seen) + bytes.len() as u64 <= self.size,
            "ring overrun"
        );
        let at = (self.local & self.mask) as usize;
        // SAFETY: at + len <= 2 * size stays in the mirrored mapping; the
        // bytes between read and write belong to the producer until published
        // and the assertion above keeps us behind the consumer.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(at), bytes.len()) };
        self.local += bytes.len() as u64;
    }

    /// Writes `head` then `body` if they fit, looking at the consumer's read
    /// position only when the space last seen is not enough. False (nothing
    /// written) if they do not fit, or the consumer's position is corrupt.
    pub(crate) fn try_put(&mut self, head: &[u8], body: &[u8]) -> bool {
        let n = (head.len() + body.len()) as u64;
        if (self.local - self.read_seen) + n > self.size
            && !self.free().is_ok_and(|free| free as u64 >= n)
        {
            return false;
        }
        self.put(head);
        self.put(body);
        true
    }

    /// The free space at the write position — contiguous, thanks to the
    /// mirrored mapping — for writing in place: its start and length.
    /// Nothing is written or claimed until [`advance`](Self::advance).
    #[inline]
    pub(crate) fn space(&mut self) -> (*mut u8, usize) {
        // The consumer's read position sits on a line the other process
        // writes: read it only when the space last seen runs low.
        let mut free = (self.size - (self.local - self.read_seen)) as usize;
        if free < SPACE_REFRESH {
            free = self.free().unwrap_or(0);
        }
        let at = (self.local & self.mask) as usize;
        // SAFETY: at < size, inside the mapping.
        (unsafe { self.data.add(at) }, free)
    }

    /// Claims `head` plus `body_len` bytes already written in place after
    /// it (at `space().0 + N`), writing `head` first. The header's length is
    /// a constant, so its copy compiles to a few moves: this runs once per
    /// answer, and a `memmove` call per 5-byte header cost a worker 5% of
    /// its time on tiny jobs.
    #[inline]
    pub(crate) fn advance_with_head<const N: usize>(&mut self, head: &[u8; N], body_len: usize) {
        let n = (N + body_len) as u64;
        assert!(
            (self.local - self.read_seen) + n <= self.size,
            "ring overrun"
        );
        let at = (self.local & self.mask) as usize;
        // SAFETY: as in `put`: at + N <= 2 * size stays in the mirrored
        // mapping, and the assertion keeps us behind the consumer.
        unsafe { ptr::copy_nonoverlapping(head.as_ptr(), self.data.add(at), N) };
        self.local += n;
    }

    /// Makes everything written visible to a consumer that looks, without
    /// waking one that sleeps: a plain release store, cheap enough per record.
    #[inline]
    pub(crate) fn commit(&mut self) {
        if self.local != self.published {
            self.published = self.local;
            self.ctl().write.0.store(self.local, Ordering::Release);
        }
    }

    /// Whether the consumer has announced that it sleeps. Read without a
    /// fence: a stale answer only delays a wake-up until the next
    /// [`publish`](Self::publish), which is fenced.
    #[inline]
    pub(crate) fn consumer_asleep(&self) -> bool {
        self.ctl().consumer_sleeping.0.load(Ordering::Relaxed) != 0
    }

    /// Commits, then checks (fenced) whether the consumer sleeps. Returns
    /// true when its doorbell must be rung.
    #[must_use = "a sleeping consumer must be woken"]
    pub(crate) fn publish(&mut self) -> bool {
        self.commit();
        fence(Ordering::SeqCst);
        let ctl = self.ctl();
        ctl.consumer_sleeping.0.load(Ordering::Relaxed) != 0
            && ctl.consumer_sleeping.0.swap(0, Ordering::AcqRel) != 0
    }

    /// Asks to be woken when at least `need` bytes are free. Returns false
    /// (and withdraws the request) when they already are.
    pub(crate) fn request_space(&mut self, need: usize) -> Result<bool, Corrupt> {
        self.ctl().producer_waiting.0.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.free()? >= need {
            self.ctl().producer_waiting.0.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }
}

impl Consumer {
    /// # Safety
    /// Same contract as [`Producer::new`], for the only consumer.
    pub(crate) unsafe fn new(ctl: &RingCtl, data: *const u8, size: usize) -> Consumer {
        assert!(size.is_power_of_two());
        Consumer {
            ctl,
            data,
            size: size as u64,
            mask: size as u64 - 1,
            local: ctl.read.0.load(Ordering::Relaxed),
        }
    }

    fn ctl(&self) -> &RingCtl {
        // SAFETY: guaranteed mapped by the contract of `new`.
        unsafe { &*self.ctl }
    }

    pub(crate) fn size(&self) -> usize {
        self.size as usize
    }

    /// Bytes published and not yet consumed.
    pub(crate) fn available(&self) -> Result<usize, Corrupt> {
        let end = self.ctl().write.0.load(Ordering::Acquire);
        match end.checked_sub(self.local) {
            Some(n) if n <= self.size => Ok(n as usize),
            _ => Err(Corrupt),
        }
    }

    /// Copies `dst.len()` bytes starting `off` bytes past the read position.
    /// The caller checked that they are available. This is the only way the
    /// supervisor reads a worker's bytes: it never forms a reference into
    /// memory the other process may still be writing.
    pub(crate) fn copy_out(&self, off: usize, dst: &mut [u8]) {
        // SAFETY: u8 and MaybeUninit<u8> have the same layout, and copy_into
        // only writes initialised bytes.
        let dst = unsafe { &mut *(dst as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.copy_into(off, dst);
    }

    /// [`copy_out`](Self::copy_out) into memory not yet initialised (a
    /// vector's spare capacity), which saves zeroing it first.
    pub(crate) fn copy_into(&self, off: usize, dst: &mut [MaybeUninit<u8>]) {
        assert!(off + dst.len() <= self.size as usize, "ring overread");
        let at = ((self.local + off as u64) & self.mask) as usize;
        // SAFETY: at + len < 2 * size stays inside the mirrored mapping, and
        // dst is valid for len bytes of writes.
        unsafe {
            ptr::copy_nonoverlapping(self.data.add(at), dst.as_mut_ptr().cast::<u8>(), dst.len())
        };
    }

    /// Borrows `len` available bytes at `off` past the read position.
    ///
    /// # Safety
    /// Only for a ring whose producer is trusted to follow the protocol (the
    /// supervisor, seen from a worker): the bytes must be available and the
    /// producer must not write them until they are consumed.
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.size as usize, "ring overread");
        let at = ((self.local + off as u64) & self.mask) as usize;
        // SAFETY: in bounds as above; immutability is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.data.add(at), len) }
    }

    /// Releases `n` bytes to the producer. Returns true when the producer
    /// was waiting for space and its doorbell must be rung.
    #[must_use = "a producer waiting for space must be woken"]
    pub(crate) fn consume(&mut self, n: usize) -> bool {
        self.local += n as u64;
        let ctl = self.ctl();
        ctl.read.0.store(self.local, Ordering::Release);
        fence(Ordering::SeqCst);
        ctl.producer_waiting.0.load(Ordering::Relaxed) != 0
            && ctl.producer_waiting.0.swap(0, Ordering::AcqRel) != 0
    }

    /// Announces that the consumer is about to sleep until its doorbell
    /// rings. Returns false (and withdraws) if `need` bytes arrived meanwhile.
    pub(crate) fn prepare_sleep(&self, need: usize) -> Result<bool, Corrupt> {
        self.ctl().consumer_sleeping.0.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.available()? >= need {
            self.ctl().consumer_sleeping.0.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws a sleep announcement after waking up.
    pub(crate) fn awake(&self) {
        self.ctl().consumer_sleeping.0.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::shm::Region;

    #[test]
    fn bytes_wrap_and_flags_handshake() {
        let size = 16 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let ctl = &region.page().to_worker;
        // SAFETY: region outlives both ends; one producer, one consumer.
        let (mut p, mut c) = unsafe {
            (
                Producer::new(ctl, region.ring_data(true), size),
                Consumer::new(ctl, region.ring_data(true), size),
            )
        };
        let chunk: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        for round in 0..10 {
            assert!(p.free().unwrap() >= chunk.len());
            p.put(&chunk);
            assert_eq!(c.available().unwrap(), 0, "unpublished bytes are invisible");
            let wake = p.publish();
            assert_eq!(wake, round == 3, "only a sleeping consumer is woken");
            let mut out = vec![0; chunk.len()];
            c.copy_out(0, &mut out);
            assert_eq!(out, chunk);
            // SAFETY: this test is the trusted producer.
            assert_eq!(unsafe { c.slice(0, chunk.len()) }, &chunk[..]);
            assert!(!c.consume(chunk.len()), "nobody waits for space");
            if round == 2 {
                assert!(c.prepare_sleep(1).unwrap());
            }
        }
        // Producer waiting for space is told when the consumer frees it.
        assert!(p.free().unwrap() >= chunk.len());
        p.put(&chunk);
        assert!(!p.publish(), "the consumer is awake");
        assert!(p.request_space(size).unwrap());
        assert!(c.consume(chunk.len()));
        assert!(!p.request_space(size).unwrap());
    }

    #[test]
    fn impossible_positions_are_corrupt() {
        let size = 4096;
        let (region, _fd) = Region::create(size).unwrap();
        let ctl = &region.page().to_supervisor;
        // SAFETY: as above.
        let (mut p, c) = unsafe {
            (
                Producer::new(ctl, region.ring_data(false), size),
                Consumer::new(ctl, region.ring_data(false), size),
            )
        };
        ctl.write.0.store(size as u64 + 1, Ordering::Relaxed);
        assert_eq!(c.available(), Err(Corrupt));
        ctl.read.0.store(5, Ordering::Relaxed);
        assert_eq!(p.free(), Err(Corrupt), "read ahead of write");
    }
}
