//! A real `redis-server` for a test, and worker hosts as separate
//! processes.
//!
//! [`Redis::start`] runs the `redis-server` found on `$PATH` on a free
//! loopback port, in a fresh temporary directory, with append-only
//! persistence (so a restart keeps the data, as production should); its
//! `Drop` kills it and removes the directory. [`HostProc::spawn`] runs a
//! worker host in a child process: the test binary itself, re-executed to
//! run only the `host_main` test, which turns into a host when
//! `FORKPOOL_TEST_HOST` is set. Every child gets `PR_SET_PDEATHSIG`, so
//! none outlives a test process killed before its guards ran.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child with SIGKILL when the thread that spawned it ends.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, and the closure allocates nothing
    // and touches no lock between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "forkpool-{what}-{}-{}",
        std::process::id(),
        forkpool_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn forkpool_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A `redis-server` of a test's own.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
}

impl Redis {
    /// Starts one (append-only on, `appendfsync always`).
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Starts one with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Redis {
        ensure_installed("redis-server", "redis-server");
        let dir = temp_dir("redis");
        let mut r = Redis {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..20 {
            r.port = free_port();
            if r.launch() {
                return r;
            }
        }
        panic!("redis-server did not start (see {})", r.dir.display());
    }

    fn launch(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run redis-server ({e}): install it (Debian: apt-get install \
                 redis-server); .ci/run does"
            ),
        };
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // the port was taken meanwhile
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// A plain connection, for checks.
    pub fn cli(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// Stops the server (it writes its data) and starts it again on the
    /// same port, after `down` without one.
    pub fn restart(&mut self, down: Duration) {
        let _ = redis::cmd("SHUTDOWN").exec(&mut self.cli());
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        std::thread::sleep(down);
        assert!(
            self.launch(),
            "redis-server did not come back on {}",
            self.port
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a host child is set up.
#[derive(Clone, Debug)]
pub struct HostOpts {
    pub url: String,
    pub name: String,
    pub workers: usize,
    pub vt: Duration,
    pub max_deliveries: u32,
    pub queues: Vec<String>,
    pub grace: Duration,
    /// The broker's `max_message_size` (default: the broker's default).
    pub max_message: Option<u64>,
}

impl HostOpts {
    pub fn new(url: &str) -> HostOpts {
        HostOpts {
            url: url.into(),
            name: "testhost".into(),
            workers: 2,
            vt: Duration::from_secs(2),
            max_deliveries: 5,
            queues: vec!["default".into()],
            grace: Duration::from_secs(10),
            max_message: None,
        }
    }
}

/// A worker host in a child process; SIGKILLed on drop.
pub struct HostProc {
    pub child: Child,
    pub log: PathBuf,
}

impl HostProc {
    pub fn spawn(o: &HostOpts) -> HostProc {
        let log_dir = temp_dir("host");
        let log = log_dir.join("host.log");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "host_main", "--nocapture", "--test-threads=1"])
            .env("FORKPOOL_TEST_HOST", "1")
            .env("FP_URL", &o.url)
            .env("FP_NAME", &o.name)
            .env("FP_WORKERS", o.workers.to_string())
            .env("FP_VT_MS", o.vt.as_millis().to_string())
            .env("FP_MAX_DELIVERIES", o.max_deliveries.to_string())
            .env("FP_QUEUES", o.queues.join(","))
            .env("FP_GRACE_MS", o.grace.as_millis().to_string())
            .env(
                "FP_MAX_MESSAGE",
                o.max_message.unwrap_or(64 << 20).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        die_with_parent(&mut cmd);
        HostProc {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits up to `timeout` for the host to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A broker on `url` whose calls give up after 2 s: the tests' Redis is
/// on loopback, and a test must fail rather than hang.
pub fn broker(url: &str) -> forkpool::broker::Broker {
    forkpool::broker::Broker::new(url)
        .unwrap()
        .timeout(Duration::from_secs(2))
}

/// A client of [`broker`].
pub fn client(url: &str) -> forkpool::broker::Client {
    broker(url).client().unwrap()
}

/// The body of the `host_main` test: a worker host when the test binary
/// was started by [`HostProc::spawn`], nothing otherwise.
pub fn host_main() {
    if std::env::var_os("FORKPOOL_TEST_HOST").is_none() {
        return;
    }
    // What the host logs lands in its host.log, for a failing test to show.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .try_init();
    let env = |k: &str| std::env::var(k).unwrap();
    let ms = |k: &str| Duration::from_millis(env(k).parse().unwrap());
    let broker = forkpool::broker::Broker::new(&env("FP_URL"))
        .unwrap()
        .visibility_timeout(ms("FP_VT_MS"))
        .max_deliveries(env("FP_MAX_DELIVERIES").parse().unwrap())
        .max_message_size(env("FP_MAX_MESSAGE").parse().unwrap())
        .timeout(Duration::from_secs(2));
    let host = broker
        .host()
        .name(env("FP_NAME"))
        .workers(env("FP_WORKERS").parse().unwrap())
        .queues(env("FP_QUEUES").split(','))
        .shutdown_grace(ms("FP_GRACE_MS"))
        .build()
        .unwrap();
    eprintln!("consumer {}", host.consumer());
    let report = host.run().unwrap();
    eprintln!("{report}");
    std::process::exit(0);
}

/// Where jobs leave traces: a file per test, lines appended by workers.
pub struct Traces {
    pub dir: PathBuf,
}

impl Traces {
    pub fn new() -> Traces {
        Traces {
            dir: temp_dir("traces"),
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The lines of trace file `name`.
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Appends one line to a file (O_APPEND: lines from several processes do
/// not interleave).
pub fn append(path: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// The process that runs this worker's host: the worker's parent is the
/// fork server, whose parent is the host.
pub fn my_host_pid() -> i32 {
    let ppid = |pid: i32| super::stat(pid).map(|(_, p)| p).unwrap_or(0);
    ppid(ppid(std::process::id() as i32))
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Makes sure `command` is on `$PATH`, installing Debian's `package` with
/// `apt-get` when it is not — as root, or through `sudo -n` — so that
/// `cargo test --all-features` works on a fresh machine with only the
/// Rust toolchain and apt, as `.ci/run` does. One test process installs
/// at a time (a lock file); the others then find the command.
pub fn ensure_installed(command: &str, package: &str) {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("forkpool-test-apt.lock"))
        .expect("the apt lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if found() {
        return;
    }
    // SAFETY: geteuid reads our own effective uid.
    let root = unsafe { libc::geteuid() } == 0;
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("{command} is not installed: installing {package} with apt-get");
    let installed = apt(&["install", "-y", "-qq", package])
        || (apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", package]));
    assert!(
        installed && found(),
        "{command} is needed and could not be installed: install it (Debian: apt-get install \
         {package}); .ci/run does"
    );
}
