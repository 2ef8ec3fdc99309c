//! The transport between the supervisor and a worker: bytes, and how they
//! cross.
//!
//! Each worker shares one `memfd` with the supervisor: a status page and
//! two single-producer/single-consumer byte rings (`shm.rs`, `ring.rs`)
//! that carry length-prefixed frames (`wire.rs`). Two pipes per worker
//! (`bell.rs`) carry nothing but wake-ups — and, by closing, the news that
//! a process died. Values become bytes in `codec.rs`.
//!
//! What this layer promises: the side that reads what a worker wrote (the
//! supervisor) can check everything — ring positions (an impossible one is
//! reported, never followed), record headers (tag and length validated
//! before a byte of body is buffered), doorbell bytes — and no decoder
//! here panics on any input. It imports only `sys/`, `config.rs` and
//! `error.rs`: nothing here knows what a job, a pool or a worker is.
//!
//! | file | owns |
//! | --- | --- |
//! | `wire.rs` | frames, tags, the batch header, the size cap, the untrusted-record decoder |
//! | `shm.rs` | the shared memory: `memfd`, mirrored mappings, the pool's shared page |
//! | `status.rs` | the status page: which item runs, cancel slots, ring positions, progress |
//! | `ring.rs` | the SPSC byte ring and its sleep/wake handshakes |
//! | `seats.rs` | the pool's spin seats: how many workers may spin at once |
//! | `bell.rs` | doorbell pipes |
//! | `codec.rs` | serde encoding, one [`Codec`](codec::Codec) per pool (bincode 1.3 by default; postcard, JSON, MessagePack behind features), decoding into faulted-in buffers |

pub(crate) mod bell;
pub(crate) mod codec;
pub(crate) mod ring;
pub(crate) mod seats;
pub(crate) mod shm;
pub(crate) mod status;
pub(crate) mod wire;
