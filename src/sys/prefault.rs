//! Buffers faulted in ahead of need, for big byte strings the caller decodes.
//!
//! A result holding a big byte string (a `serde_bytes::ByteBuf`, a `String`)
//! is decoded into freshly allocated memory, and every fresh 4 KiB page
//! costs the thread that first touches it a page fault — about a
//! microsecond on a VM. For a `map` echoing 1 MiB payloads that was 40% of
//! the calling thread's time, and the calling thread is that workload's
//! bottleneck. A [`Prefault`] keeps a small stock of buffers already
//! faulted in, made by a thread of its own beside the caller (on a core the
//! workers leave idle), so decoding such a string is a single copy.
//!
//! What it promises:
//! - Strings shorter than [`MIN`] or longer than [`MAX`] never touch it.
//! - It stocks the size classes asked for lately (at most four classes, a
//!   class once asked for twice): a buffer's capacity exceeds the length it
//!   was taken for by at most 1/16.
//! - It holds at most four buffers of a class and [`BUDGET`] bytes in all;
//!   a stock nobody took from for [`IDLE`] is freed.
//! - The thread starts on the first request in range and is joined when the
//!   `Prefault` drops. It never holds the lock while it faults.

use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sys::hugepage;

/// Shorter strings come from memory the allocator recycles, or fault too
/// little to be worth a hand-off.
pub(crate) const MIN: usize = 256 << 10;

/// Longer strings are decoded into memory of their own: a stock of them
/// would hold too much.
pub(crate) const MAX: usize = 16 << 20;

/// A stock nobody took from for this long is freed.
pub(crate) const IDLE: Duration = Duration::from_millis(100);

/// Bytes one class's stock aims at (at least one buffer, at most four).
const CLASS_BYTES: usize = 8 << 20;

/// Bytes all stocks hold at most.
pub(crate) const BUDGET: usize = 24 << 20;

/// Size classes stocked at once.
const CLASSES: usize = 4;

/// Pages are touched this far apart (the smallest page size in use).
const PAGE: usize = 4096;

/// The owner of a pool's stocks: stops and joins the filling thread when
/// dropped. Handles to the stocks ([`Spares`]) may outlive it; they then
/// neither stock nor start anything.
pub(crate) struct Prefault {
    spares: Spares,
}

/// A handle to a pool's stocks of faulted-in buffers, for whoever decodes
/// big byte strings or recycles big internal buffers.
#[derive(Clone)]
pub(crate) struct Spares {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the filling thread: a buffer was taken, or it must stop.
    wake: Condvar,
    /// The filling thread, started on the first request that needs it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// Stocks of the classes asked for lately.
    stocks: Vec<Stock>,
    /// Whether the stocks are being used (false after `IDLE` without a take).
    wanted: bool,
    /// Requests so far: tells an idle stock from a busy one, and orders
    /// classes by their latest use.
    takes: u64,
    /// Requests served from a stock.
    hits: u64,
    /// Whether the filling thread was started (or could not be).
    started: bool,
    stop: bool,
}

/// The buffers of one size class.
struct Stock {
    class: usize,
    spares: Vec<Vec<u8>>,
    /// Requests for this class (it is stocked from the second on).
    asked: u64,
    /// `takes` at its latest request.
    used_at: u64,
}

impl State {
    /// Bytes of capacity in stock.
    fn held(&self) -> usize {
        let each = |s: &Stock| s.spares.iter().map(Vec::capacity).sum::<usize>();
        self.stocks.iter().map(each).sum()
    }

    /// The class the filling thread should make a buffer of next: the most
    /// recently used one that is short, if the budget has room.
    fn short_class(&self) -> Option<usize> {
        let held = self.held();
        self.stocks
            .iter()
            .filter(|s| s.asked >= 2 && s.spares.len() < depth(s.class))
            .filter(|s| held + s.class <= BUDGET)
            .max_by_key(|s| s.used_at)
            .map(|s| s.class)
    }
}

impl Prefault {
    pub(crate) fn new() -> Self {
        Prefault {
            spares: Spares {
                inner: Arc::new(Inner {
                    state: Mutex::new(State::default()),
                    wake: Condvar::new(),
                    thread: Mutex::new(None),
                }),
            },
        }
    }

    /// The stocks.
    pub(crate) fn spares(&self) -> &Spares {
        &self.spares
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        let inner = &self.spares.inner;
        inner.clear(inner.lock(), true);
        inner.wake.notify_one();
        let thread = inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Spares {
    /// An empty buffer with room for `len` bytes, already faulted in, if the
    /// stock has one of `len`'s size class. Asking steers the stock towards
    /// `len`'s class either way.
    #[inline]
    pub(crate) fn take(&self, len: usize) -> Option<Vec<u8>> {
        if !(MIN..=MAX).contains(&len) {
            return None;
        }
        self.take_in_range(len)
    }

    #[cold]
    fn take_in_range(&self, len: usize) -> Option<Vec<u8>> {
        let class = class(len);
        let mut st = self.inner.lock();
        if st.stop {
            return None;
        }
        st.takes += 1;
        st.wanted = true;
        let now = st.takes;
        let mut evicted = Vec::new();
        let at = match st.stocks.iter().position(|s| s.class == class) {
            Some(at) => at,
            None => {
                if st.stocks.len() == CLASSES {
                    let (lru, _) = (st.stocks.iter().enumerate())
                        .min_by_key(|(_, s)| s.used_at)
                        .expect("CLASSES > 0");
                    evicted = st.stocks.swap_remove(lru).spares;
                }
                st.stocks.push(Stock {
                    class,
                    spares: Vec::new(),
                    asked: 0,
                    used_at: now,
                });
                st.stocks.len() - 1
            }
        };
        let stock = &mut st.stocks[at];
        stock.asked += 1;
        stock.used_at = now;
        let got = stock.spares.pop();
        st.hits += u64::from(got.is_some());
        let fill = !st.stop && st.short_class().is_some();
        let start = fill && !mem::replace(&mut st.started, true);
        drop(st);
        drop(evicted);
        if start {
            // Under the thread slot's lock, so that `Prefault::drop`, which
            // takes it after setting `stop`, joins what is started here.
            let mut slot = self
                .inner
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let inner = self.inner.clone();
            match std::thread::Builder::new()
                .name("forkpool-prefault".into())
                .spawn(move || inner.fill())
            {
                Ok(thread) => *slot = Some(thread),
                Err(_) => {
                    // No thread, no stocks: nothing would free them.
                    drop(slot);
                    self.inner.clear(self.inner.lock(), true);
                    return got;
                }
            }
        }
        if fill {
            self.inner.wake.notify_one();
        }
        got
    }

    /// Gives back a big buffer that is no longer needed, to serve a later
    /// [`take`](Self::take) of its size class: kept if that class is
    /// stocked (asked for twice) and short and the budget has room, freed
    /// otherwise. Kept buffers are freed with the rest after `IDLE`
    /// without a take.
    #[inline]
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if (MIN..=MAX).contains(&buf.capacity()) {
            self.give_in_range(buf);
        }
    }

    #[cold]
    fn give_in_range(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        let class = floor_class(cap);
        let mut st = self.inner.lock();
        if st.stop {
            return;
        }
        let room = st.held() + cap <= BUDGET;
        if let Some(stock) = st.stocks.iter_mut().find(|s| s.class == class)
            && stock.asked >= 2
            && stock.spares.len() < depth(class)
            && room
        {
            buf.clear();
            stock.spares.push(buf);
            drop(st);
            // The filling thread may be asleep with nothing held: it must
            // start the idle clock for this buffer.
            self.inner.wake.notify_one();
            return;
        }
        drop(st);
        drop(buf);
    }

    /// Requests served from the stock so far.
    #[cfg(test)]
    pub(crate) fn hits(&self) -> u64 {
        self.inner.lock().hits
    }

    /// Buffers in stock now.
    #[cfg(test)]
    fn stocked(&self) -> usize {
        self.inner
            .lock()
            .stocks
            .iter()
            .map(|s| s.spares.len())
            .sum()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Empties the stocks, freeing them outside the lock, and marks them
    /// unwanted; with `stop`, for good.
    fn clear(&self, mut st: MutexGuard<'_, State>, stop: bool) {
        st.stop |= stop;
        st.wanted = false;
        let stocks = mem::take(&mut st.stocks);
        drop(st);
        drop(stocks);
    }

    /// The filling thread: keeps the stocks full while they are wanted,
    /// frees them when they are not, and returns when told to stop.
    fn fill(&self) {
        let mut st = self.lock();
        loop {
            if st.stop {
                return;
            }
            if let Some(class) = st.short_class().filter(|_| st.wanted) {
                drop(st);
                let buf = faulted(class);
                st = self.lock();
                let stock = st.stocks.iter_mut().find(|s| s.class == class);
                match stock {
                    Some(s) if s.spares.len() < depth(class) => s.spares.push(buf),
                    _ => {
                        // Not wanted any more: freed outside the lock.
                        drop(st);
                        drop(buf);
                        st = self.lock();
                    }
                }
            } else if st.wanted || st.held() > 0 {
                let seen = st.takes;
                let (guard, waited) = self
                    .wake
                    .wait_timeout(st, IDLE)
                    .unwrap_or_else(PoisonError::into_inner);
                st = guard;
                if waited.timed_out() && st.takes == seen && !st.stop {
                    self.clear(st, false);
                    st = self.lock();
                }
            } else {
                st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

/// The size class of `len`: 32 classes per power of two, so a class
/// exceeds any length in it by at most 1/16.
fn class(len: usize) -> usize {
    let step = (len.next_power_of_two() / 32).max(PAGE);
    len.next_multiple_of(step)
}

/// The largest size class not above `cap`: a buffer of `cap` bytes'
/// capacity can serve any length of that class.
fn floor_class(cap: usize) -> usize {
    let step = (cap.next_power_of_two() / 32).max(PAGE);
    cap - cap % step
}

/// How many buffers of `class` bytes its stock holds.
fn depth(class: usize) -> usize {
    (CLASS_BYTES / class).clamp(1, 4)
}

/// An empty buffer of `class` bytes' capacity whose pages are all faulted
/// in (huge pages where the kernel gives them).
fn faulted(class: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(class);
    hugepage::advise(&buf);
    for byte in buf.spare_capacity_mut().iter_mut().step_by(PAGE) {
        byte.write(0);
    }
    // The writes are the point: keep them even though nothing reads them.
    std::hint::black_box(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Polls `cond` for up to 10 s (the machine may be loaded).
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn classes_bound_the_waste() {
        for len in [MIN, MIN + 1, 1 << 20, (1 << 20) + 1, 3_000_001, MAX] {
            let c = class(len);
            assert!(c >= len && c - len <= len / 16, "{len} -> {c}");
            assert_eq!(class(c), c, "a class is its own class");
            let f = floor_class(len);
            assert!(f <= len && class(f) == f, "{len} -> floor {f}");
            assert!(class(len) == len || floor_class(len) < class(len));
        }
        assert_eq!(class(1 << 20), 1 << 20);
        assert_eq!(depth(1 << 20), 4);
        assert_eq!(depth(MAX), 1);
        const { assert!(MAX <= BUDGET) };
    }

    #[test]
    fn out_of_range_lengths_never_start_the_thread() {
        let owner = Prefault::new();
        let p = owner.spares();
        assert!(p.take(MIN - 1).is_none());
        assert!(p.take(MAX + 1).is_none());
        assert!(p.inner.thread.lock().unwrap().is_none());
        assert_eq!(p.inner.lock().takes, 0);
    }

    #[test]
    fn classes_asked_for_twice_are_stocked_and_served() {
        let owner = Prefault::new();
        let p = owner.spares();
        let len = (1 << 20) + 100;
        assert!(p.take(len).is_none(), "the first request finds no stock");
        assert!(
            p.inner.thread.lock().unwrap().is_none(),
            "nor does it start the thread"
        );
        assert!(p.take(len).is_none());
        assert!(eventually(|| p.stocked() == depth(class(len))));
        let buf = p.take(len).expect("a stocked buffer");
        assert!(buf.is_empty());
        assert!(buf.capacity() >= len && buf.capacity() - len <= len / 16);
        assert_eq!(p.hits(), 1);
        // A second class is stocked beside the first.
        let other = 5 << 20;
        assert!(p.take(other).is_none() && p.take(other).is_none());
        let both = depth(class(len)) + depth(class(other));
        assert!(eventually(|| p.stocked() == both));
        assert!(p.take(len).is_some() && p.take(other).is_some());
        assert_eq!(p.hits(), 3);
    }

    #[test]
    fn given_buffers_serve_their_class_and_only_while_the_owner_lives() {
        let owner = Prefault::new();
        let p = owner.spares().clone();
        // Not stocked yet: a given buffer is freed.
        p.give(Vec::with_capacity(1 << 20));
        assert_eq!(p.stocked(), 0);
        p.take(1 << 20);
        p.take(1 << 20);
        assert!(eventually(|| p.stocked() == depth(1 << 20)));
        // A buffer given back serves the next take, empty — unless the
        // filling thread topped the stock up between the give and the take
        // (then the give found it full, or the take got the new one): a
        // few tries each, of which most must see their buffer again.
        let comes_back = |buf: Vec<u8>| {
            let (at, cap) = (buf.as_ptr(), buf.capacity());
            p.give(buf);
            let again = p.take(1 << 20).expect("a stocked buffer");
            assert!(again.is_empty());
            let same = again.as_ptr() == at && again.capacity() == cap;
            p.give(again); // the stock stays as deep as it was
            same
        };
        let used = (0..10)
            .filter(|_| {
                let mut used = p.take(1 << 20).expect("a stocked buffer");
                used.extend_from_slice(&[7; 1000]);
                comes_back(used)
            })
            .count();
        assert!(used >= 5, "a used buffer came back {used} times of 10");
        // A buffer a little bigger than the class serves it too.
        let bigger = (0..10)
            .filter(|_| {
                drop(p.take(1 << 20)); // room in the stock
                comes_back(Vec::with_capacity((1 << 20) + 5000))
            })
            .count();
        assert!(
            bigger >= 5,
            "a bigger buffer came back {bigger} times of 10"
        );
        // Too small or too big: never kept.
        let before = p.stocked();
        p.give(Vec::with_capacity(MIN - 1));
        p.give(Vec::with_capacity(MAX + 1));
        assert_eq!(p.stocked(), before);
        // Once the owner is gone, handles keep and start nothing.
        drop(owner);
        assert!(p.take(1 << 20).is_none() && p.take(1 << 20).is_none());
        p.give(Vec::with_capacity(1 << 20));
        assert_eq!(p.stocked(), 0);
        assert!(p.inner.thread.lock().unwrap().is_none());
    }

    #[test]
    fn given_buffers_keep_to_asked_classes_and_the_budget_then_go_when_idle() {
        let owner = Prefault::new();
        let p = owner.spares();
        p.take(1 << 20);
        p.give(Vec::with_capacity(1 << 20));
        assert_eq!(p.stocked(), 0, "a class asked for once keeps nothing");
        let classes = [15 << 20, 14 << 20, 13 << 20, 12 << 20];
        for c in classes {
            p.take(c);
            p.take(c);
        }
        assert!(eventually(|| p.stocked() >= 1));
        for c in classes {
            p.give(Vec::with_capacity(c));
            let held = p.inner.lock().held();
            assert!(held <= BUDGET, "{held} bytes held");
        }
        assert!(eventually(|| p.stocked() == 0), "freed after IDLE");
    }

    #[test]
    fn stocks_keep_to_four_classes_and_the_budget() {
        let owner = Prefault::new();
        let p = owner.spares();
        let classes = [MIN, 1 << 20, 3 << 20, 7 << 20, MAX];
        for &c in &classes {
            p.take(c);
            p.take(c);
        }
        // The least recently used class (MIN) was evicted; the others fill,
        // most recent first, while the budget has room: 16 + 7 + 1 MiB.
        assert!(eventually(|| p.stocked() >= 3));
        std::thread::sleep(Duration::from_millis(20));
        let st = p.inner.lock();
        assert_eq!(st.stocks.len(), CLASSES);
        assert!(st.stocks.iter().all(|s| s.class != MIN));
        assert!(st.held() <= BUDGET, "{}", st.held());
    }

    #[test]
    fn an_unused_stock_is_freed_and_the_thread_is_joined_on_drop() {
        let owner = Prefault::new();
        let p = owner.spares();
        p.take(MIN);
        p.take(MIN);
        assert!(eventually(|| p.stocked() > 0));
        assert!(eventually(|| p.stocked() == 0), "freed after IDLE");
        assert!(!p.inner.lock().wanted);
        // Asking again (twice: the classes were forgotten) fills it again.
        p.take(MIN);
        p.take(MIN);
        assert!(eventually(|| p.stocked() > 0));
        let inner = Arc::downgrade(&p.inner);
        drop(owner);
        assert!(inner.upgrade().is_none(), "the thread has let go");
    }
}
