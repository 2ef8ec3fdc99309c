//! A pool's settings once validated: [`PoolConfig`] for the caller's side
//! and the supervisor, and the [`WorkerConfig`] inside it, which is all a
//! forked child ever sees.
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

/// Settings the fork server and every worker use.
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

/// Settings of one pool, validated.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// Workers the pool keeps running.
    pub workers: usize,
    /// Hard limit per job, unless the job sets its own.
    pub time_limit: Option<Duration>,
    /// Soft limit per job, unless the job sets its own.
    pub soft_time_limit: Option<Duration>,
    /// Replace a worker after this many items.
    pub max_tasks_per_worker: Option<usize>,
    /// Items per `map`/`imap` batch (`None`: automatic).
    pub chunk_size: Option<usize>,
    /// Jobs that may wait for a worker (`None`: unbounded).
    pub queue_capacity: Option<u64>,
    /// Keep a spare worker forked and ready (`None`: decide automatically,
    /// see `supervisor/standby.rs`).
    pub standby: Option<bool>,
    /// What reaches the forked children.
    pub worker: WorkerConfig,
}
