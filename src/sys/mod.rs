//! Plain system helpers: no idea of jobs, pools or workers.
//!
//! Each file wraps one thing the operating system or the machine does and
//! says what it costs: the coarse monotonic clock both sides of a worker
//! read (`clock.rs`), spinning before sleeping only while it pays
//! (`spin.rs`), huge pages for big result buffers (`hugepage.rs`), and
//! stocks of memory faulted in ahead of need (`prefault.rs`). Nothing here
//! imports anything else from the crate, so every layer may use it.
//!
//! | file | owns |
//! | --- | --- |
//! | `clock.rs` | the monotonic clocks (coarse and precise), a step's readings, deadlines |
//! | `spin.rs` | adaptive spin budgets, which CPU a peer last ran on |
//! | `hugepage.rs` | `madvise(MADV_HUGEPAGE)` on big buffers |
//! | `prefault.rs` | faulted-in buffers by size class, and the thread that fills them |
//! | `proc.rs` | what `/proc` says about a process (resident memory) |

pub(crate) mod clock;
pub(crate) mod hugepage;
pub(crate) mod prefault;
pub(crate) mod proc;
pub(crate) mod spin;
