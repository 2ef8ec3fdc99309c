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
//! Positions only grow; `write - read` is the number of bytes in the ring,
//! counting a skipped stretch (below) until the consumer has passed it.
//! Either side may be the untrusted worker, so positions read from the other
//! side are checked: an impossible position is reported as [`Corrupt`].
//!
//! # Going back to the start
//!
//! A fresh ring's pages are faulted in (and zeroed) on first touch, by
//! each process that maps them — about a microsecond per 4 KiB page here.
//! A producer that only ever moved forward would touch the whole ring
//! before it reused a byte of it. So at a frame's start (the caller knows
//! where frames start; the ring does not), a producer may *wrap*
//! ([`Producer::wrap_to_start`]): when the ring's first bytes are free, it
//! records its position `w` in the ring's `wrap` word and continues at `t`,
//! the next multiple of the size. Positions still only grow, and the
//! bytes between `w` and `t` are never written: the consumer reads up to
//! `w`, then jumps to `t` (a consumer at `w` has everything before the
//! wrap, so the producer counts the skipped bytes as consumed from then
//! on). A ring then only touches as many pages as it holds at once.
//!
//! The rules, which make the jump unambiguous:
//! - the producer wraps only at a frame boundary, when its unread bytes do
//!   not themselves wrap around the ring's end, and when the consumer has
//!   passed its previous wrap (one wrap in flight at a time);
//! - it stores `wrap` before it publishes any position past it;
//! - a published position strictly between `w` and `t` is impossible
//!   ([`Corrupt`]), and so is a consumer position there.

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
    /// The write position the last [`publish`](Self::publish) checked the
    /// consumer's sleep flag for.
    checked: u64,
    /// Last read position seen (the consumer may only move it forward),
    /// with a consumer at the last wrap counted past it.
    read_seen: u64,
    /// The last wrap: where the bytes stopped (0: never wrapped).
    wrap_at: u64,
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

/// What the consumer makes of the producer's positions.
enum Ahead {
    /// This many bytes follow the read position.
    Bytes(u64),
    /// The read position is at the producer's wrap: go on from here.
    Jump(u64),
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
        let mut p = Producer {
            ctl,
            data,
            size: size as u64,
            mask: size as u64 - 1,
            local,
            published: local,
            checked: local,
            read_seen: 0,
            wrap_at: ctl.wrap.0.load(Ordering::Relaxed),
        };
        p.read_seen = p.effective(ctl.read.0.load(Ordering::Relaxed));
        p
    }

    /// Where the bytes go on after the wrap at `w`.
    fn resume(&self, w: u64) -> u64 {
        w.next_multiple_of(self.size)
    }

    /// The consumer's position `read`, counting a consumer that stands at
    /// the last wrap as past its skipped bytes.
    fn effective(&self, read: u64) -> u64 {
        if self.wrap_at != 0 && read == self.wrap_at {
            self.resume(self.wrap_at)
        } else {
            read
        }
    }

    fn ctl(&self) -> &RingCtl {
        // SAFETY: guaranteed mapped by the contract of `new`.
        unsafe { &*self.ctl }
    }

    pub(crate) fn size(&self) -> usize {
        self.size as usize
    }

    /// The write position, unpublished bytes included.
    pub(crate) fn position(&self) -> u64 {
        self.local
    }

    /// Bytes that can be written now.
    pub(crate) fn free(&mut self) -> Result<usize, Corrupt> {
        self.observe()?;
        Ok((self.size - (self.local - self.read_seen)) as usize)
    }

    /// Loads and checks the consumer's position; returns it as stored.
    fn observe(&mut self) -> Result<u64, Corrupt> {
        let raw = self.ctl().read.0.load(Ordering::Acquire);
        let read = self.effective(raw);
        // A consumer never stands inside the stretch a wrap skipped.
        let skipped = self.wrap_at < raw && raw < self.resume(self.wrap_at);
        if read < self.read_seen || read > self.local || skipped {
            return Err(Corrupt);
        }
        self.read_seen = read;
        Ok(raw)
    }

    /// Goes back to the ring's start (see the module docs) if it is free
    /// for at least `need` bytes — or the ring is empty — and wrapping is
    /// allowed now. Call only where a frame starts. True if it wrapped.
    ///
    /// Reads the consumer's position, a line the other process writes:
    /// once per frame, not per record.
    pub(crate) fn wrap_to_start(&mut self, need: usize) -> bool {
        let at = self.local & self.mask;
        if at == 0 {
            return false;
        }
        let Ok(raw) = self.observe() else {
            return false;
        };
        // One wrap in flight: the consumer must have moved past the last
        // one (standing at it, it has yet to see where the bytes resume).
        if self.wrap_at != 0 && raw < self.resume(self.wrap_at) {
            return false;
        }
        let read = raw;
        let empty = read == self.local;
        // The unread bytes must lie between the ring's start and here (not
        // wrap around its end), with `need` bytes free before them.
        let lap = self.local - at;
        if !empty && (read < lap || ((read - lap) as usize) < need) {
            return false;
        }
        self.wrap_at = self.local;
        self.ctl().wrap.0.store(self.local, Ordering::Relaxed);
        self.local = self.resume(self.local);
        if empty {
            // The consumer stands at the wrap: the skipped bytes are free.
            self.read_seen = self.local;
        }
        true
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
    ///
    /// Only bytes committed since the last check can be news to a sleeper,
    /// so with none the flag is not looked at: a consumer that announced
    /// its sleep before that check was woken by it, and one that announced
    /// it after saw every byte up to it (the fences pair). Without this,
    /// the supervisor, which publishes to every worker at every step,
    /// woke every sleeping worker of the pool at every step — for nothing.
    #[must_use = "a sleeping consumer must be woken"]
    pub(crate) fn publish(&mut self) -> bool {
        self.commit();
        if self.published == self.checked {
            return false;
        }
        self.checked = self.published;
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

    /// Bytes published and not yet consumed, contiguous from the read
    /// position: up to the producer's wrap, if it comes first. A read
    /// position at the wrap moves on to where the bytes resume.
    pub(crate) fn available(&mut self) -> Result<usize, Corrupt> {
        let end = self.ctl().write.0.load(Ordering::Acquire);
        let n = match self.ahead(end)? {
            Ahead::Bytes(n) => n,
            Ahead::Jump(to) => {
                self.local = to;
                match self.ahead(end)? {
                    Ahead::Bytes(n) => n,
                    Ahead::Jump(_) => return Err(Corrupt),
                }
            }
        };
        if n > self.size {
            return Err(Corrupt);
        }
        Ok(n as usize)
    }

    /// Where the bytes up to the producer's position `end` are.
    fn ahead(&self, end: u64) -> Result<Ahead, Corrupt> {
        if end == self.local {
            return Ok(Ahead::Bytes(0));
        }
        if end < self.local {
            return Err(Corrupt);
        }
        // Published after the wrap word, so this load sees the wrap that
        // `end` may be past.
        let w = self.ctl().wrap.0.load(Ordering::Relaxed);
        let resume = w.next_multiple_of(self.size);
        if w < self.local || resume == w {
            return Ok(Ahead::Bytes(end - self.local));
        }
        // A wrap at or ahead of the read position.
        if end > w && end < resume {
            return Err(Corrupt);
        }
        if w == self.local {
            return Ok(Ahead::Jump(resume));
        }
        Ok(Ahead::Bytes(end.min(w) - self.local))
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
    pub(crate) fn prepare_sleep(&mut self, need: usize) -> Result<bool, Corrupt> {
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
    fn a_sleeping_consumer_is_woken_for_news_only() {
        let size = 16 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
        p.put(b"frame");
        assert!(!p.publish(), "the consumer is awake");
        assert!(!c.consume(5), "nobody waits for space");
        assert!(c.prepare_sleep(1).unwrap());
        for _ in 0..3 {
            assert!(!p.publish(), "nothing new: the sleeper sleeps on");
        }
        // Bytes committed without a check are news to the next publish.
        p.put(b"more");
        p.commit();
        assert!(p.publish(), "new bytes wake the sleeper");
        assert!(!p.publish(), "once");
        c.awake();
    }

    #[test]
    fn bytes_wrap_and_flags_handshake() {
        let size = 16 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
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

    /// A ring of `size` bytes, both ends; the region must outlive them.
    fn pair(region: &Region, size: usize) -> (Producer, Consumer) {
        let ctl = &region.page().to_worker;
        // SAFETY: the caller keeps `region` alive; one producer, one consumer.
        unsafe {
            (
                Producer::new(ctl, region.ring_data(true), size),
                Consumer::new(ctl, region.ring_data(true), size),
            )
        }
    }

    /// Offset in the ring's first view of the consumer's next byte.
    fn at(c: &Consumer) -> usize {
        (c.local & c.mask) as usize
    }

    #[test]
    fn an_empty_ring_wraps_to_its_start_with_all_its_room() {
        let size = 16 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
        p.put(&[1; 3000]);
        assert!(!p.publish());
        assert_eq!(c.available().unwrap(), 3000);
        assert!(!c.consume(3000));
        assert!(p.wrap_to_start(size), "empty: the whole ring is free");
        assert_eq!(p.position(), size as u64);
        assert_eq!(p.free().unwrap(), size, "the skipped bytes count as read");
        // The consumer has yet to jump: a ring's worth fits.
        p.put(&vec![2; size]);
        assert!(!p.publish());
        assert_eq!(c.available().unwrap(), size);
        assert_eq!(at(&c), 0, "the bytes resume at the ring's start");
        let mut out = vec![0; size];
        c.copy_out(0, &mut out);
        assert!(out.iter().all(|&b| b == 2));
        assert!(!c.consume(size));
        assert_eq!(p.free().unwrap(), size);
        assert!(!p.wrap_to_start(1), "already at the start");
    }

    #[test]
    fn unread_bytes_are_read_up_to_the_wrap_then_from_the_start() {
        let size = 16 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
        p.put(&[1; 6000]);
        let _ = p.publish();
        assert!(!c.consume(5000));
        // 1,000 unread bytes at 5000..6000: only 5,000 free before them.
        assert!(!p.wrap_to_start(5001));
        assert!(p.wrap_to_start(5000));
        assert_eq!(p.free().unwrap(), 5000, "up to the unread bytes");
        p.put(&[2; 5000]);
        assert!(!p.wrap_to_start(1), "one wrap in flight at a time");
        let _ = p.publish();
        assert_eq!(c.available().unwrap(), 1000, "up to the wrap");
        assert_eq!(at(&c), 5000);
        assert!(!c.consume(1000));
        assert_eq!(p.free().unwrap(), size - 5000, "the skipped bytes are free");
        assert!(
            !p.wrap_to_start(1),
            "the consumer has not moved past it yet"
        );
        assert_eq!(c.available().unwrap(), 5000);
        assert_eq!(at(&c), 0);
        let mut out = vec![0; 5000];
        c.copy_out(0, &mut out);
        assert!(out.iter().all(|&b| b == 2));
        assert!(!c.consume(10));
        assert!(p.wrap_to_start(4), "past it: the next wrap may come");
    }

    #[test]
    fn unread_bytes_around_the_end_forbid_a_wrap() {
        let size = 16 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
        p.put(&vec![1; size - 100]);
        let _ = p.publish();
        assert!(!c.consume(size - 200));
        assert!(p.free().unwrap() >= 300);
        p.put(&[2; 300]);
        let _ = p.publish();
        // Unread: size-200 .. size+200, around the end.
        assert!(!p.wrap_to_start(1));
        assert_eq!(c.available().unwrap(), 400);
    }

    #[test]
    fn positions_inside_a_skipped_stretch_are_corrupt() {
        let size = 4096;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
        let ctl = &region.page().to_worker;
        p.put(&[1; 100]);
        let _ = p.publish();
        assert!(!c.consume(100));
        assert!(p.wrap_to_start(10));
        // A producer position between the wrap and the ring's start.
        ctl.write.0.store(200, Ordering::Relaxed);
        assert_eq!(c.available(), Err(Corrupt));
        ctl.write.0.store(100, Ordering::Relaxed);
        // A consumer position there.
        ctl.read.0.store(150, Ordering::Relaxed);
        assert_eq!(p.free(), Err(Corrupt));
    }

    /// Frames of random sizes through a small ring, read in random steps,
    /// with a wrap attempted at every frame: every byte arrives in order,
    /// and the ring's far end is only ever used when frames need it.
    #[test]
    fn wrapping_keeps_the_stream_intact() {
        use proptest::prelude::*;
        let size = 8192;
        let (region, _fd) = Region::create(size).unwrap();
        let cfg = ProptestConfig {
            cases: 64,
            ..ProptestConfig::default()
        };
        proptest!(cfg, |(ops in proptest::collection::vec((1usize..1500, 1usize..3000), 1..200))| {
            let ctl = &region.page().to_worker;
            for w in [&ctl.write, &ctl.read, &ctl.wrap] {
                w.0.store(0, Ordering::Relaxed);
            }
            let (mut p, mut c) = pair(&region, size);
            let (mut sent, mut got) = (0u64, 0u64);
            let mut highest = 0;
            for (frame, step) in ops {
                if p.free().unwrap() >= frame {
                    if p.wrap_to_start(frame) {
                        prop_assert!(p.free().unwrap() >= frame);
                    }
                    let bytes: Vec<u8> = (sent..sent + frame as u64).map(|i| i as u8).collect();
                    highest = highest.max((p.position() & (size as u64 - 1)) as usize + frame);
                    p.put(&bytes);
                    sent += frame as u64;
                    let _ = p.publish();
                }
                let n = c.available().unwrap().min(step);
                let mut out = vec![0; n];
                c.copy_out(0, &mut out);
                for b in out {
                    prop_assert_eq!(b, got as u8);
                    got += 1;
                }
                let _ = c.consume(n);
            }
            while got < sent {
                let n = c.available().unwrap();
                prop_assert!(n > 0);
                let mut out = vec![0; n];
                c.copy_out(0, &mut out);
                for b in out {
                    prop_assert_eq!(b, got as u8);
                    got += 1;
                }
                let _ = c.consume(n);
            }
            prop_assert!(highest <= 2 * size);
        });
    }

    /// A consumer that keeps up with a frame or two of lag: the producer
    /// keeps going back, and never goes past its first few frames' worth.
    #[test]
    fn a_ring_kept_up_with_touches_only_its_start() {
        let size = 64 * 1024;
        let (region, _fd) = Region::create(size).unwrap();
        let (mut p, mut c) = pair(&region, size);
        let mut highest = 0;
        for i in 0..1000u64 {
            assert!(p.free().unwrap() >= 1000);
            p.wrap_to_start(1000);
            highest = highest.max((p.position() & (size as u64 - 1)) + 1000);
            p.put(&[i as u8; 1000]);
            let _ = p.publish();
            // The consumer lags by up to one frame.
            if i % 2 == 1 {
                while let n @ 1.. = c.available().unwrap() {
                    let _ = c.consume(n);
                }
            }
        }
        assert!(highest <= 3000, "{highest}");
    }

    #[test]
    fn impossible_positions_are_corrupt() {
        let size = 4096;
        let (region, _fd) = Region::create(size).unwrap();
        let ctl = &region.page().to_supervisor;
        // SAFETY: as above.
        let (mut p, mut c) = unsafe {
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
