//! Seeing and steering a running pool, as Celery's `inspect` and
//! `control` do: a consistent snapshot of its jobs and workers
//! ([`inspection`]), revoking a job by id ([`revoke`]).
//!
//! This layer holds what a user reads and what the supervisor answers
//! with; the supervisor builds the answers (`supervisor/inspect.rs`,
//! `supervisor/revoke.rs`) and the pool hands them out. It sits above the
//! submission model (it names job ids and progress) and below the
//! supervisor.

pub(crate) mod events;
pub(crate) mod inspection;
pub(crate) mod revoke;
