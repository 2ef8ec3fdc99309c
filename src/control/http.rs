//! A tiny HTTP endpoint for Prometheus (cargo feature `prometheus`):
//! [`MetricsServer`], one thread that answers `GET /metrics`.
//!
//! Promises:
//! - **Nothing outlives it.** Dropping the server (or
//!   [`MetricsServer::stop`]) wakes its thread through a socket pair,
//!   closes the listener and the connection in hand, and joins the
//!   thread before it returns — at once, whatever a client is doing.
//! - **It never blocks the pool.** A scrape asks the supervisor for a
//!   snapshot, as [`Pool::inspect`](crate::Pool::inspect) does, and
//!   renders it on the server's thread.
//! - **A client cannot hold it long or make it grow.** One connection at
//!   a time; a request must arrive whole within [`REQUEST_TIME`] and fit
//!   in [`MAX_REQUEST`] bytes, and the answer must be taken within
//!   [`RESPONSE_TIME`]; otherwise the connection is dropped. Every
//!   answer closes its connection.
//! - **Bad requests get a status, never a panic:** `400` (malformed),
//!   `404` (another path), `405` (another method), `431` (too large),
//!   `503` (the pool is gone).
//!
//! Plain HTTP on one thread is enough for a scraper every few seconds;
//! put a proxy in front for TLS or authentication, or serve
//! [`Pool::metrics_text`](crate::Pool::metrics_text) from your own web
//! framework.

use super::prometheus::{MetricsFormat, Source, render};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest request head read (request line and headers).
pub(crate) const MAX_REQUEST: usize = 8 * 1024;

/// How long a client has to send its whole request.
pub(crate) const REQUEST_TIME: Duration = Duration::from_secs(5);

/// How long a client has to take the whole answer.
pub(crate) const RESPONSE_TIME: Duration = Duration::from_secs(10);

/// After refusing a request: how long, and how much, of what the client
/// still sends is read away before the connection is closed.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 1 << 20;

/// An HTTP endpoint serving a pool's metrics at `/metrics`, from
/// [`Pool::serve_metrics`](crate::Pool::serve_metrics). It runs until it
/// is dropped (or [`stop`](MetricsServer::stop)ped); it does not keep the
/// pool alive (once the pool is gone it answers `503`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::{Read, Write};
/// let pool = forkpool::Pool::new(1)?;
/// let server = pool.serve_metrics("127.0.0.1:0")?; // port 0: any free port
///
/// let mut conn = std::net::TcpStream::connect(server.local_addr())?;
/// conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
/// let mut answer = String::new();
/// conn.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 200 OK"));
/// assert!(answer.contains("forkpool_jobs_submitted_total 0"));
/// drop(server); // stops and joins its thread
/// # Ok(()) }
/// ```
pub struct MetricsServer {
    addr: SocketAddr,
    /// Dropping this end wakes the thread, which then exits.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr` and starts the thread.
    pub(crate) fn start(addr: impl ToSocketAddrs, source: Source) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, woken) = UnixStream::pair()?;
        let thread = std::thread::Builder::new()
            .name("forkpool-metrics".into())
            .spawn(move || serve(listener, woken, source))?;
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the system chose, when
    /// it was asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it: the same as dropping it, said out loud.
    pub fn stop(self) {}
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The thread catches nothing: a panic there is a bug, and it
            // has already been reported by the panic hook.
            let _ = t.join();
        }
    }
}

/// The server's loop: wait for a connection or the stop, answer, repeat.
fn serve(listener: TcpListener, woken: UnixStream, source: Source) {
    loop {
        match wait(&listener, PollFlags::POLLIN, &woken, None) {
            Wait::Ready => {}
            Wait::Stop | Wait::Late => return,
        }
        match listener.accept() {
            Ok((conn, _)) => {
                if answer(conn, &woken, &source) == Wait::Stop {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            // Out of descriptors, say: drop nothing, wait a little, go on.
            Err(e) => {
                log::warn!("forkpool metrics server: accept failed: {e}");
                if wait(
                    &woken,
                    PollFlags::POLLIN,
                    &woken,
                    Some(Duration::from_millis(100)),
                ) != Wait::Late
                {
                    return;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The descriptor is ready.
    Ready,
    /// The server is stopping.
    Stop,
    /// The deadline passed.
    Late,
}

/// Waits until `fd` is ready for `events`, the server is stopped, or
/// `within` passes (`None`: no deadline).
fn wait(fd: &impl AsFd, events: PollFlags, woken: &UnixStream, within: Option<Duration>) -> Wait {
    let end = within.map(|d| Instant::now() + d);
    loop {
        let timeout = match end {
            None => PollTimeout::NONE,
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Wait::Late;
                }
                // Rounded up, so a wait never ends a hair early and spins.
                PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd.as_fd(), events),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {
                if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                    return Wait::Stop;
                }
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    return Wait::Ready;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Wait::Stop,
        }
    }
}

/// One connection: read a request, answer it, close.
fn answer(mut conn: TcpStream, woken: &UnixStream, source: &Source) -> Wait {
    if conn.set_nonblocking(true).is_err() {
        return Wait::Ready;
    }
    let response = match read_head(&mut conn, woken) {
        Ok(head) => respond(&head, source),
        Err(Head::TooLarge) => Response::error(431, "request too large\n"),
        Err(Head::Malformed) => Response::error(400, "bad request\n"),
        Err(Head::Gone(w)) => return w,
    };
    // A refused request may have left bytes unread; closing on them would
    // reset the connection and lose the answer, so they are read away
    // after it (for a moment, bounded).
    let drain = response.status != 200;
    let bytes = response.bytes();
    let end = Instant::now() + RESPONSE_TIME;
    let mut sent = 0;
    while sent < bytes.len() {
        match conn.write(&bytes[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = end.saturating_duration_since(Instant::now());
                match wait(&conn, PollFlags::POLLOUT, woken, Some(left)) {
                    Wait::Ready => {}
                    Wait::Late => break,
                    Wait::Stop => return Wait::Stop,
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    if drain && sent == bytes.len() {
        return discard(&mut conn, woken);
    }
    Wait::Ready
}

/// Reads and drops what the client still sends, until it closes, for at
/// most [`DRAIN_TIME`] and [`DRAIN_BYTES`].
fn discard(conn: &mut TcpStream, woken: &UnixStream) -> Wait {
    let end = Instant::now() + DRAIN_TIME;
    let mut chunk = [0u8; 4096];
    let mut read = 0;
    while read < DRAIN_BYTES {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = end.saturating_duration_since(Instant::now());
                match wait(conn, PollFlags::POLLIN, woken, Some(left)) {
                    Wait::Ready => {}
                    Wait::Late => break,
                    Wait::Stop => return Wait::Stop,
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Wait::Ready
}

/// Why no request head was read.
enum Head {
    TooLarge,
    Malformed,
    /// The client went away or was too slow (`Late`), or the server is
    /// stopping (`Stop`).
    Gone(Wait),
}

/// Reads up to the end of the request's headers.
fn read_head(conn: &mut TcpStream, woken: &UnixStream) -> Result<String, Head> {
    let end = Instant::now() + REQUEST_TIME;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            buf.truncate(at);
            return String::from_utf8(buf).map_err(|_| Head::Malformed);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(Head::TooLarge);
        }
        let room = (MAX_REQUEST - buf.len()).min(chunk.len());
        match conn.read(&mut chunk[..room]) {
            Ok(0) => {
                return Err(if buf.is_empty() {
                    Head::Gone(Wait::Late)
                } else {
                    Head::Malformed
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = end.saturating_duration_since(Instant::now());
                match wait(conn, PollFlags::POLLIN, woken, Some(left)) {
                    Wait::Ready => {}
                    w => return Err(Head::Gone(w)),
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(Head::Gone(Wait::Late)),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An answer, ready to write.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// `HEAD`: the headers only.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn error(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            head_only: false,
            allow: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request whose head is `head` (without its final blank
/// line).
fn respond(head: &str, source: &Source) -> Response {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::error(400, "bad request line\n");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Response::error(400, "bad request line\n");
    }
    let mut accept = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Response::error(400, "bad header\n");
        };
        if name.eq_ignore_ascii_case("accept") {
            accept = Some(value.trim());
        }
    }
    let head_only = method == "HEAD";
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut response = if path != "/metrics" {
        Response::error(404, "not found: the metrics are at /metrics\n")
    } else if method != "GET" && !head_only {
        let mut r = Response::error(405, "only GET and HEAD\n");
        r.allow = true;
        r
    } else {
        let format = MetricsFormat::from_accept(accept);
        match source() {
            Some(snapshot) => Response {
                status: 200,
                content_type: format.content_type(),
                body: render(snapshot, format),
                head_only: false,
                allow: false,
            },
            None => Response::error(503, "the pool is gone\n"),
        }
    };
    response.head_only = head_only;
    response
}
