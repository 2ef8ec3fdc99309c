//! The example web service (`examples/web_service`), driven over real
//! HTTP on 127.0.0.1: a report is accepted, shows its progress while it
//! runs, then its result; a failing one is retried and says why; a
//! running one is revoked; a request awaits a job; the periodic job runs;
//! `/metrics` and `/inspect` tell the pool's real counts; bad requests get
//! clear errors; and stopping it leaves nothing behind.
#![cfg(feature = "prometheus")]

#[allow(dead_code)]
#[path = "../examples/web_service/app.rs"]
mod app;
mod common;

use common::{descendants, wait_until};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// An answer: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`), bounded.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<(&str, &str)>) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    match body {
        Some((content_type, body)) => {
            if !content_type.is_empty() {
                req.push_str(&format!("Content-Type: {content_type}\r\n"));
            }
            req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        None => req.push_str("\r\n"),
    }
    let (status, headers, body) =
        common::http_exchange(addr, req.as_bytes(), Duration::from_secs(20));
    Answer {
        status,
        headers,
        body,
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, None)
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> Answer {
    request(addr, "POST", path, Some(("application/json", body)))
}

/// Polls `GET path` until `done` holds of its JSON; returns that JSON.
fn poll(addr: SocketAddr, path: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        let a = get(addr, path);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        last = a.json();
        done(&last)
    });
    assert!(ok, "{path} never got there; last: {last}");
    last
}

/// A metric's value in Prometheus text (no labels, or exactly these).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_service_answers_real_http_requests() {
    // As `main` does: the pool first, then the runtime.
    let pool = app::build_pool().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = app::Config {
        digest_every: Duration::from_millis(100),
    };
    let service = app::Service::new(pool.clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        app::serve(listener, service, async {
            let _ = stopped.await;
        })
        .await
    });

    // A report: accepted at once, then (pending, running) done.
    let a = post_json(
        addr,
        "/reports",
        r#"{"customer": "acme", "rows": 30, "row_ms": 5}"#,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.json()["id"].as_u64().unwrap();
    let url = format!("/reports/{id}");
    assert_eq!(a.header("location"), Some(url.as_str()));
    assert_eq!(a.json()["status_url"], url.as_str());
    let done = poll(addr, &url, |v| {
        assert!(
            ["pending", "running", "succeeded"].contains(&v["state"].as_str().unwrap()),
            "{v}"
        );
        v["state"] == "succeeded"
    });
    let want: u64 = (0..30u64).map(|r| r * r % 97).sum();
    assert_eq!(done["report"]["total"], want);
    assert_eq!(done["report"]["customer"], "acme");
    let worker = done["report"]["worker_pid"].as_u64().unwrap();
    assert_ne!(worker, u64::from(std::process::id()), "built in a worker");
    // Asked again, the answer is the same (the service keeps it).
    assert_eq!(get(addr, &url).json(), done);
    assert_eq!(get(addr, &format!("/reports/job-{id}")).json(), done);

    // A report whose upstream always fails: retried, then a typed error.
    let a = post_json(
        addr,
        "/reports",
        r#"{"customer": "broken", "rows": 4, "row_ms": 1}"#,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let broken = format!("/reports/{}", a.json()["id"]);
    let failed = poll(addr, &broken, |v| v["state"] == "failed");
    assert_eq!(failed["error"], "the upstream failed at row 2");

    // A long report (50 s): running, with its progress ...
    let a = post_json(
        addr,
        "/reports",
        r#"{"customer": "initech", "rows": 5000, "row_ms": 10}"#,
    );
    let long = format!("/reports/{}", a.json()["id"]);
    let running = poll(addr, &long, |v| {
        v["state"] == "running" && v["progress"]["done"].as_u64().is_some_and(|d| d > 0)
    });
    assert_eq!(running["progress"]["total"], 5000);
    let fraction = running["progress"]["fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction < 1.0, "{running}");

    // ... meanwhile a request awaits a quick job of its own ...
    let q = get(addr, "/quotes/acme");
    assert_eq!(q.status, 200, "{}", q.body);
    assert_eq!(q.json()["symbol"], "ACME");
    assert_eq!(q.json()["price"], app::fetch_quote("ACME".into()));

    // ... and the long report is revoked: its worker is stopped.
    let d = request(addr, "DELETE", &long, None);
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.json()["revoked"], "revoked: its worker was stopped");
    let revoked = poll(addr, &long, |v| v["state"] == "failed");
    assert_eq!(revoked["error"], "job was revoked");
    assert_eq!(request(addr, "DELETE", &long, None).status, 404);

    // Bad requests get clear errors.
    let bad = post_json(addr, "/reports", r#"{"customer": "acme", "rows": 0}"#);
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["error"], "rows: 1 to 10000");
    let bad = post_json(addr, "/reports", r#"{"customer": "", "rows": 3}"#);
    assert_eq!(bad.status, 422);
    assert_eq!(post_json(addr, "/reports", "{not json").status, 400);
    assert_eq!(post_json(addr, "/reports", r#"{"rows": 3}"#).status, 422);
    let untyped = request(
        addr,
        "POST",
        "/reports",
        Some(("", r#"{"customer":"a","rows":1}"#)),
    );
    assert_eq!(untyped.status, 415);
    let bad = get(addr, "/reports/abc");
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("not a job id")
    );
    assert_eq!(get(addr, "/reports/987654321").status, 404);
    assert_eq!(get(addr, "/quotes/no%20spaces").status, 400);
    assert_eq!(get(addr, "/nowhere").status, 404);
    assert_eq!(request(addr, "PUT", "/metrics", None).status, 405);

    // The periodic job runs.
    let digest = poll(addr, "/digest", |v| {
        v["digests"]["runs"].as_u64() >= Some(2)
    });
    assert!(digest["digests"]["last"]["worker_pid"].as_u64().is_some());
    assert_eq!(digest["digests"]["failures"], 0);

    // /inspect: the pool as JSON, totals adding up.
    let ins = get(addr, "/inspect");
    assert_eq!(ins.status, 200);
    assert!(
        ins.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let ins = ins.json();
    let t = &ins["totals"];
    let part = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(
        part("submitted"),
        part("scheduled") + part("waiting") + part("reserved") + part("running") + part("finished"),
        "{t}"
    );
    let report_fn = std::any::type_name_of_val(&app::build_report);
    let f = ins["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == report_fn)
        .unwrap_or_else(|| panic!("{report_fn} not in {}", ins["functions"]));
    assert_eq!(f["stats"]["outcomes"]["completed"], 1);
    assert_eq!(
        f["stats"]["outcomes"]["errored"], 3,
        "3 attempts of the broken one"
    );
    assert_eq!(f["stats"]["outcomes"]["cancelled"], 1, "the revoked one");
    assert!(f["stats"]["ran"]["max"].as_f64().unwrap() >= 0.15, "{f}");
    let queues: Vec<&str> = ins["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["queue"].as_str().unwrap())
        .collect();
    assert!(queues.contains(&"reports") && queues.contains(&"default"));

    // /metrics: Prometheus text, the pool's own counts.
    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type"),
        Some(forkpool::MetricsFormat::Prometheus.content_type())
    );
    let scrape =
        prometheus_parse::Scrape::parse(m.body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(scrape.samples.len() > 50);
    let stats = pool.stats();
    let series = |s: &str| metric(&m.body, s).unwrap_or_else(|| panic!("no {s}"));
    let completed = format!(
        "forkpool_function_jobs_finished_total{{function=\"{report_fn}\",outcome=\"completed\"}}"
    );
    assert_eq!(series(&completed), 1.0);
    assert!(series("forkpool_jobs_retried_total") >= 2.0);
    assert!(series("forkpool_jobs_submitted_total") <= stats.submitted as f64);
    assert_eq!(
        series("forkpool_worker_restarts_total"),
        1.0,
        "the revoked one's worker"
    );
    let om = request(addr, "GET", "/metrics", None);
    assert!(
        om.body
            .contains("forkpool_queue_run_seconds_bucket{queue=\"reports\"")
    );
    let open = {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        conn.read_to_string(&mut s).unwrap();
        s
    };
    assert!(open.contains("application/openmetrics-text"), "{open}");
    assert!(open.ends_with("# EOF\n"));

    // Stopping: the server finishes, the runtime and the pool go, and no
    // process or listener is left.
    stop.send(()).unwrap();
    let served = runtime.block_on(async { tokio::time::timeout(LONG, server).await });
    served.expect("the server stops").unwrap().unwrap();
    runtime.shutdown_timeout(Duration::from_secs(10));
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    pool.join().unwrap();
    assert!(
        wait_until(LONG, || descendants(std::process::id() as i32).is_empty()),
        "{:?}",
        descendants(std::process::id() as i32)
    );
}
