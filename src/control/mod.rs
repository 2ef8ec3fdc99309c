//! Seeing and steering a running pool, as Celery's `inspect` and
//! `control` do: a consistent snapshot of its jobs and workers
//! ([`inspection`]), revoking a job by id ([`revoke`]), events, and
//! (feature `prometheus`) the snapshot as Prometheus metrics
//! (`prometheus.rs`) with a tiny HTTP endpoint for them (`http.rs`).
//!
//! This layer holds what a user reads and what the supervisor answers
//! with; the supervisor builds the answers (`supervisor/inspect.rs`,
//! `supervisor/revoke.rs`) and the pool hands them out. It sits above the
//! submission model (it names job ids and progress) and below the
//! supervisor.

pub(crate) mod events;
#[cfg(feature = "prometheus")]
pub(crate) mod http;
pub(crate) mod inspection;
#[cfg(feature = "prometheus")]
pub(crate) mod prometheus;
pub(crate) mod revoke;
pub(crate) mod schedules;
