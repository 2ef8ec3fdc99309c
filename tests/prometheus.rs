//! Prometheus metrics (feature `prometheus`): the text parses — by
//! `prometheus-parse`, by a strict check of the exposition grammar here,
//! and by `promtool check metrics` when it is there (`.ci/run` fetches
//! it) — its values are the pool's real counts, a dead worker's series
//! disappear, and the `/metrics` endpoint answers real HTTP requests on
//! 127.0.0.1, refuses bad ones, and leaves no thread or socket behind.
#![cfg(feature = "prometheus")]

mod common;

use common::wait_until;
use forkpool::{MetricsFormat, Pool, Queue, WorkerState};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn quick(x: u32) -> u32 {
    x
}

fn boom(_: u32) -> u32 {
    panic!("boom")
}

fn crash(_: u32) -> u32 {
    std::process::abort()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// One HTTP exchange: `request` as is, the answer's status, headers
/// (lowercase names) and body. Bounded: 10 s at most.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    common::http_exchange(addr, request, Duration::from_secs(10))
}

fn get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The text parsed by `prometheus-parse`.
fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `name{labels}` (labels in any order), by
/// reading the text itself: `prometheus-parse` cannot read label values
/// that hold a `}` (a closure's name does).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeSet<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels.iter().cloned().collect::<BTreeSet<_>>() == want)
        .map(|s| s.value)
}

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Every sample of `text`, checked strictly against the text format's
/// grammar: each line is a `# HELP`, `# TYPE` (before its samples, once
/// per family), `# UNIT` or `# EOF` comment, or `name{label="value",...}
/// value`, with valid names and escapes. Panics on the first line that
/// is not.
fn samples(text: &str) -> Vec<Sample> {
    fn name_ok(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            match kind {
                "HELP" | "UNIT" => assert!(name_ok(name, true), "{line}"),
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "untyped",
                            "unknown"
                        ]
                        .contains(&ty),
                        "{line}"
                    );
                    assert!(!typed.iter().any(|(n, _)| n == name), "typed twice: {line}");
                    typed.push((name.to_string(), ty.to_string()));
                }
                "EOF" => {}
                _ => panic!("an unknown comment: {line}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "an empty line");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let mut rest = rest.strip_suffix('}').expect(line);
                let mut labels = Vec::new();
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").expect(line);
                    assert!(name_ok(label, false), "bad label name: {line}");
                    let mut val = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().expect(line) {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().expect(line).1 {
                                'n' => val.push('\n'),
                                c @ ('\\' | '"') => val.push(c),
                                _ => panic!("a bad escape: {line}"),
                            },
                            (_, c) => val.push(c),
                        }
                    };
                    labels.push((label.to_string(), val));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        assert!(name_ok(name, true), "bad name: {line}");
        let family = typed
            .iter()
            .rev()
            .find(|(n, ty)| {
                name == n
                    || (ty == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(n)))
                    || (ty == "counter" && name.strip_suffix("_total") == Some(n))
            })
            .unwrap_or_else(|| panic!("a sample before its TYPE: {line}"));
        assert_eq!(
            family.0,
            typed.last().unwrap().0,
            "families are contiguous: {line}"
        );
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// `promtool check metrics` on the text, if promtool is there: `$PROMTOOL`,
/// else `promtool` on the path. Says so when it is not.
fn promtool_check(text: &str) {
    let tool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("PROMTOOL").is_none(),
                "PROMTOOL={tool} does not run: {e}"
            );
            eprintln!("promtool not found: the text is checked by the grammar here only");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_text_parses_and_tells_the_pools_real_counts() {
    let pool = Pool::builder()
        .workers(2)
        .queue("reports", Queue::new().workers(1))
        .build()
        .unwrap();
    assert_eq!(pool.map(quick, 0..10).unwrap().len(), 10);
    assert!(pool.apply(boom, 1).is_err());
    let reports = pool.queue("reports").unwrap();
    assert_eq!(reports.apply(nap, 20), Ok(20));
    let named = pool.job(quick).name("renamed \"quick\"\\{x}");
    assert_eq!(named.submit(1).get(), Ok(1));
    // Every worker's pid is known (the fork server reports it on its own
    // time), so its series has its label.
    assert!(wait_until(LONG, || pool
        .inspect()
        .workers
        .iter()
        .all(|w| w.pid != 0)));

    let text = pool.metrics_text();
    let ins = pool.inspect();
    let stats = pool.stats();
    promtool_check(&text);
    let scrape = parse(&text);
    assert!(scrape.samples.len() > 100, "{}", scrape.samples.len());
    assert!(
        scrape.docs.contains_key("forkpool_jobs_submitted_total"),
        "{:?}",
        scrape.docs.keys()
    );

    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(v("forkpool_jobs_submitted_total", &[]), 13.0);
    assert_eq!(stats.submitted, 13);
    assert_eq!(
        v("forkpool_jobs_finished_total", &[("outcome", "completed")]),
        12.0
    );
    assert_eq!(
        v("forkpool_jobs_finished_total", &[("outcome", "panicked")]),
        1.0
    );
    assert_eq!(
        v("forkpool_jobs_finished_total", &[("outcome", "crashed")]),
        0.0
    );
    let all_outcomes: f64 = samples(&text)
        .iter()
        .filter(|s| s.name == "forkpool_jobs_finished_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(all_outcomes, 13.0, "outcomes are disjoint and complete");

    let quick_name = std::any::type_name_of_val(&quick);
    let f = |outcome| [("function", quick_name), ("outcome", outcome)];
    assert_eq!(
        v("forkpool_function_jobs_finished_total", &f("completed")),
        10.0
    );
    let boom_name = std::any::type_name_of_val(&boom);
    let b = [("function", boom_name), ("outcome", "panicked")];
    assert_eq!(v("forkpool_function_jobs_finished_total", &b), 1.0);
    // A name with quotes, a backslash and braces is escaped and read back.
    let odd = [
        ("function", "renamed \"quick\"\\{x}"),
        ("outcome", "completed"),
    ];
    assert_eq!(v("forkpool_function_jobs_finished_total", &odd), 1.0);

    let r = [("queue", "reports"), ("outcome", "completed")];
    assert_eq!(v("forkpool_queue_jobs_finished_total", &r), 1.0);
    let d = [("queue", "default"), ("outcome", "completed")];
    assert_eq!(v("forkpool_queue_jobs_finished_total", &d), 11.0);

    // Histograms: cumulative buckets ending in +Inf = count, a sum, and
    // the values of the inspection.
    let run = ins.function(quick_name).unwrap().ran;
    assert_eq!(
        v(
            "forkpool_function_run_seconds_count",
            &[("function", quick_name)]
        ),
        10.0
    );
    let sum = v(
        "forkpool_function_run_seconds_sum",
        &[("function", quick_name)],
    );
    assert!(
        (sum - run.total.as_secs_f64()).abs() < 1e-6,
        "{sum} {run:?}"
    );
    let reports_run = [("queue", "reports")];
    assert_eq!(v("forkpool_queue_run_seconds_count", &reports_run), 1.0);
    let nap_sum = v("forkpool_queue_run_seconds_sum", &reports_run);
    assert!(nap_sum >= 0.019, "a 20 ms nap ran {nap_sum} s");
    let mut last = 0.0;
    for (bound, n) in ins.queue("reports").unwrap().stats.ran.buckets() {
        let le = format!("{}", bound.as_secs_f64());
        let got = v(
            "forkpool_queue_run_seconds_bucket",
            &[("queue", "reports"), ("le", le.as_str())],
        );
        assert_eq!(got, n as f64, "le={le}");
        assert!(got >= last);
        last = got;
    }
    assert_eq!(
        v(
            "forkpool_queue_run_seconds_bucket",
            &[("queue", "reports"), ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "forkpool_queue_run_seconds_bucket",
            &[("queue", "reports"), ("le", "0.01")]
        ),
        0.0,
        "a 20 ms nap is not under 10 ms"
    );

    // Gauges: the queues' workers and bounds, and each live worker.
    assert_eq!(
        v("forkpool_queue_workers_max", &[("queue", "default")]),
        2.0
    );
    assert_eq!(
        v("forkpool_queue_workers_max", &[("queue", "reports")]),
        1.0
    );
    for w in ins
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Exited)
    {
        let pid = w.pid.to_string();
        let labels = [("queue", w.queue.as_str()), ("pid", pid.as_str())];
        assert_eq!(
            v("forkpool_worker_jobs_done_total", &labels),
            w.jobs_done as f64
        );
        assert!(v("forkpool_worker_resident_memory_bytes", &labels) > 100_000.0);
        assert!(v("forkpool_worker_uptime_seconds", &labels) >= 0.0);
    }
    assert_eq!(
        v(
            "forkpool_queue_jobs",
            &[("queue", "default"), ("state", "running")]
        ),
        0.0
    );
    pool.join().unwrap();
}

#[test]
fn queue_gauges_show_where_the_jobs_are() {
    let pool = Pool::new(1).unwrap();
    let running = pool.submit(nap, 1500);
    let waiting: Vec<_> = (0..3).map(|_| pool.submit(nap, 1)).collect();
    let later = pool.job(nap).countdown(Duration::from_secs(60)).submit(1);
    assert!(wait_until(LONG, || !pool.inspect().active.is_empty()));
    let text = pool.metrics_text();
    let at = |state| {
        value(
            &text,
            "forkpool_queue_jobs",
            &[("queue", "default"), ("state", state)],
        )
        .unwrap()
    };
    assert_eq!(at("running"), 1.0);
    assert_eq!(at("scheduled"), 1.0);
    assert_eq!(at("waiting") + at("reserved"), 3.0, "{text}");
    assert_eq!(value(&text, "forkpool_jobs_scheduled", &[]), Some(1.0));
    assert!(later.cancel());
    assert_eq!(running.get(), Ok(1500));
    for h in waiting {
        assert_eq!(h.get(), Ok(1));
    }
}

#[test]
fn a_dead_workers_series_disappear() {
    let _turn = one_at_a_time();
    let pool = Pool::builder()
        .workers(1)
        .standby_worker(false)
        .build()
        .unwrap();
    assert_eq!(pool.apply(quick, 1), Ok(1));
    // The fork server reports a worker's pid on its own time: a worker can
    // serve a job before the supervisor has read it.
    assert!(wait_until(LONG, || pool.inspect().workers[0].pid != 0));
    let before = pool.inspect().workers[0].pid.to_string();
    let server = pool.serve_metrics("127.0.0.1:0").unwrap();
    let (status, _, text) = get(server.local_addr(), "/metrics");
    assert_eq!(status, 200);
    let pid_of = |text: &str| -> BTreeSet<String> {
        samples(text)
            .into_iter()
            .filter(|s| s.name.starts_with("forkpool_worker_"))
            .flat_map(|s| s.labels.into_iter().filter(|(k, _)| k == "pid"))
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(pid_of(&text), BTreeSet::from([before.clone()]));

    assert!(pool.apply(crash, 1).is_err());
    assert!(wait_until(LONG, || {
        let ws = pool.inspect().workers;
        ws.len() == 1 && ws[0].pid != 0 && ws[0].pid.to_string() != before
    }));
    let (_, _, text) = get(server.local_addr(), "/metrics");
    let after = pid_of(&text);
    assert_eq!(after.len(), 1, "{text}");
    assert!(
        !after.contains(&before),
        "the dead worker's series are gone"
    );
    assert!(!text.contains(&format!("pid=\"{before}\"")));
    assert_eq!(
        value(
            &text,
            "forkpool_jobs_finished_total",
            &[("outcome", "crashed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "forkpool_worker_restarts_total", &[]),
        Some(1.0)
    );
}

#[test]
fn the_endpoint_answers_http_and_refuses_bad_requests() {
    let _turn = one_at_a_time();
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(quick, 5), Ok(5));
    let server = pool.serve_metrics(("127.0.0.1", 0)).unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let (status, headers, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some(MetricsFormat::Prometheus.content_type())
    );
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(
        value(&body, "forkpool_jobs_submitted_total", &[]),
        Some(1.0)
    );
    promtool_check(&body);

    // A query string is fine; OpenMetrics when the scraper asks for it.
    let (status, headers, body) = http(
        addr,
        b"GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some(MetricsFormat::OpenMetrics.content_type())
    );
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(
        value(&body, "forkpool_jobs_submitted_total", &[]),
        Some(1.0)
    );
    assert!(body.contains("# UNIT forkpool_function_run_seconds seconds"));

    let (status, headers, body) = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert!(
        header(&headers, "content-length")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1000
    );

    assert_eq!(get(addr, "/").0, 404);
    assert_eq!(get(addr, "/metrics/x").0, 404);
    let (status, headers, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    for bad in [
        &b"GET /metrics\r\n\r\n"[..],
        b"GET /metrics HTTP/2\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n", // then the client stops sending
    ] {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(bad).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{bad:?}: {answer}");
    }
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(huge.as_bytes()); // the server may close early
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // Still serving after all that.
    assert_eq!(get(addr, "/metrics").0, 200);
}

/// The metrics servers' threads in this process (a thread's `comm` is
/// its name cut to 15 bytes).
fn server_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == &"forkpool-metrics"[..15])
        })
        .count()
}

/// Tests that start servers take turns, so that one can count threads.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn dropping_the_server_stops_it_at_once_even_with_a_silent_client() {
    let _turn = one_at_a_time();
    let pool = Pool::new(1).unwrap();
    let before = server_threads();
    let server = pool.serve_metrics("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/metrics").0, 200);
    assert_eq!(server_threads(), before + 1);
    // A client that connects and says nothing holds the server's one
    // connection; stopping must not wait for it.
    let silent = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        started.elapsed()
    );
    // The listener is closed: nobody answers on the port any more.
    assert!(TcpStream::connect(addr).is_err());
    let mut silent = silent;
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest); // closed by the server
    assert!(rest.is_empty());
    assert_eq!(server_threads(), before, "the thread was joined");
}

#[test]
fn a_server_outliving_its_pool_says_so_and_stops() {
    let _turn = one_at_a_time();
    let pool = Pool::new(1).unwrap();
    let server = pool.serve_metrics("127.0.0.1:0").unwrap();
    let collector = pool.metrics_collector();
    assert_eq!(get(server.local_addr(), "/metrics").0, 200);
    drop(pool); // the server does not keep it alive
    let (status, _, body) = get(server.local_addr(), "/metrics");
    assert_eq!(status, 503);
    assert!(body.contains("gone"));
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert_eq!(
        text, "# EOF\n",
        "a collector of a gone pool encodes nothing"
    );
    server.stop();
}

#[test]
fn binding_a_taken_port_is_an_error() {
    let _turn = one_at_a_time();
    let pool = Pool::new(1).unwrap();
    let first = pool.serve_metrics("127.0.0.1:0").unwrap();
    match pool.serve_metrics(first.local_addr()) {
        Err(forkpool::Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    assert!(matches!(
        pool.serve_metrics("not an address"),
        Err(forkpool::Error::Io(_))
    ));
}
