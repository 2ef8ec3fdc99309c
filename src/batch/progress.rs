//! Progress reports from inside a job: [`report_progress`] and [`Progress`].
//!
//! A report is three plain stores into the worker's status page (shared
//! memory the supervisor can read; see `shm.rs`), no message and no system
//! call, so a job may report on every iteration of a tight loop: only the
//! latest report is kept. The caller reads it on demand —
//! [`JobHandle::progress`](crate::JobHandle::progress), or
//! [`Pool::status`](crate::Pool::status) for a detached job — when the
//! supervisor looks at the page of the worker running that job.

/// How far a running job says it is: `done` out of `total` (units are the
/// job's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction() {
        assert_eq!(Progress { done: 0, total: 0 }.fraction(), None);
        assert_eq!(Progress { done: 9, total: 3 }.fraction(), Some(1.0));
    }
}
