//! The spare worker: one worker forked ahead of need, so that a lost worker
//! is replaced at once instead of after a fork.
//!
//! Replacing a worker that died costs a fork of the zygote (about a
//! millisecond for a 50 MB caller) after the kernel has torn the dead one
//! down (about as long again), and the job waiting for it pays both. A
//! standby is a worker like any other — its own rings and doorbells, the
//! initializer already run — that is given no work and sleeps on its
//! doorbell. When the pool is short of a worker, `Supervisor::maintain`
//! promotes the standby (a flag flips; nothing is forked or sent) and forks
//! a new standby behind it.
//!
//! When to fork the next standby matters as much. The fork server forks
//! one request at a time, and a dead worker's pipe closes before the fork
//! server can reap it: a standby asked for at once would hold up the report
//! of the job that crashed by a whole fork. So `maintain` asks for the next
//! standby only once every dead worker has been reported, and then only
//! once the promoted worker has answered (see [`hold`]): a fork of a large
//! caller keeps a CPU busy for about a millisecond, and the promoted
//! worker's first job is usually the one a caller is waiting for.
//!
//! This file owns the policy: when a pool keeps a standby. By default a
//! pool starts keeping one once it first replaces a worker (a crash, a time
//! limit, a cancellation, a task or memory limit), so a pool whose workers
//! never die never pays for the extra process. `PoolBuilder::standby_worker`
//! overrides the choice either way.

/// Longest a promoted worker's first answer holds up the next standby.
const HOLD: u64 = 5_000_000;

/// Until when the next standby's fork waits, given the promotion times of
/// workers that have not answered yet (`None` in the iterator: answered, or
/// never a standby); `None`: fork it now.
pub(super) fn hold(promoted: impl Iterator<Item = Option<u64>>, now: u64) -> Option<u64> {
    promoted
        .flatten()
        .map(|at| at.saturating_add(HOLD))
        .filter(|&until| until > now)
        .max()
}

/// Whether the pool keeps a standby worker now.
pub(super) struct Standby {
    keep: bool,
    /// The user did not choose: start keeping one at the first loss.
    automatic: bool,
}

impl Standby {
    /// The user's choice (`PoolBuilder::standby_worker`), if any.
    pub(super) fn new(choice: Option<bool>) -> Standby {
        match choice {
            Some(keep) => Standby {
                keep,
                automatic: false,
            },
            None => Standby {
                keep: false,
                automatic: true,
            },
        }
    }

    /// Whether a standby should exist (when the pool is taking work).
    pub(super) fn wanted(&self) -> bool {
        self.keep
    }

    /// The pool had to replace a worker: from now on, keep a standby
    /// unless the user said not to.
    pub(super) fn worker_replaced(&mut self) {
        if self.automatic {
            self.keep = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_keeps_one_after_the_first_replacement() {
        let mut s = Standby::new(None);
        assert!(!s.wanted());
        s.worker_replaced();
        assert!(s.wanted());
    }

    #[test]
    fn the_next_standby_waits_for_the_promoted_workers_first_answer() {
        assert_eq!(hold([None, None].into_iter(), 10), None);
        assert_eq!(hold([None, Some(10)].into_iter(), 10), Some(10 + HOLD));
        assert_eq!(hold([Some(0)].into_iter(), HOLD), None);
    }

    #[test]
    fn the_users_choice_holds() {
        let mut s = Standby::new(Some(false));
        s.worker_replaced();
        assert!(!s.wanted());
        let s = Standby::new(Some(true));
        assert!(s.wanted());
    }
}
