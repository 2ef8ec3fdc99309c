//! One connection to Redis that survives Redis: reconnects with back-off
//! when the connection is lost (Redis restarted, the network dropped, a
//! read timed out), reloads the scripts on a new connection and after
//! `NOSCRIPT`, and gives up only when its owner says so.
//!
//! Every thread of a client or a worker host owns one `Conn` (the `redis`
//! crate's sync connection is not shared). A command that fails because
//! the connection did is sent again on the next one: every write the
//! broker makes is either idempotent or guarded by an ownership check (a
//! second `FINISH` of a job finds it no longer pending and changes
//! nothing), except a submission, which may then be queued twice — the
//! at-least-once the broker promises.

use super::BrokerError;
use super::scripts::Scripts;
use redis::{ErrorKind, RedisError, RedisResult, RetryMethod, ServerErrorKind};
use std::time::{Duration, Instant};

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A connection that reconnects.
pub(crate) struct Conn {
    client: redis::Client,
    con: Option<redis::Connection>,
    /// Connect, read and write timeout.
    timeout: Duration,
    backoff: Duration,
    /// Bumped at every new connection: what a caller set up per connection
    /// (consumer groups it created, say) it checks again when this moves.
    generation: u64,
    /// Failures in a row, for messages.
    failures: u32,
    /// Who owns it, for messages.
    who: String,
}

/// What to do about a failed command.
enum Failure {
    /// The connection is gone or unusable: wait, reconnect, send again.
    Reconnect,
    /// The scripts are not loaded: load them, send again.
    NoScript,
    /// The command itself failed (a key of the wrong type, a missing
    /// group...): the caller decides.
    Command,
}

fn classify(e: &RedisError) -> Failure {
    if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) {
        return Failure::NoScript;
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return Failure::Reconnect;
    }
    match e.retry_method() {
        RetryMethod::Reconnect
        | RetryMethod::WaitAndRetry
        | RetryMethod::RetryImmediately
        | RetryMethod::ReconnectFromInitialConnections => Failure::Reconnect,
        _ => Failure::Command,
    }
}

impl Conn {
    /// A connection (made on first use) for `who`.
    pub(crate) fn new(client: redis::Client, timeout: Duration, who: impl Into<String>) -> Conn {
        Conn {
            client,
            con: None,
            timeout,
            backoff: MIN_BACKOFF,
            generation: 0,
            failures: 0,
            who: who.into(),
        }
    }

    /// Connects now, once, without retrying: a start-up check that the URL,
    /// the credentials and the server work.
    pub(crate) fn connect_now(&mut self) -> Result<(), BrokerError> {
        self.open().map_err(|e| BrokerError::Redis(e.to_string()))
    }

    /// The number of the current connection (see `generation`).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    fn open(&mut self) -> RedisResult<()> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        let mut con = con;
        load_scripts(&mut con)?;
        self.con = Some(con);
        self.generation += 1;
        if self.failures > 0 {
            log::info!(
                "forkpool {}: reconnected to Redis after {} failed attempts",
                self.who,
                self.failures
            );
        }
        self.failures = 0;
        self.backoff = MIN_BACKOFF;
        Ok(())
    }

    /// Runs `f` on a live connection, reconnecting as often as it takes
    /// while `go_on()` says so; returns what `f` returned, or the error of
    /// a command that failed by itself (not by its connection).
    /// `BrokerError::Stopped` when `go_on()` turned false first.
    pub(crate) fn run<T>(
        &mut self,
        go_on: &dyn Fn() -> bool,
        mut f: impl FnMut(&mut redis::Connection) -> RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let mut reloaded = false;
        loop {
            if self.con.is_none()
                && let Err(e) = self.open()
            {
                self.failed(&e);
                if !self.wait(go_on) {
                    return Err(BrokerError::Stopped);
                }
                continue;
            }
            let Some(con) = self.con.as_mut() else {
                continue;
            };
            match f(con) {
                Ok(v) => return Ok(v),
                Err(e) => match classify(&e) {
                    Failure::NoScript if !reloaded => {
                        reloaded = true;
                        if load_scripts(con).is_err() {
                            self.con = None;
                        }
                    }
                    Failure::Reconnect | Failure::NoScript => {
                        self.con = None;
                        self.failed(&e);
                        if !self.wait(go_on) {
                            return Err(BrokerError::Stopped);
                        }
                    }
                    Failure::Command => return Err(BrokerError::Redis(e.to_string())),
                },
            }
        }
    }

    /// [`run`](Self::run) that tries once more at most after a lost
    /// connection, for callers that report errors rather than wait.
    pub(crate) fn run_once<T>(
        &mut self,
        f: impl FnMut(&mut redis::Connection) -> RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let tries = std::cell::Cell::new(0u32);
        let deadline = Instant::now() + self.timeout;
        let go_on = || {
            tries.set(tries.get() + 1);
            tries.get() <= 2 && Instant::now() < deadline
        };
        self.run(&go_on, f)
    }

    /// Every key matching `pattern`, sorted, each once: `SCAN` walked
    /// until its cursor is back at 0 (a bounded walk), each call tried as
    /// [`run_once`](Self::run_once) does.
    pub(crate) fn scan(&mut self, pattern: &str) -> Result<Vec<String>, BrokerError> {
        let mut found = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..100_000 {
            let (next, batch): (u64, Vec<String>) = self.run_once(|con| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)
            })?;
            found.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // SCAN may return a key more than once.
        found.sort();
        found.dedup();
        Ok(found)
    }

    fn failed(&mut self, e: &RedisError) {
        if interrupted(e) {
            // A signal (SIGTERM to a host, say) cut a blocking read short:
            // reconnect, but it is no news.
            return;
        }
        self.failures += 1;
        // One line when Redis goes away, then one per 20 failed attempts.
        if self.failures == 1 || self.failures.is_multiple_of(20) {
            log::warn!(
                "forkpool {}: Redis connection lost ({e}); reconnecting",
                self.who
            );
        }
    }

    /// Waits the back-off (with jitter), checking `go_on` every 50 ms;
    /// false if it turned false.
    fn wait(&mut self, go_on: &dyn Fn() -> bool) -> bool {
        let jitter = 0.5 + (super::random_u64() % 1000) as f64 / 1000.0;
        let end = Instant::now() + self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        loop {
            if !go_on() {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }
}

/// Whether `e` is a system call interrupted by a signal (a socket with a
/// timeout is not restarted after a handler, `SA_RESTART` or not).
fn interrupted(e: &RedisError) -> bool {
    use std::error::Error as _;
    let io = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted);
    io || e.to_string().contains("os error 4)")
}

fn load_scripts(con: &mut redis::Connection) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for s in Scripts::get().all() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(s.source).ignore();
    }
    pipe.exec(con)
}
