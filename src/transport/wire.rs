//! Frames: what the supervisor and a worker say to each other, byte for byte.
//!
//! Every message is a frame `[len: u32 LE][tag: u8][body: len bytes]`.
//! Frames travel through the per-worker shared-memory rings (see
//! [`crate::transport::ring`]); the pipes only carry wake-ups.
//!
//! - Supervisor → worker: [`Tag::Batch`] (a header, then `count` items each
//!   `[len: u32][argument bytes]`) and [`Tag::Exit`].
//! - Worker → supervisor: one *record* per item, in the order the items were
//!   sent ([`Tag::Ok`], [`Tag::Panic`], ...), and a few control records
//!   ([`Tag::Ready`], [`Tag::InitFailed`], [`Tag::Retire`]).
//!
//! What this module promises: [`RecordReader`] — the supervisor's decoder
//! for bytes that come from a worker and therefore cannot be trusted —
//! rejects an unknown tag or a length above the cap as soon as the 5 header
//! bytes are in, never allocates more than the bytes it was actually given,
//! and never panics, whatever the input.

use std::fmt;
use std::mem::MaybeUninit;

/// Bytes in a frame header: length (4) and tag (1).
pub(crate) const HEADER: usize = 5;

/// Default cap on one frame's body: 1 GiB.
pub(crate) const DEFAULT_MAX_MESSAGE: u64 = 1 << 30;

/// Buffer a [`RecordReader`] keeps between records (see `release_idle`).
const RETAIN: usize = 16 << 20;

/// Control records carry short bodies; anything longer is a protocol error.
const CONTROL_MAX: u32 = 64 * 1024;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    /// Supervisor → worker: a batch of items to run.
    Batch = 0x01,
    /// Supervisor → worker: finish what you have, then exit.
    Exit = 0x02,
    /// Item succeeded; body is the encoded result.
    Ok = 0x10,
    /// Item panicked; body is the UTF-8 message.
    Panic = 0x11,
    /// Item's argument or result failed to (de)serialize; body is UTF-8.
    Codec = 0x12,
    /// Item was cancelled before it started; empty body.
    Skipped = 0x13,
    /// Item's result exceeded the message cap; body is its size as u64.
    TooLarge = 0x14,
    /// Item of a fallible job returned its own error; body is the encoded
    /// `Result` (an `Err`), exactly as an `Ok` record would carry it.
    Err = 0x15,
    /// Worker finished its initializer; body is its pid as u32.
    Ready = 0x20,
    /// Worker's initializer panicked; body is the UTF-8 message.
    InitFailed = 0x21,
    /// Worker is above its memory limit and exits; body is its RSS as u64.
    Retire = 0x22,
    /// Worker hands back, unstarted, the next items of its batch, because
    /// the supervisor recalled them (see `status.rs`, `Recall`); body is
    /// their number as u32. Not an item record: it answers no item.
    Returned = 0x23,
}

impl Tag {
    #[inline]
    pub(crate) fn from_u8(b: u8) -> Option<Tag> {
        Some(match b {
            0x01 => Tag::Batch,
            0x02 => Tag::Exit,
            0x10 => Tag::Ok,
            0x11 => Tag::Panic,
            0x12 => Tag::Codec,
            0x13 => Tag::Skipped,
            0x14 => Tag::TooLarge,
            0x15 => Tag::Err,
            0x20 => Tag::Ready,
            0x21 => Tag::InitFailed,
            0x22 => Tag::Retire,
            0x23 => Tag::Returned,
            _ => return None,
        })
    }

    /// Whether this record answers one item of a batch.
    pub(crate) fn is_item(self) -> bool {
        matches!(
            self,
            Tag::Ok | Tag::Panic | Tag::Codec | Tag::Skipped | Tag::TooLarge | Tag::Err
        )
    }

    fn sent_by_worker(self) -> bool {
        !matches!(self, Tag::Batch | Tag::Exit)
    }
}

/// Why bytes from a worker were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The tag byte names no message a worker may send.
    UnknownTag(u8),
    /// The length prefix is above the cap for this tag.
    TooLong { len: u64, cap: u64 },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnknownTag(t) => write!(f, "unknown frame tag {t:#04x}"),
            WireError::TooLong { len, cap } => {
                write!(f, "frame length {len} exceeds the cap of {cap} bytes")
            }
        }
    }
}

/// The 5 header bytes of a frame with `tag` and a body of `len` bytes.
pub(crate) fn header(tag: Tag, len: u32) -> [u8; HEADER] {
    let l = len.to_le_bytes();
    [l[0], l[1], l[2], l[3], tag as u8]
}

/// Splits the 5 header bytes into (length, raw tag).
#[inline]
pub(crate) fn split_header(h: [u8; HEADER]) -> (u32, u8) {
    (u32::from_le_bytes([h[0], h[1], h[2], h[3]]), h[4])
}

/// Validates a header that came from a worker.
pub(crate) fn check_worker_header(h: [u8; HEADER], cap: u64) -> Result<(u32, Tag), WireError> {
    let (len, raw) = split_header(h);
    let tag = Tag::from_u8(raw)
        .filter(|t| t.sent_by_worker())
        .ok_or(WireError::UnknownTag(raw))?;
    let limit = if tag.is_item() {
        cap
    } else {
        u64::from(CONTROL_MAX)
    };
    if u64::from(len) > limit {
        return Err(WireError::TooLong {
            len: len.into(),
            cap: limit,
        });
    }
    Ok((len, tag))
}

/// Bytes in a batch header, after the frame header.
pub(crate) const BATCH_HEADER: usize = 48;

/// Batch flag: the worker records start times (the batch has a time limit).
pub(crate) const FLAG_TIMED: u32 = 1;
/// Batch flag: the supervisor may kill the worker over this batch (time
/// limit or cancellation), so item completion is claimed with a CAS.
pub(crate) const FLAG_KILLABLE: u32 = 2;
/// Batch flag: one cancellable job, with a cancel slot in the status page.
pub(crate) const FLAG_CANCELLABLE: u32 = 4;

/// The fixed part of a batch frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    /// Per-worker sequence number of the first item.
    pub seq0: u64,
    /// Number of items.
    pub count: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Address of the monomorphised trampoline (see [`crate::job::Call`]).
    pub trampoline: u64,
    /// Address of the user's function.
    pub func: u64,
    /// Job id, for a cancellable job.
    pub job_id: u64,
    /// Index of the cancel slot, for a cancellable job.
    pub cancel_slot: u32,
}

impl BatchHeader {
    /// Frame header plus batch header for a batch whose items take `items_len` bytes.
    pub(crate) fn encode(&self, items_len: usize) -> [u8; HEADER + BATCH_HEADER] {
        let mut out = [0u8; HEADER + BATCH_HEADER];
        let body = (BATCH_HEADER + items_len) as u32;
        out[..HEADER].copy_from_slice(&header(Tag::Batch, body));
        let b = &mut out[HEADER..];
        b[0..8].copy_from_slice(&self.seq0.to_le_bytes());
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.trampoline.to_le_bytes());
        b[24..32].copy_from_slice(&self.func.to_le_bytes());
        b[32..40].copy_from_slice(&self.job_id.to_le_bytes());
        b[40..44].copy_from_slice(&self.cancel_slot.to_le_bytes());
        out
    }

    /// Reads a batch header from the start of a batch body.
    pub(crate) fn decode(b: &[u8]) -> Option<BatchHeader> {
        let b = b.get(..BATCH_HEADER)?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Some(BatchHeader {
            seq0: u64_at(0),
            count: u32_at(8),
            flags: u32_at(12),
            trampoline: u64_at(16),
            func: u64_at(24),
            job_id: u64_at(32),
            cancel_slot: u32_at(40),
        })
    }
}

/// Appends one item `[len: u32][bytes]` whose bytes `encode` writes.
#[inline]
pub(crate) fn push_item(
    items: &mut Vec<u8>,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<usize, String> {
    let start = items.len();
    items.extend_from_slice(&[0; 4]);
    if let Err(e) = encode(items) {
        items.truncate(start);
        return Err(e);
    }
    let len = items.len() - start - 4;
    let Ok(len32) = u32::try_from(len) else {
        items.truncate(start);
        return Err(format!("item of {len} bytes does not fit a frame"));
    };
    items[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    Ok(len)
}

/// Iterates the `[len: u32][bytes]` items of a batch body.
pub(crate) struct Items<'a> {
    rest: &'a [u8],
}

impl<'a> Items<'a> {
    pub(crate) fn new(items: &'a [u8]) -> Self {
        Items { rest: items }
    }
    /// The bytes not yet iterated.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = &'a [u8];
    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.rest.get(..4)?.try_into().ok()?) as usize;
        let item = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        Some(item)
    }
}

/// Byte offset, within an items buffer, of item number `n`.
pub(crate) fn item_offset(items: &[u8], n: u32) -> usize {
    let mut it = Items::new(items);
    for _ in 0..n {
        if it.next().is_none() {
            break;
        }
    }
    items.len() - it.rest().len()
}

/// A complete record taken from a [`RecordReader`] or a delivery buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub tag: Tag,
    pub body: &'a [u8],
}

/// Iterates records in a buffer the supervisor already validated.
#[inline]
pub(crate) fn records(buf: &[u8]) -> impl Iterator<Item = Record<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let h: [u8; HEADER] = rest.get(..HEADER)?.try_into().ok()?;
        let (len, raw) = split_header(h);
        let tag = Tag::from_u8(raw)?;
        let body = rest.get(HEADER..HEADER + len as usize)?;
        rest = &rest[HEADER + len as usize..];
        Some(Record { tag, body })
    })
}

/// A run of consecutive item records, with a tally of their outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Run {
    pub count: u32,
    pub bytes: usize,
    pub ok: u32,
    pub panicked: u32,
    pub codec: u32,
    /// Fallible jobs that returned their own `Err`.
    pub errored: u32,
}

/// Walks complete item records at the start of `buf` (bytes received from
/// a worker, copied out of its ring) — at most `limit`, stopping before a
/// control record or an incomplete one. Headers are checked as they are
/// walked (against `cap`); a bad one ends the run, and is an error if it is
/// the first.
#[inline]
pub(crate) fn scan_items(buf: &[u8], limit: u32, cap: u64) -> Result<Run, WireError> {
    let mut run = Run::default();
    let mut at = 0;
    // The last `Ok` header checked, and its record's size: runs of
    // equal-sized results repeat it, and skip the checks.
    let mut last_ok: Option<([u8; HEADER], usize)> = None;
    while run.count < limit {
        let Some(h) = buf.get(at..at + HEADER) else {
            break;
        };
        let h: [u8; HEADER] = h.try_into().expect("5 bytes");
        if let Some((ok, size)) = last_ok
            && h == ok
        {
            if at + size > buf.len() {
                break;
            }
            run.count += 1;
            run.ok += 1;
            at += size;
            continue;
        }
        let (len, tag) = match check_worker_header(h, cap) {
            Ok(ok) => ok,
            Err(e) if run.count == 0 => return Err(e),
            Err(_) => break,
        };
        let end = at + HEADER + len as usize;
        if !tag.is_item() || end > buf.len() {
            break;
        }
        run.count += 1;
        match tag {
            Tag::Ok => {
                run.ok += 1;
                last_ok = Some((h, HEADER + len as usize));
            }
            Tag::Panic => run.panicked += 1,
            Tag::Codec | Tag::TooLarge => run.codec += 1,
            Tag::Err => run.errored += 1,
            _ => {}
        }
        at = end;
    }
    run.bytes = at;
    Ok(run)
}

/// Incremental decoder for the untrusted byte stream coming from a worker.
///
/// Bytes are appended with [`RecordReader::extend`] as they arrive; complete
/// records come out of [`RecordReader::next`]. Its buffer only ever holds
/// bytes that were actually received, so a length prefix claiming gigabytes
/// costs nothing until the bytes are there — and a prefix above the cap is
/// refused as soon as the header is complete.
#[derive(Debug)]
pub(crate) struct RecordReader {
    buf: Vec<u8>,
    start: usize,
    cap: u64,
    /// Set once the stream has been found corrupt; every later call fails.
    broken: Option<WireError>,
}

impl RecordReader {
    pub(crate) fn new(cap: u64) -> Self {
        RecordReader {
            buf: Vec::new(),
            start: 0,
            cap,
            broken: None,
        }
    }

    /// Appends `n` received bytes, which `fill` must write in full, making
    /// room by dropping consumed ones first.
    pub(crate) fn extend_with(&mut self, n: usize, fill: impl FnOnce(&mut [MaybeUninit<u8>])) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(n);
        let old = self.buf.len();
        let spare = &mut self.buf.spare_capacity_mut()[..n];
        fill(spare);
        // SAFETY: `fill` initialised all n bytes of the spare capacity (its
        // contract; both callers copy exactly n bytes in).
        unsafe { self.buf.set_len(old + n) };
    }

    /// Appends received bytes already copied out of the ring.
    pub(crate) fn extend_from(&mut self, bytes: &[u8]) {
        self.extend_with(bytes.len(), |dst| {
            // SAFETY: u8 and MaybeUninit<u8> have the same layout; `dst`
            // has room for exactly `bytes.len()` bytes.
            let src = unsafe { &*(bytes as *const [u8] as *const [MaybeUninit<u8>]) };
            dst.copy_from_slice(src);
        });
    }

    /// Whether the next byte received starts a record (everything received
    /// so far was consumed).
    pub(crate) fn at_record_start(&self) -> bool {
        self.start == self.buf.len()
    }

    /// The cap on one record's body.
    pub(crate) fn cap(&self) -> u64 {
        self.cap
    }

    /// Makes room for `n` more bytes with a buffer from `get` if everything
    /// received so far was consumed and the current buffer is too small;
    /// `get(n)` returns an empty buffer with room for `n` bytes, or nothing.
    pub(crate) fn reserve_with(&mut self, n: usize, get: impl FnOnce(usize) -> Option<Vec<u8>>) {
        if self.at_record_start()
            && self.buf.capacity() < n
            && let Some(buf) = get(n)
        {
            debug_assert!(buf.is_empty() && buf.capacity() >= n);
            self.buf = buf;
            self.start = 0;
        }
    }

    /// Frees the buffer if it is large and everything in it was consumed,
    /// so that one big record does not keep its size allocated for the
    /// life of the stream. Above `RETAIN`, which is more than the
    /// supervisor pulls at once, so ordinary traffic never churns.
    pub(crate) fn release_idle(&mut self) {
        if self.start == self.buf.len() && self.buf.capacity() > RETAIN {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Appends received bytes.
    #[cfg(test)]
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.extend_from(bytes);
    }

    /// Bytes received but not yet returned as records.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn peek_header(&self) -> Option<Result<(u32, Tag), WireError>> {
        let h: [u8; HEADER] = self
            .buf
            .get(self.start..self.start + HEADER)?
            .try_into()
            .ok()?;
        Some(check_worker_header(h, self.cap))
    }

    /// The next complete record, `Ok(None)` if more bytes are needed, or
    /// the reason the stream is corrupt.
    pub(crate) fn next(&mut self) -> Result<Option<Record<'_>>, WireError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let (len, tag) = match self.peek_header() {
            None => return Ok(None),
            Some(Err(e)) => {
                self.broken = Some(e.clone());
                return Err(e);
            }
            Some(Ok(h)) => h,
        };
        let end = self.start + HEADER + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = &self.buf[self.start + HEADER..end];
        self.start = end;
        Ok(Some(Record { tag, body }))
    }

    /// Walks complete item records from the read position — at most
    /// `limit`, stopping before a control record or an incomplete one —
    /// without consuming them. Headers are checked as they are walked; a bad
    /// one ends the run (and fails the stream if it is the first).
    pub(crate) fn scan_items(&mut self, limit: u32) -> Result<Run, WireError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let run = scan_items(&self.buf[self.start..], limit, self.cap);
        if let Err(e) = &run {
            self.broken = Some(e.clone());
        }
        run
    }

    /// Takes the whole buffer if it holds exactly the next `n` bytes and
    /// nothing else, so a run can be handed on without a copy.
    pub(crate) fn take_whole(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.start != 0 || self.buf.len() != n {
            return None;
        }
        Some(std::mem::take(&mut self.buf))
    }

    /// Takes the next `n` bytes: a run found by [`scan_items`](Self::scan_items).
    pub(crate) fn take(&mut self, n: usize) -> &[u8] {
        let taken = &self.buf[self.start..self.start + n];
        self.start += n;
        taken
    }

    /// The buffer's allocated size, for tests that check allocation bounds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: Tag, body: &[u8]) -> Vec<u8> {
        let mut v = header(tag, body.len() as u32).to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn records_arrive_in_pieces() {
        let mut stream = rec(Tag::Ok, b"hello");
        stream.extend(rec(Tag::Panic, b"boom"));
        let mut r = RecordReader::new(1024);
        for b in &stream[..7] {
            r.extend(&[*b]);
        }
        assert_eq!(r.next(), Ok(None));
        r.extend(&stream[7..]);
        assert_eq!(
            r.next().unwrap().unwrap(),
            Record {
                tag: Tag::Ok,
                body: b"hello"
            }
        );
        assert_eq!(
            r.next().unwrap().unwrap(),
            Record {
                tag: Tag::Panic,
                body: b"boom"
            }
        );
        assert_eq!(r.next(), Ok(None));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn runs_of_item_records_stop_at_control_records() {
        let mut stream = rec(Tag::Ok, b"a");
        stream.extend(rec(Tag::Panic, b"bb"));
        stream.extend(rec(Tag::Ready, &[0; 4]));
        stream.extend(rec(Tag::Ok, b"c"));
        let mut r = RecordReader::new(1024);
        r.extend(&stream[..stream.len() - 1]);
        let run = r.scan_items(10).unwrap();
        assert_eq!((run.count, run.bytes, run.ok, run.panicked), (2, 13, 1, 1));
        assert_eq!(r.take(run.bytes).len(), 13);
        assert_eq!(
            r.scan_items(10).unwrap().count,
            0,
            "a control record ends the run"
        );
        assert_eq!(r.next().unwrap().unwrap().tag, Tag::Ready);
        assert_eq!(r.scan_items(10).unwrap().count, 0, "incomplete record");
        r.extend(&stream[stream.len() - 1..]);
        assert_eq!(r.scan_items(10).unwrap().count, 1);
        let mut bad = RecordReader::new(1024);
        bad.extend(&[9, 0, 0, 0, 0x7f]);
        assert!(bad.scan_items(10).is_err());
        assert!(
            bad.next().is_err(),
            "a bad header breaks the stream for good"
        );
    }

    #[test]
    fn oversized_length_is_refused_without_allocating_it() {
        let mut r = RecordReader::new(1 << 20);
        let h = header(Tag::Ok, u32::MAX);
        r.extend(&h);
        assert_eq!(
            r.next(),
            Err(WireError::TooLong {
                len: u32::MAX as u64,
                cap: 1 << 20
            })
        );
        assert!(r.capacity() < 4096, "allocated {} bytes", r.capacity());
        // Once broken, always broken: no later byte is believed.
        r.extend(&rec(Tag::Ok, b"x"));
        assert!(r.next().is_err());
    }

    #[test]
    fn a_given_buffer_is_used_only_when_everything_was_consumed() {
        let mut r = RecordReader::new(1 << 20);
        r.extend(&rec(Tag::Ok, b"half"));
        // Unconsumed bytes: the offered buffer is not even asked for.
        r.reserve_with(4096, |_| panic!("asked while bytes are pending"));
        assert_eq!(r.next().unwrap().unwrap().body, b"half");
        let given = Vec::with_capacity(8192);
        let at = given.as_ptr();
        r.reserve_with(8000, |n| {
            assert_eq!(n, 8000);
            Some(given)
        });
        r.extend(&rec(Tag::Ok, &[5; 7000]));
        let whole = r.take_whole(7000 + HEADER).unwrap();
        assert_eq!(whole.as_ptr(), at);
        // Big enough already: nothing is asked.
        r.extend(&rec(Tag::Ok, b"x"));
        r.next().unwrap();
        r.reserve_with(1, |_| panic!("asked with room to spare"));
    }

    #[test]
    fn a_big_record_does_not_pin_its_buffer() {
        let mut r = RecordReader::new(1 << 30);
        r.extend(&rec(Tag::Ok, &vec![7; RETAIN + 1]));
        assert_eq!(r.next().unwrap().unwrap().body.len(), RETAIN + 1);
        r.release_idle();
        assert_eq!(r.capacity(), 0);
        r.extend(&rec(Tag::Ok, b"small"));
        r.release_idle();
        assert!(r.capacity() > 0, "unconsumed bytes are kept");
        assert_eq!(r.next().unwrap().unwrap().body, b"small");
    }

    #[test]
    fn unknown_and_wrong_direction_tags_are_refused() {
        let mut r = RecordReader::new(1024);
        r.extend(&[1, 0, 0, 0, 0x7f, 0]);
        assert_eq!(r.next(), Err(WireError::UnknownTag(0x7f)));
        let mut r = RecordReader::new(1024);
        r.extend(&rec(Tag::Batch, b""));
        assert_eq!(r.next(), Err(WireError::UnknownTag(Tag::Batch as u8)));
    }

    #[test]
    fn control_records_have_a_small_cap() {
        let mut r = RecordReader::new(1 << 30);
        r.extend(&header(Tag::Ready, CONTROL_MAX + 1));
        assert!(matches!(r.next(), Err(WireError::TooLong { .. })));
    }

    #[test]
    fn batch_header_round_trip_and_items() {
        let h = BatchHeader {
            seq0: 9,
            count: 3,
            flags: FLAG_TIMED,
            trampoline: 0xdead,
            func: 0xbeef,
            job_id: 77,
            cancel_slot: 5,
        };
        let bytes = h.encode(10);
        assert_eq!(
            split_header(bytes[..HEADER].try_into().unwrap()).0 as usize,
            BATCH_HEADER + 10
        );
        assert_eq!(BatchHeader::decode(&bytes[HEADER..]), Some(h));
        let mut items = Vec::new();
        for s in ["a", "bc", ""] {
            push_item(&mut items, |v| {
                v.extend_from_slice(s.as_bytes());
                Ok(())
            })
            .unwrap();
        }
        let got: Vec<&[u8]> = Items::new(&items).collect();
        assert_eq!(got, vec![&b"a"[..], b"bc", b""]);
        assert_eq!(item_offset(&items, 1), 5);
        assert_eq!(item_offset(&items, 3), items.len());
        let failed = push_item(&mut items, |_| Err("no".into()));
        assert!(failed.is_err());
        assert_eq!(
            Items::new(&items).count(),
            3,
            "a failed encode leaves no trace"
        );
    }

    /// Property tests: whatever a worker writes, the decoder returns records
    /// that are exactly the bytes it was given, or an error — it never
    /// panics, never believes a length above the cap, and never allocates
    /// more than (about) the bytes it was actually handed.
    mod hostile {
        use super::*;
        use proptest::prelude::*;

        const ITEM_TAGS: [Tag; 5] = [Tag::Ok, Tag::Panic, Tag::Codec, Tag::Skipped, Tag::TooLarge];
        const CONTROL_TAGS: [Tag; 3] = [Tag::Ready, Tag::InitFailed, Tag::Retire];

        /// Feeds `input` in pieces of the given sizes, draining after each;
        /// returns the records (re-encoded), the first error, and checks
        /// the allocation bound on the way.
        fn feed(cap: u64, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<WireError>) {
            let mut r = RecordReader::new(cap);
            let mut out = Vec::new();
            let mut err = None;
            let mut given = 0usize;
            let mut rest = input;
            let mut cuts = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cuts.next().unwrap()).clamp(1, rest.len());
                r.extend(&rest[..n]);
                given += n;
                rest = &rest[n..];
                loop {
                    match r.next() {
                        Ok(Some(rec)) => {
                            let limit = if rec.tag.is_item() {
                                cap
                            } else {
                                CONTROL_MAX as u64
                            };
                            assert!(rec.body.len() as u64 <= limit, "a record above its cap");
                            assert!(rec.tag.sent_by_worker(), "a tag workers may not send");
                            out.extend_from_slice(&header(rec.tag, rec.body.len() as u32));
                            out.extend_from_slice(rec.body);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Once broken, always broken.
                            assert_eq!(r.next(), Err(e.clone()));
                            err.get_or_insert(e);
                            break;
                        }
                    }
                }
                assert!(
                    r.capacity() <= 2 * given + 64,
                    "holds {} bytes of buffer after being given {given}",
                    r.capacity()
                );
            }
            (out, err)
        }

        fn record() -> impl Strategy<Value = Vec<u8>> {
            let tag = prop_oneof![
                proptest::sample::select(ITEM_TAGS.to_vec()),
                proptest::sample::select(CONTROL_TAGS.to_vec()),
            ];
            (tag, proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(t, body)| rec(t, &body))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_bytes_never_panic_and_records_are_the_input(
                input in proptest::collection::vec(any::<u8>(), 0..4096),
                cuts in proptest::collection::vec(1usize..700, 1..8),
                cap in 1u64..100_000,
            ) {
                let (out, err) = feed(cap, &input, &cuts);
                // What came out is exactly a prefix of what went in.
                prop_assert!(input.starts_with(&out));
                if err.is_none() {
                    // The rest is an incomplete record, never a lost one.
                    let tail = &input[out.len()..];
                    if tail.len() >= HEADER {
                        let (len, _) = split_header(tail[..HEADER].try_into().unwrap());
                        prop_assert!(tail.len() < HEADER + len as usize);
                    }
                }
            }

            #[test]
            fn a_truncated_stream_yields_the_whole_records_and_waits(
                recs in proptest::collection::vec(record(), 0..20),
                cut in any::<prop::sample::Index>(),
                cuts in proptest::collection::vec(1usize..500, 1..8),
            ) {
                let stream: Vec<u8> = recs.concat();
                let at = if stream.is_empty() { 0 } else { cut.index(stream.len() + 1) };
                let (out, err) = feed(1 << 20, &stream[..at], &cuts);
                prop_assert_eq!(err, None);
                // Exactly the records that end at or before the cut.
                let mut whole = 0;
                for r in &recs {
                    if whole + r.len() > at {
                        break;
                    }
                    whole += r.len();
                }
                prop_assert_eq!(&out[..], &stream[..whole]);
            }

            #[test]
            fn an_oversized_length_is_refused_without_allocating_it(
                cap in 1024u64..(1 << 24),
                over in 1u64..u64::MAX,
                item in any::<bool>(),
                which in 0usize..5,
                before in proptest::collection::vec(record(), 0..4),
                junk in proptest::collection::vec(any::<u8>(), 0..2000),
            ) {
                let (tag, limit) = if item {
                    (ITEM_TAGS[which], cap)
                } else {
                    (CONTROL_TAGS[which % 3], CONTROL_MAX as u64)
                };
                let len = (limit + 1 + over % (u64::from(u32::MAX) - limit)).min(u64::from(u32::MAX));
                let mut input: Vec<u8> = before.concat();
                let good = input.len();
                input.extend_from_slice(&header(tag, len as u32));
                input.extend_from_slice(&junk);
                let (out, err) = feed(cap, &input, &[97, 1, 4096]);
                prop_assert_eq!(out.len(), good, "the records before it still count");
                let refused = matches!(err, Some(WireError::TooLong { .. }));
                prop_assert!(refused, "got {:?}", err);
            }

            #[test]
            fn batch_items_never_read_past_their_buffer(
                buf in proptest::collection::vec(any::<u8>(), 0..512),
                n in 0u32..64,
            ) {
                let total: usize = Items::new(&buf).map(|i| i.len() + 4).sum();
                prop_assert!(total <= buf.len());
                prop_assert!(item_offset(&buf, n) <= buf.len());
                let _ = BatchHeader::decode(&buf);
            }
        }
    }
}
