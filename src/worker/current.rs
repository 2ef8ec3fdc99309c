//! What a job can ask of the worker it runs in: whether its soft time
//! limit passed ([`soft_time_limit_exceeded`]), and where to report how far
//! it is ([`report_progress`]).
//!
//! Both read or write the worker's status page (shared memory the
//! supervisor reads; see `transport/shm.rs`) through a pointer set once
//! when the worker starts; in any other process — the caller included —
//! the pointer is null and both calls do nothing. A report is three plain
//! stores, no message and no system call, so a job may report on every
//! iteration of a tight loop: only the latest report is kept.

use crate::transport::status::StatusPage;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// This worker's status page, once it runs (null in the caller).
static PAGE: AtomicPtr<StatusPage> = AtomicPtr::new(std::ptr::null_mut());
/// `seq + 1` of the item running now, 0 between items.
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// Makes this process a worker whose status page is `page` (called once,
/// by the worker's main, before the first job).
pub(super) fn enter(page: &'static StatusPage) {
    PAGE.store((page as *const StatusPage).cast_mut(), Ordering::Release);
}

/// Records `seq + 1` of the item of a timed batch that runs now (0 between
/// items), for [`soft_time_limit_exceeded`].
#[inline(always)]
pub(super) fn set_timed_item(item: u64) {
    CURRENT.store(item, Ordering::Relaxed);
}

/// Whether the soft time limit of the running job has passed.
///
/// A job with a soft limit ([`PoolBuilder::soft_time_limit`](crate::PoolBuilder::soft_time_limit))
/// polls this to stop cleanly before the hard limit kills its worker. When
/// the soft limit passes, the worker also receives `SIGUSR1`, which
/// interrupts a blocking system call (it returns `EINTR`) so the job gets
/// to look. Outside a pool job this is always false.
///
/// ```
/// fn crunch(n: u64) -> u64 {
///     let mut acc = 0u64;
///     for i in 0..n {
///         if i % 1024 == 0 && forkpool::soft_time_limit_exceeded() {
///             break; // return what we have
///         }
///         acc = acc.wrapping_add(i * i);
///     }
///     acc
/// }
/// assert_eq!(crunch(4), 14);
/// ```
pub fn soft_time_limit_exceeded() -> bool {
    let page = PAGE.load(Ordering::Acquire);
    let cur = CURRENT.load(Ordering::Relaxed);
    if page.is_null() || cur == 0 {
        return false;
    }
    // SAFETY: PAGE is only set in a worker, to its leaked, never-unmapped region.
    unsafe { &*page }.soft_expired.0.load(Ordering::Acquire) == cur
}

/// The status page and `seq + 1` of the item this worker is running, when
/// called from inside a job; `None` anywhere else (the caller, a worker
/// between items). Read from the page's `current` word, which every item
/// sets (`CURRENT` is kept for timed batches only).
fn running_item() -> Option<(&'static StatusPage, u64)> {
    let page = PAGE.load(Ordering::Acquire);
    if page.is_null() {
        return None;
    }
    // SAFETY: PAGE is only set in a worker, to its leaked, never-unmapped region.
    let page = unsafe { &*page };
    let seq = page.worker.current.load_own().running()?;
    Some((page, seq + 1))
}

/// Reports, from inside a job, that it has done `done` units out of
/// `total`. Cheap enough for every iteration of a loop: it overwrites the
/// previous report in shared memory and sends nothing. Outside a pool job
/// it does nothing.
///
/// ```
/// fn crunch(n: u64) -> u64 {
///     let mut acc = 0u64;
///     for i in 0..n {
///         acc = acc.wrapping_add(i * i);
///         forkpool::report_progress(i + 1, n);
///     }
///     acc
/// }
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(1)?;
/// let handle = pool.submit(crunch, 50_000_000);
/// // Meanwhile: handle.progress() is Some(Progress { done, total }) once it reports.
/// let _ = handle.progress();
/// assert!(handle.get().is_ok());
/// # Ok(()) }
/// ```
pub fn report_progress(done: u64, total: u64) {
    if let Some((page, item)) = running_item() {
        page.progress.write(item, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_job_nothing_happens() {
        report_progress(1, 2);
        assert!(!soft_time_limit_exceeded());
        assert!(running_item().is_none());
    }
}
