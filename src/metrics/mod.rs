//! What a pool counts about itself: the live [`Counters`](stats::Counters)
//! the supervisor and the callers update, and the [`Stats`](crate::Stats)
//! snapshot a user reads.
//!
//! The promise kept here is arithmetic: every job is counted once when it
//! is submitted and exactly once when it resolves (see `stats.rs`), so the
//! numbers add up at any moment. Introspection and Prometheus metrics will
//! join this folder (see DESIGN.md, "Where the next features go").

pub(crate) mod durations;
pub(crate) mod fate;
pub(crate) mod json;
pub(crate) mod stats;
pub(crate) mod tally;
