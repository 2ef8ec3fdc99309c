//! The caller's side of a pool, below the public facade: the state every
//! `Pool` handle shares, job handles, and `map`/`imap`.
//!
//! Code here runs on the caller's threads. It encodes arguments, hands
//! batches to the supervisor (through its command queue, or by stepping it
//! directly while it waits: see `supervisor/drive.rs`), and decodes results
//! — so encoding and decoding never run on the supervisor's thread. It
//! knows nothing of job options (`options/`) or of the facade (`pool/`),
//! which build on it.
//!
//! What it promises: every handle it gives out resolves exactly once
//! (a `Batch` that is dropped resolves what it still holds as
//! `Cancelled`), and a `map` or `imap` keeps at most a bounded window of
//! its input in flight, so any input length runs in bounded memory.
//!
//! | file | owns |
//! | --- | --- |
//! | `shared.rs` | `Shared`: what every handle of one pool holds — the command queue, the driver, counters, the bounded queue, ids, shutdown |
//! | `handle.rs` | [`JobHandle`](crate::JobHandle): `get`, `wait_timeout`, `cancel`, `progress`, `.await` |
//! | `batcher.rs` | items into batches, the byte window, answers back per delivery: what `map` and the `imap`s share |
//! | `map.rs` | `map` |
//! | `imap.rs` | [`Imap`](crate::Imap), [`ImapUnordered`](crate::ImapUnordered) |
//! | `progress_bar.rs` | the bar `map` and `imap` draw (feature `progress-bar`) |

pub(crate) mod batcher;
pub(crate) mod handle;
pub(crate) mod imap;
pub(crate) mod map;
pub(crate) mod progress_bar;
pub(crate) mod shared;
