//! A pool's settings once validated: [`PoolConfig`] for the caller's side
//! and the supervisor, a [`QueueConfig`] per named queue, and the
//! [`WorkerConfig`] inside each queue, which is all a forked child ever
//! sees.
//!
//! The public [`PoolBuilder`](crate::PoolBuilder) fills these plain structs
//! and checks them (as tokio's `Builder` fills its crate-private
//! `runtime::Config`); nothing below the facade sees the builder. The
//! worker side — the fork server and the workers — takes only
//! `WorkerConfig`: settings reach a forked child as a copy of the caller's
//! memory, so this type holds plain values (no `Arc`, no lock) and a child
//! may read it between `fork` and its loop.
//!
//! This file imports nothing from the crate: every layer may use it.

use std::time::Duration;

/// Settings the fork server and the workers of one queue use.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// Runs once in every worker before its first job.
    pub initializer: Option<fn()>,
    /// Largest encoded argument or result, in bytes.
    pub max_message_size: u64,
    /// A worker above this resident size retires after its job.
    pub max_memory_per_worker: Option<u64>,
    /// Bytes of each of a worker's two rings.
    pub ring_size: usize,
}

/// The name of the queue every pool has: jobs that name no queue, and
/// functions with no route, go there. It takes the builder's own worker
/// settings.
pub(crate) const DEFAULT_QUEUE: &str = "default";

/// One named queue: its own workers and the defaults of its jobs.
#[derive(Debug, Clone)]
pub(crate) struct QueueConfig {
    pub name: String,
    /// Workers kept when idle (autoscaling never goes below).
    pub min_workers: usize,
    /// Most workers (autoscaling never goes above). `min == max`: a fixed
    /// size.
    pub max_workers: usize,
    /// An idle worker beyond `min_workers` exits after this long.
    pub keep_alive: Duration,
    /// Replace a worker after this many items.
    pub max_tasks_per_worker: Option<usize>,
    /// Hard limit per job, unless the job sets its own.
    pub time_limit: Option<Duration>,
    /// Soft limit per job, unless the job sets its own.
    pub soft_time_limit: Option<Duration>,
    /// A waiting job gains one priority level per `aging` it waits (`None`:
    /// priorities are strict, and a flood of high-priority jobs can keep a
    /// low one waiting for as long as it lasts).
    pub aging: Option<Duration>,
    /// What reaches this queue's forked workers.
    pub worker: WorkerConfig,
}

/// Settings of one pool, validated.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// The queues; index 0 is [`DEFAULT_QUEUE`].
    pub queues: Vec<QueueConfig>,
    /// Functions routed to a queue: `(function address, queue index)`.
    pub routes: Vec<(usize, usize)>,
    /// Items per `map`/`imap` batch (`None`: automatic).
    pub chunk_size: Option<usize>,
    /// Jobs that may wait for a worker (`None`: unbounded).
    pub queue_capacity: Option<u64>,
    /// Keep a spare worker forked and ready (`None`: decide automatically,
    /// see `supervisor/standby.rs`).
    pub standby: Option<bool>,
    /// Largest encoded argument or result, in bytes (every queue's workers
    /// have the same).
    pub max_message_size: u64,
}

impl PoolConfig {
    /// The queue called `name`, if the pool has one.
    pub(crate) fn queue_index(&self, name: &str) -> Option<usize> {
        self.queues.iter().position(|q| q.name == name)
    }

    /// The queue jobs of function `func` go to when they name none.
    pub(crate) fn route(&self, func: usize) -> usize {
        self.routes
            .iter()
            .find(|&&(f, _)| f == func)
            .map_or(0, |&(_, q)| q)
    }

    /// Children the fork server keeps track of at once (its table is
    /// allocated before it is forked): the workers, a standby, and
    /// replacements forked while dead ones are being reported — with room
    /// for queues to be resized up to half of it.
    pub(crate) fn fork_server_capacity(&self) -> usize {
        let most: usize = self.queues.iter().map(|q| q.max_workers).sum();
        (2 * most + 8).max(MIN_FORK_SERVER_CAPACITY)
    }

    /// Most workers all queues may have together after a resize.
    pub(crate) fn max_total_workers(&self) -> usize {
        (self.fork_server_capacity() - 8) / 2
    }
}

/// The fork server's table has room for at least this many children.
const MIN_FORK_SERVER_CAPACITY: usize = 1024;
