//! How many workers a queue should have: a pure policy, like `standby.rs`
//! (the supervisor acts on it in `spawn.rs`).
//!
//! - **Grow** as soon as jobs wait and no worker is free to take them:
//!   one more worker per waiting item, up to `max`. Workers still starting
//!   count as free, so a backlog is not answered twice. The supervisor
//!   steps whenever a job is submitted, so a backlog is seen at once, not
//!   on a periodic tick.
//! - **Shrink** only idle workers: one beyond `min` that has been idle for
//!   the keep-alive leaves, and one beyond `max` (after a resize) leaves as
//!   soon as it is idle. A worker with a job is never asked to leave, so
//!   scaling down never costs a job.
//! - **Resizing** changes the bounds the policy works within; it does not
//!   race it.

use std::time::Duration;

/// A queue's worker bounds and keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
    pub min: usize,
    pub max: usize,
    /// Nanoseconds an idle worker beyond `min` stays.
    pub keep_alive: u64,
}

impl Bounds {
    pub(super) fn new(min: usize, max: usize, keep_alive: Duration) -> Bounds {
        Bounds {
            min,
            max,
            keep_alive: keep_alive.as_nanos().min(u128::from(u64::MAX)) as u64,
        }
    }

    /// Whether the worker count may change with the load.
    pub(super) fn scales(&self) -> bool {
        self.min < self.max
    }
}

/// What the policy sees of a queue at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Load {
    /// Workers taking work, or starting to (not leaving, not the standby).
    pub workers: usize,
    /// Of those, workers with work in flight.
    pub busy: usize,
    /// Items waiting in the queue for a worker.
    pub waiting: u64,
}

/// How many workers the queue should have now. Never below `min`, never
/// above `max`, and above the present number only for waiting work no
/// present worker is free to take. (It never asks for fewer than are
/// there: workers leave one by one, when idle — see [`leaving`].)
pub(super) fn wanted(b: &Bounds, load: Load) -> usize {
    let free = load.workers.saturating_sub(load.busy) as u64;
    let short = load.waiting.saturating_sub(free);
    let asked = (load.workers as u64).saturating_add(short);
    let asked = usize::try_from(asked).unwrap_or(usize::MAX);
    asked.min(b.max).max(b.min)
}

/// Which idle workers should leave now, given `workers` workers of which
/// `idle` (a worker's index and since when it is idle, coarse ns) have
/// nothing to do: first any beyond `max`, at once; then, down to `min`,
/// those idle for the keep-alive, longest idle first. Also returns when to
/// look again (the next keep-alive to fall due), if ever.
pub(super) fn leaving(
    b: &Bounds,
    workers: usize,
    idle: &mut [(usize, u64)],
    now: u64,
) -> (Vec<usize>, Option<u64>) {
    idle.sort_by_key(|&(_, since)| since);
    let mut left = workers;
    let mut out = Vec::new();
    let mut next = None;
    for &(i, since) in idle.iter() {
        if left <= b.min {
            break;
        }
        let due = since.saturating_add(b.keep_alive);
        if left > b.max || due <= now {
            out.push(i);
            left -= 1;
        } else {
            next = Some(next.map_or(due, |n: u64| n.min(due)));
        }
    }
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn bounds(min: usize, max: usize) -> Bounds {
        Bounds::new(min, max, Duration::from_secs(10))
    }

    fn load(workers: usize, busy: usize, waiting: u64) -> Load {
        Load {
            workers,
            busy,
            waiting,
        }
    }

    #[test]
    fn grows_for_waiting_work_no_free_worker_takes() {
        let b = bounds(1, 8);
        assert_eq!(wanted(&b, load(1, 1, 0)), 1, "busy, nothing waits");
        assert_eq!(wanted(&b, load(1, 1, 3)), 4, "three wait, none free");
        assert_eq!(wanted(&b, load(4, 1, 3)), 4, "three wait, three free");
        assert_eq!(wanted(&b, load(2, 2, 100)), 8, "capped at max");
        assert_eq!(wanted(&b, load(0, 0, 0)), 1, "never below min");
        assert_eq!(
            wanted(&bounds(0, 4), load(0, 0, 0)),
            0,
            "an idle queue costs nothing"
        );
        assert_eq!(wanted(&bounds(0, 4), load(0, 0, 1)), 1);
        assert_eq!(wanted(&bounds(3, 3), load(1, 1, 0)), 3, "a fixed size");
        assert_eq!(
            wanted(&bounds(1, 2), load(5, 5, 9)),
            2,
            "above max after a resize: no more"
        );
    }

    #[test]
    fn only_idle_workers_leave_after_the_keep_alive() {
        let b = bounds(1, 8);
        let mut idle = vec![(0, 0), (1, 5 * S), (2, 9 * S)];
        let (out, next) = leaving(&b, 4, &mut idle, 12 * S);
        assert_eq!(out, [0], "idle since 0 (12 s) leaves");
        assert_eq!(next, Some(15 * S), "the next one falls due at 5 + 10 s");
        let (out, _) = leaving(&b, 4, &mut idle, 20 * S);
        assert_eq!(out, [0, 1, 2], "down to min 1 of 4");
        let (out, next) = leaving(&b, 2, &mut [(3, 0)], 100 * S);
        assert_eq!((out.len(), next), (1, None));
        let (out, next) = leaving(&b, 1, &mut [(3, 0)], 100 * S);
        assert_eq!((out, next), (vec![], None), "never below min");
    }

    #[test]
    fn beyond_max_an_idle_worker_leaves_at_once() {
        let b = bounds(1, 2);
        let mut idle = vec![(0, 10 * S), (1, 10 * S)];
        let (out, next) = leaving(&b, 4, &mut idle, 10 * S);
        assert_eq!(out, [0, 1], "4 workers, max 2: both idle ones go now");
        assert_eq!(next, None);
        let (out, _) = leaving(&b, 3, &mut [(0, 10 * S)], 10 * S);
        assert_eq!(out, [0]);
    }
}
