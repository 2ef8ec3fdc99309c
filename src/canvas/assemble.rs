//! A group's result, assembled from its members' encoded results as they
//! come back — never decoded, never re-encoded.
//!
//! Members finish in any order; their results are appended to one buffer
//! in member order, as soon as every member before them is in (results
//! that come early are parked, whole deliveries at a time). So by the time
//! the last member answers, only its own bytes are left to copy, and the
//! buffer is already the next step's argument: one `[len][bytes]` item
//! holding the encoding of a `Vec<R>` (a length, then the elements), of a
//! `Vec<Result<R, JobError>>` for a collect-all group, or of a tuple. The
//! layout of those encodings is the codec's (`transport/codec.rs`).
//!
//! While every result so far is a success of one size — the common case of
//! a big chord — a result that comes early needs no parking: its place in
//! the buffer is known (`Mode::Placing`), so it is written there at once,
//! and when the last member answers nothing is left to append. The first
//! result of another size, the first failure or retry, ends that: what was
//! placed ahead is parked (`Mode::Parking`) and the assembly goes on in
//! order.
//!
//! Invariant: members `0..next` are in `out` (fail-fast: or in `failed`),
//! in order; every other member that has resolved is parked under the
//! index of its first member (or, while placing, written at its place and
//! listed in `ahead`), and a member being retried is listed as `later`
//! where its delivery is parked, so that it is taken from its own result
//! and never from the failure that started its retry.

use crate::batch::outcome;
use crate::canvas::node::{Policy, Shape};
use crate::error::{GroupFailure, JobError};
use crate::sys::hugepage;
use crate::transport::codec;
use crate::transport::codec::Codec;
use crate::transport::wire;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes of an item's length prefix.
const LEN: usize = 4;

/// Results that came before their turn.
enum Parked {
    /// One member's result: an item, or why it failed.
    One(Result<Vec<u8>, JobError>),
    /// Worker records for `count` members from the key on, starting at
    /// `buf[at..]`; members in `later` (sorted) are being retried and come
    /// on their own. `unit`: what a success stands for when the job's
    /// result only travelled for its success callback.
    Records {
        buf: Vec<u8>,
        at: usize,
        count: u32,
        later: Vec<u32>,
        unit: Option<Arc<[u8]>>,
    },
    /// `count` members from the key on that failed with `error`, but for
    /// those in `later`.
    Failed {
        count: u32,
        error: JobError,
        later: Vec<u32>,
    },
    /// `count` members from the key on whose elements (of `each` bytes:
    /// results of `each` bytes, or of `each - 4` after `RESULT_OK` for
    /// collect-all) are `data`: what was placed ahead when placing ended.
    Placed {
        data: Vec<u8>,
        count: u32,
        each: usize,
    },
}

/// How results that come before their turn are kept.
enum Mode {
    /// Nothing came yet.
    Open,
    /// Every result so far was a success of `body` bytes: each member's
    /// element (`each` bytes) has a known place, and results that come
    /// early are written there. `ahead`: ranges of members written beyond
    /// `next` (start to end), none starting at `next`.
    Placing {
        body: usize,
        each: usize,
        ahead: BTreeMap<u32, u32>,
    },
    /// Results that come early are parked.
    Parking,
}

/// Results of members `first..first + count`, `each` bytes each, one after
/// another in `out` from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    first: u32,
    count: u32,
    start: usize,
    each: usize,
}

/// A group's result in the making.
pub(crate) struct Assembly {
    policy: Policy,
    members: u32,
    /// The result so far, as an item whose length is written at the end.
    out: Vec<u8>,
    /// Members before this one are in.
    next: u32,
    /// Fail-fast: where the members' results are in `out`, to hand the
    /// successes back if the group fails — one span per run of results of
    /// one size, not an offset per member (a chord over many small results
    /// would otherwise write as much again).
    spans: Vec<Span>,
    failed: Vec<(usize, JobError)>,
    parked: BTreeMap<u32, Parked>,
    mode: Mode,
    /// Bytes of `out` before the first member's element.
    prefix: usize,
}

impl Assembly {
    pub(crate) fn new(shape: Shape, policy: Policy, members: u32) -> Assembly {
        let mut out = vec![0; LEN];
        if shape == Shape::Vec {
            out.extend_from_slice(&codec::seq_len(u64::from(members)));
        }
        Assembly {
            policy,
            members,
            prefix: out.len(),
            out,
            next: 0,
            spans: Vec::new(),
            failed: Vec::new(),
            parked: BTreeMap::new(),
            mode: Mode::Open,
        }
    }

    /// Whether every member is in.
    pub(crate) fn is_complete(&self) -> bool {
        self.next == self.members
    }

    /// Member `index` resolved: its result as an item, or its failure.
    pub(crate) fn accept(&mut self, index: u32, result: Result<Vec<u8>, JobError>) {
        if let Ok(item) = &result {
            let body = item.get(LEN..).unwrap_or_default();
            if self.may_place(body.len()) {
                self.place(index, 1, body.len(), |_| body);
                return;
            }
        }
        self.stop_placing();
        if index == self.next {
            match &result {
                Ok(item) => self.push(Ok(item.get(LEN..).unwrap_or_default())),
                Err(e) => self.push(Err(e.clone())),
            }
            self.drain();
        } else {
            self.park(index, Parked::One(result));
        }
    }

    /// Members from `base` on resolved with the `count` worker records in
    /// `buf`, but for those in `later`, which come on their own.
    pub(crate) fn accept_records(
        &mut self,
        base: u32,
        buf: Vec<u8>,
        count: u32,
        later: Vec<u32>,
        unit: Option<Arc<[u8]>>,
    ) {
        if later.is_empty()
            && unit.is_none()
            && let Some(size) = uniform_successes(&buf, count)
            && self.may_place(size)
        {
            let stride = wire::HEADER + size;
            self.place(base, count, size, |i| {
                let at = i * stride + wire::HEADER;
                &buf[at..at + size]
            });
            return;
        }
        self.stop_placing();
        let parked = Parked::Records {
            buf,
            at: 0,
            count,
            later,
            unit,
        };
        self.park(base, parked);
    }

    /// `count` members from `base` on failed with `error`, but for those in
    /// `later`.
    pub(crate) fn accept_failed(
        &mut self,
        base: u32,
        count: u32,
        error: JobError,
        later: Vec<u32>,
    ) {
        self.stop_placing();
        self.park(
            base,
            Parked::Failed {
                count,
                error,
                later,
            },
        );
    }

    /// Whether a success of `body` bytes can be written at its place:
    /// nothing but successes of that size came so far. The first result
    /// decides the size, and makes room for every member at once.
    fn may_place(&mut self, body: usize) -> bool {
        match &self.mode {
            Mode::Open => {
                let each = self.element(body);
                let whole = self.prefix + each.saturating_mul(self.members as usize);
                if whole > 1 << 30 {
                    self.mode = Mode::Parking;
                    return false;
                }
                self.out.reserve_exact(whole - self.out.len());
                hugepage::advise(&self.out);
                self.mode = Mode::Placing {
                    body,
                    each,
                    ahead: BTreeMap::new(),
                };
                true
            }
            Mode::Placing { body: b, .. } => *b == body,
            Mode::Parking => false,
        }
    }

    /// Bytes of one member's element for a result of `body` bytes.
    fn element(&self, body: usize) -> usize {
        match self.policy {
            Policy::FailFast => body,
            Policy::CollectAll => codec::RESULT_OK.len() + body,
        }
    }

    /// Writes the results of members `base..base + count` — `body(i)` the
    /// `i`-th's, of `size` bytes — at their places (see `may_place`).
    fn place<'b>(&mut self, base: u32, count: u32, size: usize, body: impl Fn(usize) -> &'b [u8]) {
        let Mode::Placing { each, ahead, .. } = &mut self.mode else {
            unreachable!("placing without a size");
        };
        let each = *each;
        let start = self.prefix + base as usize * each;
        let end = start + count as usize * each;
        if self.out.len() < end {
            self.out.resize(end, 0);
        }
        let dst = &mut self.out[start..end];
        match self.policy {
            Policy::FailFast => place_bodies(dst, size, count as usize, &body),
            Policy::CollectAll => {
                for (i, element) in dst.chunks_exact_mut(each).enumerate() {
                    element[..codec::RESULT_OK.len()].copy_from_slice(&codec::RESULT_OK);
                    element[codec::RESULT_OK.len()..].copy_from_slice(body(i));
                }
            }
        }
        if base == self.next {
            self.next = base + count;
            while let Some(end) = ahead.remove(&self.next) {
                self.next = end;
            }
        } else {
            debug_assert!(base > self.next, "member {base} resolved twice");
            ahead.insert(base, base + count);
        }
    }

    /// Ends placing, if it was on: the results placed ahead of `next` are
    /// parked, to be appended in order as the rest.
    fn stop_placing(&mut self) {
        let mode = std::mem::replace(&mut self.mode, Mode::Parking);
        let Mode::Placing { body, each, ahead } = mode else {
            return;
        };
        if self.policy == Policy::FailFast && self.next > 0 {
            self.note(0, self.next, self.prefix, body);
        }
        for (first, end) in ahead {
            let at = self.prefix + first as usize * each;
            let data = self.out[at..at + (end - first) as usize * each].to_vec();
            let count = end - first;
            self.parked
                .insert(first, Parked::Placed { data, count, each });
        }
        self.out.truncate(self.prefix + self.next as usize * each);
    }

    fn park(&mut self, index: u32, parked: Parked) {
        debug_assert!(index >= self.next, "member {index} resolved twice");
        self.parked.insert(index, parked);
        self.drain();
    }

    /// Appends the next member's result.
    fn push(&mut self, result: Result<&[u8], JobError>) {
        match (self.policy, result) {
            (Policy::FailFast, Ok(body)) => {
                let start = self.out.len();
                self.out.extend_from_slice(body);
                self.note(self.next, 1, start, body.len());
            }
            (Policy::FailFast, Err(e)) => self.failed.push((self.next as usize, e)),
            (Policy::CollectAll, Ok(body)) => {
                self.out.extend_from_slice(&codec::RESULT_OK);
                self.out.extend_from_slice(body);
            }
            (Policy::CollectAll, Err(e)) => {
                self.out.extend_from_slice(&codec::RESULT_ERR);
                if let Err(why) = Codec::Bincode.encode_into(&mut self.out, &e) {
                    // Cannot happen (a JobError always encodes); keep the
                    // layout whole with an error that does.
                    let e = JobError::Codec(why);
                    Codec::Bincode
                        .encode_into(&mut self.out, &e)
                        .expect("a codec error encodes");
                }
            }
        }
        self.next += 1;
    }

    /// Records (fail-fast) that members `first..first + count` have their
    /// results, `each` bytes each, in `out` from `start`.
    fn note(&mut self, first: u32, count: u32, start: usize, each: usize) {
        if let Some(last) = self.spans.last_mut()
            && last.first + last.count == first
            && last.each == each
            && last.start + last.count as usize * each == start
        {
            last.count += count;
            return;
        }
        self.spans.push(Span {
            first,
            count,
            start,
            each,
        });
    }

    /// Appends every parked result whose turn has come.
    fn drain(&mut self) {
        while let Some(entry) = self.parked.first_entry() {
            if *entry.key() != self.next {
                return;
            }
            match entry.remove() {
                Parked::One(Ok(item)) => self.push(Ok(item.get(LEN..).unwrap_or_default())),
                Parked::One(Err(e)) => self.push(Err(e)),
                Parked::Records {
                    buf,
                    at,
                    count,
                    later,
                    unit,
                } => self.take_records(buf, at, count, later, unit),
                Parked::Placed { data, count, each } => {
                    let start = self.out.len();
                    self.out.extend_from_slice(&data);
                    if self.policy == Policy::FailFast {
                        self.note(self.next, count, start, each);
                    }
                    self.next += count;
                }
                Parked::Failed {
                    count,
                    error,
                    later,
                } => {
                    let base = self.next;
                    for i in 0..count {
                        if later.binary_search(&(base + i)).is_ok() {
                            self.repark_failed(base + i, count - i, error, later);
                            return;
                        }
                        self.push(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Appends records from `buf[at..]` until one that is being retried:
    /// the records after it are parked again, behind it.
    fn take_records(
        &mut self,
        buf: Vec<u8>,
        mut at: usize,
        count: u32,
        later: Vec<u32>,
        unit: Option<Arc<[u8]>>,
    ) {
        let base = self.next;
        self.reserve(&buf[at..], count);
        let mut i = 0;
        while i < count {
            let index = base + i;
            if later.first() == Some(&index) {
                let Some((_, _, size)) = record_at(&buf, at) else {
                    break;
                };
                let rest = count - i - 1;
                if rest > 0 {
                    let parked = Parked::Records {
                        buf,
                        at: at + size,
                        count: rest,
                        later: later[1..].to_vec(),
                        unit,
                    };
                    self.parked.insert(index + 1, parked);
                }
                return;
            }
            // The common case: plain successes of one size, in a run.
            if unit.is_none() && self.policy == Policy::FailFast {
                let end = later.first().map_or(base + count, |&l| l);
                let (n, used) = self.copy_run(&buf[at..], end - index);
                if n > 0 {
                    at += used;
                    i += n;
                    continue;
                }
            }
            if unit.is_none()
                && let Some(body) = ok_body(&buf, at)
            {
                match self.policy {
                    Policy::FailFast => {
                        let start = self.out.len();
                        self.out.extend_from_slice(body);
                        self.note(index, 1, start, body.len());
                    }
                    Policy::CollectAll => {
                        self.out.extend_from_slice(&codec::RESULT_OK);
                        self.out.extend_from_slice(body);
                    }
                }
                self.next += 1;
                at += wire::HEADER + body.len();
                i += 1;
                continue;
            }
            let Some((tag, body, size)) = record_at(&buf, at) else {
                break;
            };
            let rec = wire::Record { tag, body };
            match (outcome::outcome(rec), &unit) {
                (Ok(_), Some(unit)) if tag == wire::Tag::Ok => self.push(Ok(unit)),
                (result, _) => self.push(result),
            }
            at += size;
            i += 1;
        }
        if i < count {
            // A short buffer: the supervisor validated it, so this cannot
            // happen; the members it lacks fail rather than hang.
            let error = JobError::Codec("a delivery ended early".into());
            for _ in i..count {
                self.push(Err(error.clone()));
            }
        }
    }

    /// Makes room for a delivery of `count` members whose records are
    /// `records`, and for the rest of the group at the same rate: the
    /// buffer grows once, early, rather than by doubling as it fills.
    fn reserve(&mut self, records: &[u8], count: u32) {
        let per_member = records.len().div_ceil(count.max(1) as usize);
        let left = (self.members - self.next) as usize;
        let want = per_member.saturating_mul(left).min(1 << 30);
        if self.out.capacity() - self.out.len() < want {
            self.out.reserve(want);
            hugepage::advise(&self.out);
        }
    }

    /// Appends the run of plain successes of one size at the start of
    /// `records`, at most `max` of them: how many, and the bytes they took.
    /// Common sizes are copied as fixed-size moves, not a `memcpy` call
    /// per member — the hot loop of a chord over many small results.
    fn copy_run(&mut self, records: &[u8], max: u32) -> (u32, usize) {
        let Some(first) = ok_body(records, 0) else {
            return (0, 0);
        };
        match first.len() {
            // `()`, and results dropped in the worker (`ignore_result`).
            0 => self.copy_fixed::<0>(records, max),
            1 => self.copy_fixed::<1>(records, max),
            2 => self.copy_fixed::<2>(records, max),
            4 => self.copy_fixed::<4>(records, max),
            8 => self.copy_fixed::<8>(records, max),
            16 => self.copy_fixed::<16>(records, max),
            _ => (0, 0),
        }
    }

    /// [`copy_run`](Self::copy_run) for results of `N` bytes.
    fn copy_fixed<const N: usize>(&mut self, records: &[u8], max: u32) -> (u32, usize) {
        let header = wire::header(wire::Tag::Ok, N as u32);
        let size = wire::HEADER + N;
        let start = self.out.len();
        let mut n = 0;
        for rec in records.chunks_exact(size).take(max as usize) {
            if rec[..wire::HEADER] != header {
                break;
            }
            let body: &[u8; N] = rec[wire::HEADER..].try_into().expect("N bytes");
            self.out.extend_from_slice(body);
            n += 1;
        }
        if n > 0 {
            self.note(self.next, n, start, N);
        }
        self.next += n;
        (n, n as usize * size)
    }

    /// Parks again the failures from `index` on, `index` itself being
    /// retried.
    fn repark_failed(&mut self, index: u32, count: u32, error: JobError, later: Vec<u32>) {
        if count > 1 {
            let later = later.into_iter().filter(|&l| l > index).collect();
            let parked = Parked::Failed {
                count: count - 1,
                error,
                later,
            };
            self.parked.insert(index + 1, parked);
        }
    }

    /// The group's result, once every member is in: the assembled item, or
    /// (fail-fast, after failures) every failure with the other members'
    /// results.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, JobError> {
        debug_assert!(self.is_complete() && self.parked.is_empty());
        if !self.failed.is_empty() {
            let failed = std::mem::take(&mut self.failed);
            let mut failure = GroupFailure::new(self.members as usize, failed);
            for span in &self.spans {
                for k in 0..span.count as usize {
                    let at = span.start + k * span.each;
                    let index = span.first as usize + k;
                    failure.push_success(index, &self.out[at..at + span.each]);
                }
            }
            return Err(JobError::MembersFailed(Box::new(failure)));
        }
        let len = self.out.len() - LEN;
        let Ok(len32) = u32::try_from(len) else {
            return Err(JobError::TooLarge {
                size: len as u64,
                limit: u64::from(u32::MAX),
            });
        };
        self.out[..LEN].copy_from_slice(&len32.to_le_bytes());
        Ok(self.out)
    }
}

/// The size of every result in `buf`, if it holds `count` records that are
/// all plain successes of one size (checked header by header).
fn uniform_successes(buf: &[u8], count: u32) -> Option<usize> {
    let first = ok_body(buf, 0)?.len();
    let stride = wire::HEADER + first;
    if buf.len() != stride.checked_mul(count as usize)? {
        return None;
    }
    let header = wire::header(wire::Tag::Ok, first as u32);
    buf.chunks_exact(stride)
        .all(|rec| rec[..wire::HEADER] == header)
        .then_some(first)
}

/// Writes `count` results of `size` bytes — `body(i)` the `i`-th — one
/// after another into `dst`; common sizes as fixed-size moves.
fn place_bodies<'b>(dst: &mut [u8], size: usize, count: usize, body: &impl Fn(usize) -> &'b [u8]) {
    fn fixed<'b, const N: usize>(dst: &mut [u8], count: usize, body: &impl Fn(usize) -> &'b [u8]) {
        for (i, d) in dst.chunks_exact_mut(N).take(count).enumerate() {
            let src: &[u8; N] = body(i).try_into().expect("N bytes");
            d.copy_from_slice(src);
        }
    }
    match size {
        0 => {}
        1 => fixed::<1>(dst, count, body),
        2 => fixed::<2>(dst, count, body),
        4 => fixed::<4>(dst, count, body),
        8 => fixed::<8>(dst, count, body),
        16 => fixed::<16>(dst, count, body),
        _ => {
            for (i, d) in dst.chunks_exact_mut(size).take(count).enumerate() {
                d.copy_from_slice(body(i));
            }
        }
    }
}

/// The body of the record at `buf[at..]` if it is a plain success — the
/// hot path of a big chord.
#[inline]
fn ok_body(buf: &[u8], at: usize) -> Option<&[u8]> {
    let h = buf.get(at..at + wire::HEADER)?;
    if h[4] != wire::Tag::Ok as u8 {
        return None;
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    buf.get(at + wire::HEADER..at + wire::HEADER + len)
}

/// The record at `buf[at..]`: its tag, its body and its size.
fn record_at(buf: &[u8], at: usize) -> Option<(wire::Tag, &[u8], usize)> {
    let rec = wire::records(buf.get(at..)?).next()?;
    Some((rec.tag, rec.body, wire::HEADER + rec.body.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wire::{Tag, header};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Codec::Bincode.encode_into(&mut out, v).unwrap();
        out
    }

    fn item<T: Serialize>(v: &T) -> Vec<u8> {
        let body = enc(v);
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    fn records(tags_and_values: &[(Tag, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, body) in tags_and_values {
            out.extend(header(*tag, body.len() as u32));
            out.extend(body);
        }
        out
    }

    fn value<T: DeserializeOwned>(result: Result<Vec<u8>, JobError>) -> T {
        let item = result.unwrap();
        let len = u32::from_le_bytes(item[..4].try_into().unwrap()) as usize;
        assert_eq!(len, item.len() - 4, "the length prefix");
        Codec::Bincode.decode(&item[4..]).unwrap()
    }

    /// Deliveries out of order, single members among them, and a member
    /// being retried in the middle of a delivery: the result is in member
    /// order.
    #[test]
    fn results_land_in_member_order_whatever_the_order_they_come_in() {
        let mut a = Assembly::new(Shape::Vec, Policy::FailFast, 7);
        let ok = |v: u32| (Tag::Ok, enc(&v));
        // Members 3..6, member 4 being retried.
        a.accept_records(3, records(&[ok(30), ok(40), ok(50)]), 3, vec![4], None);
        a.accept(6, Ok(item(&60u32)));
        a.accept_records(0, records(&[ok(0), ok(10)]), 2, vec![], None);
        assert!(!a.is_complete());
        a.accept(2, Ok(item(&20u32)));
        assert!(!a.is_complete(), "member 4 is still out");
        a.accept(4, Ok(item(&41u32)));
        assert!(a.is_complete());
        let v: Vec<u32> = value(a.finish());
        assert_eq!(v, [0, 10, 20, 30, 41, 50, 60]);
    }

    /// Results of one size are written at their place as they come, in
    /// any order; a failure, or a result of another size, ends that, and
    /// what was placed ahead is appended in order with the rest.
    #[test]
    fn results_of_one_size_are_placed_until_one_is_not() {
        let ok = |v: u64| (Tag::Ok, enc(&v));
        let recs = |vs: &[u64]| records(&vs.iter().map(|&v| ok(v)).collect::<Vec<_>>());
        // All of one size, out of order.
        let mut a = Assembly::new(Shape::Vec, Policy::FailFast, 8);
        a.accept_records(5, recs(&[50, 60, 70]), 3, vec![], None);
        a.accept(4, Ok(item(&40u64)));
        a.accept_records(0, recs(&[0, 10]), 2, vec![], None);
        assert!(!a.is_complete());
        a.accept_records(2, recs(&[20, 30]), 2, vec![], None);
        assert!(a.is_complete());
        let v: Vec<u64> = value(a.finish());
        assert_eq!(v, [0, 10, 20, 30, 40, 50, 60, 70]);

        // Placed ahead, then a failure: the successes placed still count.
        let mut a = Assembly::new(Shape::Vec, Policy::FailFast, 6);
        a.accept_records(0, recs(&[0, 10]), 2, vec![], None);
        a.accept_records(4, recs(&[40, 50]), 2, vec![], None);
        a.accept_failed(2, 1, JobError::Expired, vec![]);
        a.accept(3, Ok(item(&30u64)));
        let Err(JobError::MembersFailed(f)) = a.finish() else {
            panic!("the group should fail");
        };
        assert_eq!(f.failed(), [(2, JobError::Expired)]);
        let ok: Vec<(usize, u64)> = f
            .encoded_successes()
            .map(|(i, b)| (i, Codec::Bincode.decode(b).unwrap()))
            .collect();
        assert_eq!(ok, [(0, 0), (1, 10), (3, 30), (4, 40), (5, 50)]);

        // Placed ahead, then a result of another size.
        let mut a = Assembly::new(Shape::Vec, Policy::FailFast, 4);
        let s = |x: &str| item(&x.to_string());
        a.accept(3, Ok(s("dd")));
        a.accept(1, Ok(s("bb")));
        a.accept(0, Ok(s("a")));
        a.accept(2, Ok(s("cc")));
        let v: Vec<String> = value(a.finish());
        assert_eq!(v, ["a", "bb", "cc", "dd"]);

        // Collect-all: placed with their `Ok`, until a failure.
        let mut a = Assembly::new(Shape::Vec, Policy::CollectAll, 4);
        a.accept_records(2, recs(&[2, 3]), 2, vec![], None);
        a.accept(1, Err(JobError::Cancelled));
        a.accept(0, Ok(item(&0u64)));
        let v: Vec<Result<u64, JobError>> = value(a.finish());
        assert_eq!(v, [Ok(0), Err(JobError::Cancelled), Ok(2), Ok(3)]);
    }

    /// Fail-fast: every failure is named, and the successes are kept.
    #[test]
    fn a_failed_group_names_its_failures_and_keeps_the_rest() {
        let mut a = Assembly::new(Shape::Vec, Policy::FailFast, 5);
        let panic = (Tag::Panic, b"boom".to_vec());
        a.accept_records(0, records(&[(Tag::Ok, enc(&1u8)), panic]), 2, vec![], None);
        a.accept_failed(2, 2, JobError::Expired, vec![]);
        a.accept(4, Ok(item(&5u8)));
        let Err(JobError::MembersFailed(f)) = a.finish() else {
            panic!("the group should fail");
        };
        assert_eq!(f.members(), 5);
        let failed: Vec<usize> = f.failed().iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [1, 2, 3]);
        assert!(matches!(f.failed()[0].1, JobError::Panicked { .. }));
        let ok: Vec<(usize, u8)> = f
            .encoded_successes()
            .map(|(i, b)| (i, Codec::Bincode.decode(b).unwrap()))
            .collect();
        assert_eq!(ok, [(0, 1), (4, 5)]);

        // Runs of equal-sized results, copied at once, around failures.
        let mut a = Assembly::new(Shape::Vec, Policy::FailFast, 6);
        let ok = |v: u64| (Tag::Ok, enc(&v));
        let recs = records(&[ok(10), ok(11), (Tag::Panic, b"x".to_vec()), ok(13)]);
        a.accept_records(0, recs, 4, vec![], None);
        a.accept(4, Ok(item(&14u64)));
        a.accept(5, Ok(item(&15u64)));
        let Err(JobError::MembersFailed(f)) = a.finish() else {
            panic!("the group should fail");
        };
        let ok: Vec<(usize, u64)> = f
            .encoded_successes()
            .map(|(i, b)| (i, Codec::Bincode.decode(b).unwrap()))
            .collect();
        assert_eq!(ok, [(0, 10), (1, 11), (3, 13), (4, 14), (5, 15)]);
    }

    /// Collect-all: a `Vec<Result<R, JobError>>`; a failure that was being
    /// retried is replaced by the retry's outcome.
    #[test]
    fn collect_all_gives_every_outcome() {
        let mut a = Assembly::new(Shape::Vec, Policy::CollectAll, 4);
        a.accept_failed(
            0,
            3,
            JobError::Crashed {
                signal: Some(9),
                exit_code: None,
            },
            vec![1],
        );
        a.accept(1, Ok(item(&"retried".to_string())));
        a.accept(3, Err(JobError::Expired));
        let v: Vec<Result<String, JobError>> = value(a.finish());
        let crashed = Err(JobError::Crashed {
            signal: Some(9),
            exit_code: None,
        });
        assert_eq!(
            v,
            [
                crashed.clone(),
                Ok("retried".into()),
                crashed,
                Err(JobError::Expired)
            ]
        );
    }

    /// A tuple is its members' results side by side; a success standing for
    /// an ignored result is the unit given.
    #[test]
    fn tuples_and_ignored_results() {
        let mut a = Assembly::new(Shape::Tuple, Policy::FailFast, 3);
        let unit: Arc<[u8]> = Arc::from(enc(&()));
        a.accept(2, Ok(item(&"c".to_string())));
        a.accept_records(1, records(&[(Tag::Ok, enc(&99u64))]), 1, vec![], Some(unit));
        a.accept(0, Ok(item(&7u16)));
        let v: (u16, (), String) = value(a.finish());
        assert_eq!(v, (7, (), "c".to_string()));
        let empty = Assembly::new(Shape::Vec, Policy::FailFast, 0);
        assert!(empty.is_complete());
        assert_eq!(value::<Vec<u8>>(empty.finish()), Vec::<u8>::new());
    }
}
