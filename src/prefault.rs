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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::hugepage;

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

/// A stock of faulted-in buffers and the thread that fills it.
pub(crate) struct Prefault {
    inner: Arc<Inner>,
    /// Started on the first request in range; `None` if it could not be.
    thread: OnceLock<Option<JoinHandle<()>>>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the filling thread: a buffer was taken, or it must stop.
    wake: Condvar,
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
    /// The class the filling thread should make a buffer of next: the most
    /// recently used one that is short, if the budget has room.
    fn short_class(&self) -> Option<usize> {
        let held: usize = self.stocks.iter().map(|s| s.class * s.spares.len()).sum();
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
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
            thread: OnceLock::new(),
        }
    }

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
        let fill = st.short_class().is_some();
        drop(st);
        drop(evicted);
        if fill {
            self.thread.get_or_init(|| {
                let inner = self.inner.clone();
                std::thread::Builder::new()
                    .name("forkpool-prefault".into())
                    .spawn(move || inner.fill())
                    .ok()
            });
            self.inner.wake.notify_one();
        }
        got
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

impl Default for Prefault {
    fn default() -> Self {
        Prefault::new()
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.wake.notify_one();
        if let Some(Some(thread)) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
            } else if st.wanted {
                let seen = st.takes;
                let (guard, waited) = self
                    .wake
                    .wait_timeout(st, IDLE)
                    .unwrap_or_else(PoisonError::into_inner);
                st = guard;
                if waited.timed_out() && st.takes == seen && !st.stop {
                    st.wanted = false;
                    let idle = mem::take(&mut st.stocks);
                    drop(st);
                    drop(idle);
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
        }
        assert_eq!(class(1 << 20), 1 << 20);
        assert_eq!(depth(1 << 20), 4);
        assert_eq!(depth(MAX), 1);
        const { assert!(MAX <= BUDGET) };
    }

    #[test]
    fn out_of_range_lengths_never_start_the_thread() {
        let p = Prefault::new();
        assert!(p.take(MIN - 1).is_none());
        assert!(p.take(MAX + 1).is_none());
        assert!(p.thread.get().is_none());
        assert_eq!(p.inner.lock().takes, 0);
    }

    #[test]
    fn classes_asked_for_twice_are_stocked_and_served() {
        let p = Prefault::new();
        let len = (1 << 20) + 100;
        assert!(p.take(len).is_none(), "the first request finds no stock");
        assert!(p.thread.get().is_none(), "nor does it start the thread");
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
    fn stocks_keep_to_four_classes_and_the_budget() {
        let p = Prefault::new();
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
        let held: usize = st.stocks.iter().map(|s| s.class * s.spares.len()).sum();
        assert!(held <= BUDGET, "{held}");
    }

    #[test]
    fn an_unused_stock_is_freed_and_the_thread_is_joined_on_drop() {
        let p = Prefault::new();
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
        drop(p);
        assert!(inner.upgrade().is_none(), "the thread has let go");
    }
}
