//! Progress reports from inside a job: [`report_progress`] and [`Progress`].
//!
//! A report is three plain stores into the worker's status page (shared
//! memory the supervisor can read; see `shm.rs`), no message and no system
//! call, so a job may report on every iteration of a tight loop: only the
//! latest report is kept. The caller reads it on demand —
//! [`JobHandle::progress`](crate::JobHandle::progress), or
//! [`Pool::status`](crate::Pool::status) for a detached job — when the
//! supervisor looks at the page of the worker running that job.

use crate::worker;

/// How far a running job says it is: `done` out of `total` (units are the
/// job's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

impl Progress {
    /// `done / total`, between 0 and 1; `None` when `total` is 0.
    ///
    /// ```
    /// let p = forkpool::Progress { done: 25, total: 100 };
    /// assert_eq!(p.fraction(), Some(0.25));
    /// ```
    pub fn fraction(&self) -> Option<f64> {
        (self.total > 0).then(|| (self.done.min(self.total)) as f64 / self.total as f64)
    }
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
    if let Some((page, item)) = worker::running_item() {
        page.progress.write(item, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_and_reports_outside_a_job() {
        assert_eq!(Progress { done: 0, total: 0 }.fraction(), None);
        assert_eq!(Progress { done: 9, total: 3 }.fraction(), Some(1.0));
        report_progress(1, 2); // not in a job: nothing happens
    }
}
