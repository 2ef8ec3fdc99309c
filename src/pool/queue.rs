//! Named queues as the user sees them: [`Queue`], the settings of one
//! queue for [`PoolBuilder::queue`](crate::PoolBuilder::queue), and
//! [`QueueRef`], a pool seen through one of its queues
//! ([`Pool::queue`](crate::Pool::queue)).
//!
//! Every queue has workers of its own, so slow jobs never hold up fast
//! ones in another queue; within a queue, higher priorities run first.
//! A queue that is not given a setting takes the pool's (the builder's
//! own settings are those of the queue called `"default"`).

use super::Pool;
use crate::client::imap::{Imap, ImapUnordered};
use crate::client::map;
use crate::config::{QueueConfig, WorkerConfig};
use crate::error::{Error, JobError, TrySubmitError};
use crate::options::signature::Job;
use crate::worker::call::Func;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long an idle worker beyond a queue's minimum lives, by default:
/// ten seconds, like tokio's blocking pool.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The settings of one named queue: its workers and its jobs' defaults.
///
/// Each queue has its own workers — a fixed number, or a range the pool
/// scales within as jobs wait ([`autoscale`](Self::autoscale)). A setting
/// left unset takes the pool's.
///
/// ```
/// use forkpool::{Pool, Queue};
/// use std::time::Duration;
/// # fn main() -> Result<(), forkpool::Error> {
/// fn resize(px: u32) -> u32 { px / 2 }
/// fn thumbnail(px: u32) -> u32 { px / 8 }
/// let pool = Pool::builder()
///     .workers(2) // the "default" queue
///     .queue("images", Queue::new().autoscale(0, 4).time_limit(Duration::from_secs(30)))
///     .route(resize, "images")
///     .build()?;
/// assert_eq!(pool.apply(resize, 640), Ok(320)); // routed to "images"
/// assert_eq!(pool.queue("images")?.apply(thumbnail, 640), Ok(80));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a queue's settings do nothing until given to PoolBuilder::queue"]
pub struct Queue {
    pub(super) workers: Option<(usize, usize)>,
    pub(super) keep_alive: Option<Duration>,
    pub(super) max_tasks_per_worker: Option<usize>,
    pub(super) max_memory_per_worker: Option<u64>,
    pub(super) time_limit: Option<Duration>,
    pub(super) soft_time_limit: Option<Duration>,
    pub(super) aging: Option<Duration>,
}

impl Queue {
    /// A queue with the pool's settings and as many workers as CPUs.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// A fixed number of workers.
    pub fn workers(mut self, n: usize) -> Queue {
        self.workers = Some((n, n));
        self
    }

    /// Between `min` and `max` workers, following the load: a worker is
    /// forked as soon as jobs wait and every worker is busy, and an idle
    /// worker beyond `min` exits after [`keep_alive`](Self::keep_alive).
    /// Only idle workers ever leave, so scaling down never interrupts a
    /// job. `min` may be 0: an idle queue then costs no process.
    pub fn autoscale(mut self, min: usize, max: usize) -> Queue {
        self.workers = Some((min, max));
        self
    }

    /// How long an idle worker beyond the minimum stays. Default: 10 s.
    pub fn keep_alive(mut self, idle: Duration) -> Queue {
        self.keep_alive = Some(idle);
        self
    }

    /// Replace a worker of this queue after `n` items.
    pub fn max_tasks_per_worker(mut self, n: usize) -> Queue {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Replace a worker of this queue whose resident memory is above
    /// `bytes` after a job.
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Queue {
        self.max_memory_per_worker = Some(bytes);
        self
    }

    /// Hard time limit of this queue's jobs (a job's own limit wins).
    pub fn time_limit(mut self, limit: Duration) -> Queue {
        self.time_limit = Some(limit);
        self
    }

    /// Soft time limit of this queue's jobs (a job's own limit wins).
    pub fn soft_time_limit(mut self, limit: Duration) -> Queue {
        self.soft_time_limit = Some(limit);
        self
    }

    /// Lets a waiting job rise one priority level per `every` it waits, so
    /// a flood of high-priority jobs cannot keep a low one waiting for
    /// ever: a job that has waited `every` goes before a job one level
    /// above it submitted at the same moment. Without aging (the default)
    /// priorities are strict: a job runs only once no job of a higher
    /// priority waits in its queue.
    pub fn aging(mut self, every: Duration) -> Queue {
        self.aging = Some(every);
        self
    }

    /// This queue's settings, checked, with what it leaves unset taken
    /// from `pool` (the default queue's settings). `cpus` is the worker
    /// count of a queue that sets none.
    pub(super) fn resolve(
        &self,
        name: &str,
        pool: &Queue,
        worker: &WorkerConfig,
        cpus: usize,
    ) -> Result<QueueConfig, Error> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("queue {name:?}: {m}")));
        let (min_workers, max_workers) = self.workers.unwrap_or((cpus, cpus));
        if max_workers == 0 {
            return bad("workers must be at least 1 (at most 0 were asked for)".into());
        }
        if min_workers > max_workers {
            return bad(format!(
                "min_workers ({min_workers}) is above max_workers ({max_workers})"
            ));
        }
        let time_limit = self.time_limit.or(pool.time_limit);
        let soft_time_limit = self.soft_time_limit.or(pool.soft_time_limit);
        if time_limit == Some(Duration::ZERO) || soft_time_limit == Some(Duration::ZERO) {
            return bad("time limits must be above zero".into());
        }
        if let (Some(soft), Some(hard)) = (soft_time_limit, time_limit)
            && soft > hard
        {
            return bad(format!(
                "soft_time_limit ({soft:?}) is above time_limit ({hard:?})"
            ));
        }
        let max_tasks_per_worker = self.max_tasks_per_worker.or(pool.max_tasks_per_worker);
        if max_tasks_per_worker == Some(0) {
            return bad("max_tasks_per_worker must be at least 1".into());
        }
        let max_memory_per_worker = self.max_memory_per_worker.or(pool.max_memory_per_worker);
        if max_memory_per_worker == Some(0) {
            return bad("max_memory_per_worker must be above zero".into());
        }
        let aging = self.aging.or(pool.aging);
        if aging == Some(Duration::ZERO) {
            return bad("aging must be above zero".into());
        }
        Ok(QueueConfig {
            name: name.to_string(),
            min_workers,
            max_workers,
            keep_alive: self
                .keep_alive
                .or(pool.keep_alive)
                .unwrap_or(DEFAULT_KEEP_ALIVE),
            max_tasks_per_worker,
            time_limit,
            soft_time_limit,
            aging,
            worker: WorkerConfig {
                max_memory_per_worker,
                ..worker.clone()
            },
        })
    }
}

/// A pool seen through one of its queues, from [`Pool::queue`]: the same
/// calls as the pool's, for jobs that go to this queue.
///
/// ```
/// use forkpool::{Pool, Queue};
/// # fn main() -> Result<(), forkpool::Error> {
/// fn square(x: u64) -> u64 { x * x }
/// let pool = Pool::builder().workers(1).queue("bulk", Queue::new().workers(2)).build()?;
/// let bulk = pool.queue("bulk")?;
/// assert_eq!(bulk.map(square, 0..4u64)?, [0, 1, 4, 9]);
/// assert!(pool.queue("nope").is_err()); // a clear error, never the default queue
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct QueueRef<'p> {
    pub(super) pool: &'p Pool,
    pub(super) index: usize,
}

impl QueueRef<'_> {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.pool.shared.config.queues[self.index].name
    }

    /// Like [`Pool::submit`], on this queue.
    pub fn submit<F, A, R>(&self, f: F, arg: A) -> crate::JobHandle<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let f = Func::of(f);
        self.pool.submit_job(f, arg, false, None, Some(self.index))
    }

    /// Like [`Pool::try_submit`], on this queue.
    pub fn try_submit<F, A, R>(
        &self,
        f: F,
        arg: A,
    ) -> Result<crate::JobHandle<R>, TrySubmitError<A>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool.try_submit_to(Func::of(f), arg, Some(self.index))
    }

    /// Like [`Pool::apply`], on this queue.
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R, JobError>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let f = Func::of(f);
        self.pool
            .submit_job(f, arg, true, None, Some(self.index))
            .get()
    }

    /// Like [`Pool::map`], on this queue.
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (pool, f) = (self.pool, Func::of(f));
        map::map(&pool.shared, f, items, pool.layers.progress_bar, self.index)
    }

    /// Like [`Pool::imap`], on this queue.
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> Imap<I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (pool, f) = (self.pool, Func::of(f));
        let bar = pool.layers.progress_bar;
        Imap::new(pool.shared.clone(), f, items.into_iter(), bar, self.index)
    }

    /// Like [`Pool::imap_unordered`], on this queue.
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> ImapUnordered<I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (pool, f) = (self.pool, Func::of(f));
        let bar = pool.layers.progress_bar;
        ImapUnordered::new(pool.shared.clone(), f, items.into_iter(), bar, self.index)
    }

    /// Like [`Pool::job`], with its jobs going to this queue.
    pub fn job<F, A, R>(&self, f: F) -> Job<A, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool.job(f).on_queue(self.index)
    }

    /// Sets the queue's worker bounds: `min` kept when idle, `max` at most
    /// (`min == max`: a fixed size). The autoscaler works within the new
    /// bounds from now on: workers are forked up to `min` at once, and
    /// workers above `max` leave as soon as they are idle (never in the
    /// middle of a job).
    ///
    /// ```
    /// use forkpool::{Pool, Queue};
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = Pool::builder().workers(1).queue("io", Queue::new().workers(1)).build()?;
    /// pool.queue("io")?.resize(2, 8)?;
    /// assert!(pool.queue("io")?.resize(3, 2).is_err());
    /// # Ok(()) }
    /// ```
    pub fn resize(&self, min: usize, max: usize) -> Result<(), Error> {
        if max == 0 || min > max {
            return Err(Error::InvalidConfig(format!(
                "queue {:?}: cannot resize to min {min}, max {max}",
                self.name()
            )));
        }
        self.pool.shared.resize(self.index, min, max)
    }
}
