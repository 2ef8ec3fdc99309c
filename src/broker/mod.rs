//! Several hosts through Redis (cargo feature `redis`): a [`Client`] that
//! submits jobs to Redis from any process, and worker [`Host`]s that take
//! them and run them with their own local pool — fork server, workers,
//! time limits, crash isolation and all.
//!
//! ```no_run
//! use forkpool::broker::Broker;
//!
//! fn resize(px: u32) -> u32 { px / 2 }
//! forkpool::register!(resize);              // the name jobs of it travel under
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let broker = Broker::new("redis://127.0.0.1:6379/")?;
//!     if std::env::args().any(|a| a == "worker") {
//!         // A worker host: runs jobs until SIGTERM or Ctrl-C.
//!         broker.host().workers(4).queues(["default"]).build()?.run()?;
//!     } else {
//!         let client = broker.client()?;
//!         let handle = client.submit(resize, 1024);     // a JobHandle<u32>
//!         assert_eq!(handle.get(), Ok(512));
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # What it promises
//!
//! - **At-least-once.** A job submitted (and written to Redis: see
//!   [`Client::flush`]) runs to completion at least once, or ends in the
//!   dead-letter stream with its reason. A host that dies mid-job loses
//!   it only for the visibility timeout: its lease lapses and another host
//!   takes the job over. A job may therefore run more than once — after a
//!   host died or stalled past its lease, or a submission was resent after
//!   a lost connection — so jobs sent through a broker should be
//!   idempotent. (A local pool runs a job at most once.)
//! - **One result.** However often a job ran, one result is stored: a
//!   host settles a job only while it still holds it, checked atomically
//!   in Redis; a late host's result is dropped.
//! - **No loop.** A job delivered `max_deliveries` times without finishing
//!   (its hosts keep dying) is dead-lettered, not delivered again; so is
//!   anything in a stream that is not a job this host can run — an unknown
//!   name, a type fingerprint or codec it does not have, a malformed or
//!   oversized entry — each with its reason, and the host goes on.
//! - **Every handle resolves once**: with the result, the job's error, a
//!   dead letter ([`JobError::DeadLettered`](crate::JobError::DeadLettered)), or
//!   [`JobError::Broker`](crate::JobError::Broker) if the client goes away
//!   first.
//!
//! DESIGN.md ("Several hosts") has the delivery guarantee in full and the
//! key layout; RELIABILITY.md the faults it is tested against.
//!
//! # Files
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | [`Broker`] (the settings), [`BrokerError`], [`register!`](crate::register) |
//! | `names.rs` | the registry: names collected at link time, start-up checks |
//! | `shapes.rs` | type fingerprints and codec round trips (serde-reflection) |
//! | `keys.rs` | every Redis key |
//! | `message.rs` | a job's stream entry, read without trusting it |
//! | `reply.rs` | Redis replies (streams, entries) read without trusting their shape |
//! | `results.rs` | a stored result: a worker's record or a `JobError` |
//! | `scripts.rs` | the Lua scripts: every step that must be atomic |
//! | `conn.rs` | a connection that reconnects with back-off |
//! | `client.rs`, `job.rs` | the submitting side: [`Client`], [`RemoteJob`] |
//! | `writer.rs`, `listener.rs` | the client's threads: pipelined submissions, results for handles |
//! | `host.rs` | the worker host: [`HostBuilder`], [`Host`], its loop |
//! | `lease.rs` | the jobs a host holds, and their renewal |
//! | `settle.rs` | the host's thread that acknowledges finished jobs, in batches |
//! | `dead.rs` | dead letters: reasons, and reading them back |
//! | `signals.rs` | SIGTERM and SIGINT for a host |
//! | `callbacks.rs` | `on_success` / `on_error` of a [`RemoteJob`], run in the submitting process |
//! | `remote.rs` | what a broker job's handle asks of its client: cancel, progress |
//! | `progress.rs` | progress across hosts: a host's sampling, [`Client::progress`] |
//! | `inspect.rs` | [`Client::inspect`]: the snapshots live hosts publish, and the broker's view |
//! | `revoke.rs` | [`Client::revoke`], [`Revocation`]: revokes recorded in Redis, and how hosts learn them |
//! | `beat/` | periodic jobs across hosts: [`Client::schedule`], one run per slot among all clients |
//! | `workflow.rs` | workflows through the broker: [`RemoteJob::sig`], [`Client::group`], their coordinator |

mod beat;
mod callbacks;
mod client;
mod conn;
mod dead;
mod host;
mod inspect;
mod job;
mod keys;
mod lease;
mod listener;
mod message;
pub(crate) mod names;
mod progress;
mod remote;
mod reply;
mod results;
mod revoke;
mod scripts;
mod settle;
mod shapes;
mod signals;
mod workflow;
mod writer;

pub use client::Client;
pub use dead::DeadLetter;
pub use host::{Host, HostBuilder, HostReport, Stopper};
pub use inspect::{BrokerInspection, HostCounts, HostJob, HostSnapshot, HostWorker, StreamView};
pub use job::RemoteJob;
pub use names::{Problem, RegisteredJob, RegistryError, check, registered};
pub use revoke::Revocation;

use crate::error::Error;
use crate::transport::codec::Codec;
use std::fmt;
use std::time::Duration;

/// Registers a job function under a stable name, so that jobs of it can
/// travel through a [`Broker`] to other hosts (local pools need no
/// registration).
///
/// ```standalone_crate
/// use forkpool::register;
///
/// fn resize(px: u32) -> u32 { px / 2 }
/// fn parse(text: String) -> Result<u32, String> { text.parse().map_err(|_| text) }
///
/// register!(resize);                            // named after its path: "my_crate::resize"
/// register!(resize as "images.resize.v2");      // or any name (one name per function)
/// register!(fallible parse as "text.parse");    // its Err is a failure: retried, counted
/// # forkpool::broker::check(forkpool::Codec::Bincode).unwrap_err();
/// ```
///
/// The function must be a fn item (or a closure that captures nothing);
/// its argument and result types must be `Serialize + DeserializeOwned`.
/// A name registered twice, or a function registered under two names, is
/// reported by [`check`] — which a client and a worker host run when they
/// start, and refuse to start on. A name is what a message carries and
/// what a host looks up: keep it stable across releases, and change it
/// (`"….v2"`) when the argument or result changes shape — a host with the
/// other shape refuses the job anyway (its type fingerprint differs).
#[macro_export]
macro_rules! register {
    (fallible $f:path as $name:expr) => {
        $crate::__private::inventory::submit! {
            $crate::__private::Registration::fallible($name, $f, file!(), line!())
        }
    };
    (fallible $f:path) => {
        $crate::__private::inventory::submit! {
            $crate::__private::Registration::fallible(
                concat!(module_path!(), "::", stringify!($f)), $f, file!(), line!()
            )
        }
    };
    ($f:path as $name:expr) => {
        $crate::__private::inventory::submit! {
            $crate::__private::Registration::plain($name, $f, file!(), line!())
        }
    };
    ($f:path) => {
        $crate::__private::inventory::submit! {
            $crate::__private::Registration::plain(
                concat!(module_path!(), "::", stringify!($f)), $f, file!(), line!()
            )
        }
    };
}

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A setting cannot work (a bad URL, a queue name, a zero timeout...).
    #[error("invalid broker setting: {0}")]
    Config(String),
    /// Redis refused a command, or could not be reached at start-up.
    #[error("redis: {0}")]
    Redis(String),
    /// The registered jobs do not pass the start-up checks.
    #[error(transparent)]
    Registry(#[from] names::RegistryError),
    /// A worker host's local pool could not be built.
    #[error(transparent)]
    Pool(#[from] Error),
    /// The client or host was told to stop while it waited for Redis.
    #[error("stopped while waiting for Redis")]
    Stopped,
}

/// Where the broker is and how it behaves: the settings a [`Client`] and
/// every worker [`Host`] of one application share.
///
/// ```
/// use forkpool::broker::Broker;
/// use std::time::Duration;
/// # fn main() -> Result<(), forkpool::broker::BrokerError> {
/// let broker = Broker::new("redis://:secret@127.0.0.1:6379/0")?
///     .prefix("thumbnails")                       // keys {thumbnails}:…
///     .visibility_timeout(Duration::from_secs(60))
///     .max_deliveries(3)
///     .result_expires(Duration::from_secs(3600));
/// assert!(!format!("{broker:?}").contains("secret"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Broker {
    url: String,
    client: redis::Client,
    prefix: String,
    codec: Codec,
    visibility_timeout: Duration,
    max_deliveries: u32,
    result_expires: Duration,
    max_message_size: u64,
    timeout: Duration,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("codec", &self.codec)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("max_deliveries", &self.max_deliveries)
            .field("result_expires", &self.result_expires)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

/// A URL with its password replaced by `***`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Broker {
    /// A broker at `url`: `redis://[user[:password]@]host[:port][/db]`
    /// (an ACL user and password, or a password alone), `rediss://…` for
    /// TLS (cargo feature `redis-tls`), or `redis+unix:///path`. Nothing
    /// is connected yet.
    pub fn new(url: &str) -> Result<Broker, BrokerError> {
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", redacted(url))))?;
        Ok(Broker {
            url: url.to_string(),
            client,
            prefix: "forkpool".into(),
            codec: Codec::default(),
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            result_expires: Duration::from_secs(24 * 3600),
            max_message_size: 64 << 20,
            timeout: Duration::from_secs(5),
        })
    }

    /// The prefix of every key (default `forkpool`): applications that
    /// share a Redis keep apart with different prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How a client encodes arguments (and decodes results). Default
    /// [`Codec::Bincode`]. A worker host reads each job in the codec the
    /// job names, if it has it.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long a host may hold a job without renewing its lease before
    /// other hosts may take it over (default 30 s). A host renews every
    /// third of it while the job runs, so only a host that died or stalled
    /// loses its jobs. Hosts of one application must agree on it.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// How many times a job is handed to a host before it is
    /// dead-lettered instead (default 5): a job whose hosts keep dying
    /// under it stops there.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// How long results are kept in Redis (default one day). Jobs submitted
    /// by a client carry it.
    pub fn result_expires(mut self, keep: Duration) -> Self {
        self.result_expires = keep;
        self
    }

    /// The largest job entry (all its fields) and the largest result, in
    /// bytes (default 64 MiB). A bigger argument fails its job at
    /// submission with `TooLarge`, a bigger result fails its job alone, and
    /// a bigger entry found in a stream is dead-lettered.
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Connect, read and write timeout of every connection (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A client that submits jobs and reads their results; checks the
    /// settings and the registered jobs, and connects.
    pub fn client(&self) -> Result<Client, BrokerError> {
        Client::connect(self.validated()?)
    }

    /// A worker host, to configure and [`build`](HostBuilder::build).
    pub fn host(&self) -> HostBuilder {
        HostBuilder::new(self.clone())
    }

    fn validated(&self) -> Result<Broker, BrokerError> {
        let bad = |m: String| Err(BrokerError::Config(m));
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return bad(format!("prefix {:?}: not empty, no braces", self.prefix));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(7 * 24 * 3600))
            .contains(&self.visibility_timeout)
        {
            return bad("visibility_timeout must be between 100 ms and 7 days".into());
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1".into());
        }
        if self.result_expires < Duration::from_millis(1) {
            return bad("result_expires must be at least 1 ms".into());
        }
        if !(1024..=(512 << 20)).contains(&self.max_message_size) {
            return bad("max_message_size must be between 1 KiB and 512 MiB".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return bad("timeout must be above zero and at most an hour".into());
        }
        Ok(self.clone())
    }
}

/// A random number: spread, not secret (consumer and client names, the
/// jitter of back-offs). Hashes the clock and a counter with the standard
/// library's randomly keyed hasher.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// `d` from now, or far in the future if that does not fit an `Instant`.
pub(crate) fn after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Milliseconds since the Unix epoch, by this host's clock.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// This machine's host name.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug() {
        assert_eq!(
            redacted("redis://app:s3cret@host:6379/0"),
            "redis://app:***@host:6379/0"
        );
        assert_eq!(redacted("redis://:pw@h/"), "redis://:***@h/");
        assert_eq!(redacted("redis://h:1/"), "redis://h:1/");
    }

    #[test]
    fn settings_are_checked() {
        let b = Broker::new("redis://127.0.0.1:1/").unwrap();
        assert!(b.validated().is_ok());
        assert!(b.clone().prefix("a{b").validated().is_err());
        assert!(b.clone().max_deliveries(0).validated().is_err());
        assert!(
            b.clone()
                .visibility_timeout(Duration::from_millis(10))
                .validated()
                .is_err()
        );
        assert!(b.clone().max_message_size(10).validated().is_err());
        assert!(Broker::new("http://x/").is_err());
        assert_ne!(random_u64(), random_u64());
    }
}
