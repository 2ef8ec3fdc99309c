//! A web service offloads slow work: `cargo run --release --example web_offload`
//!
//! This one plays the service and its clients in one process, printing
//! what each request would get; `examples/web_service` is the same idea
//! as a real HTTP service (axum) to try with `curl`.
//!
//! A request handler must answer in milliseconds, but building a report
//! takes seconds. So `POST /reports` detaches a job and answers with its id
//! at once; `GET /reports/{id}` answers with the job's status — with its
//! progress while it runs — and, once it is done, the report. Here a loop
//! plays the clients polling, and draws each report's progress as a bar
//! (when stderr is a terminal; otherwise it prints status changes).
//!
//! Along the way:
//! - reports call a flaky upstream: a failed attempt is retried with
//!   exponential backoff and jitter, and the typed error comes back only
//!   when retries are spent;
//! - the upstream allows 4 calls a second: quote lookups are rate limited
//!   across all workers, while reports keep running;
//! - a report not started (or retried) within 10 s is pointless: it
//!   expires;
//! - the nightly digest is scheduled with an ETA;
//! - notification emails are fire-and-forget, logged by callbacks;
//! - results nobody collects are dropped after a minute.

use forkpool::{JobError, JobId, JobStatus, Pool, RateLimit, RetryPolicy};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReportRequest {
    customer: String,
    rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    customer: String,
    total: u64,
    attempt_pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
enum ReportError {
    #[error("the upstream timed out at row {0}")]
    Upstream(u64),
}

/// A pseudo-random number in 0..n, different in every process and call.
fn roll(n: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)) % n
}

/// The slow part: one row at a time, reporting progress as it goes. The
/// upstream fails one attempt in three, somewhere in the middle.
fn build_report(req: ReportRequest) -> Result<Report, ReportError> {
    let fail_at = (roll(3) == 0).then_some(req.rows / 2);
    let mut total = 0;
    for row in 0..req.rows {
        std::thread::sleep(Duration::from_millis(15));
        if Some(row) == fail_at {
            return Err(ReportError::Upstream(row));
        }
        total += row * row % 97;
        forkpool::report_progress(row + 1, req.rows);
    }
    Ok(Report {
        customer: req.customer,
        total,
        attempt_pid: std::process::id(),
    })
}

/// A call to the rate-limited upstream.
fn fetch_quote(symbol: String) -> f64 {
    symbol.bytes().map(f64::from).sum::<f64>() / 10.0
}

/// Sends a notification (pretend).
fn send_email(to: String) -> String {
    std::thread::sleep(Duration::from_millis(20));
    format!("mail to {to} sent")
}

/// Warms a cache at startup: many tiny items, with a progress bar.
fn warm(key: u64) -> u64 {
    key.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 7
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder()
        .workers(4)
        .time_limit(Duration::from_secs(30))
        .result_expires(Duration::from_secs(60))
        .rate_limit(fetch_quote, "4/s".parse::<RateLimit>()?)
        .progress_bar(true)
        .build()?;

    println!("warming the cache ...");
    let warmed = pool.map(warm, 0..50_000u64)?;
    println!("cache warm: {} entries", warmed.len());

    // The "POST /reports" handler: validate, detach, answer with the id.
    let reports = pool
        .try_job(build_report)
        .retry(
            RetryPolicy::new(4)
                .backoff(Duration::from_millis(200))
                .backoff_max(Duration::from_secs(2))
                .jitter(true),
        )
        .expires(Duration::from_secs(10))
        .on_error(|failure| eprintln!("[log] a report failed for good: {failure}"));
    let mut requests: BTreeMap<JobId, String> = BTreeMap::new();
    for (i, customer) in ["acme", "globex", "initech", "umbrella", "hooli", "stark"]
        .iter()
        .enumerate()
    {
        let id = reports.detach(ReportRequest {
            customer: customer.to_string(),
            rows: 60 + 20 * i as u64,
        });
        println!("POST /reports {customer:>9} -> 202 Accepted, id {id}");
        requests.insert(id, customer.to_string());
    }

    // The nightly digest, due in two seconds (it has no retry policy: one
    // time in three the upstream fails it); and quotes for the dashboard,
    // no faster than the upstream allows.
    let digest = pool
        .try_job(build_report)
        .eta(SystemTime::now() + Duration::from_secs(2))
        .detach(ReportRequest {
            customer: "nightly digest".into(),
            rows: 40,
        });
    requests.insert(digest, "nightly digest".into());
    let quotes: Vec<_> = ["ACME", "GLBX", "INIT", "UMBR", "HOOL", "STRK"]
        .iter()
        .map(|s| pool.submit(fetch_quote, s.to_string()))
        .collect();

    // "GET /reports/{id}", polled by the clients until every report is in.
    let started = Instant::now();
    let mut view = View::new(&requests);
    let mut done: BTreeMap<JobId, String> = BTreeMap::new();
    while done.len() < requests.len() {
        for (&id, customer) in &requests {
            if done.contains_key(&id) {
                continue;
            }
            let status = pool.status(id);
            view.show(id, status);
            let answer = match status {
                JobStatus::Succeeded | JobStatus::Failed => {
                    match pool.take_result::<Result<Report, ReportError>>(id) {
                        Some(Ok(Ok(r))) => {
                            format!("200 OK, total {} (pid {})", r.total, r.attempt_pid)
                        }
                        Some(Ok(Err(e))) => format!("502 upstream: {e}"),
                        Some(Err(JobError::Expired)) => "410 Gone: not started in time".into(),
                        Some(Err(e)) => format!("500 {e}"),
                        None => "404 Not Found".into(),
                    }
                }
                JobStatus::Unknown => "404 Not Found".into(),
                _ => continue,
            };
            view.finish(id, &answer);
            // Fire and forget: tell the customer; the callback logs it.
            pool.job(send_email)
                .on_success(|line: &String| println!("[log] {line}"))
                .spawn(format!("{customer}@example.com"));
            done.insert(id, answer);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    view.clear();
    for (id, answer) in &done {
        println!("GET /reports/{id} {:>15} -> {answer}", requests[id]);
    }
    let quotes: Vec<f64> = quotes
        .into_iter()
        .map(|h| h.get())
        .collect::<Result<_, _>>()?;
    println!("quotes (4/s upstream): {quotes:?}");

    let s = pool.stats();
    println!(
        "after {:.1?}: {} jobs submitted, {} completed, {} retried, {} failed, {} expired",
        started.elapsed(),
        s.submitted,
        s.completed,
        s.retried,
        s.failed,
        s.expired
    );
    pool.join()?; // waits for the e-mails and their callbacks too
    Ok(())
}

/// The clients' view: a bar per report on a terminal, else status lines.
struct View {
    bars: Option<(MultiProgress, BTreeMap<JobId, ProgressBar>)>,
    last: BTreeMap<JobId, JobStatus>,
}

impl View {
    fn new(requests: &BTreeMap<JobId, String>) -> View {
        if !std::io::stderr().is_terminal() {
            return View {
                bars: None,
                last: BTreeMap::new(),
            };
        }
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>15} {bar:30} {percent:>3}% {msg}")
            .expect("a valid template");
        let bars = requests
            .iter()
            .map(|(&id, customer)| {
                let bar = multi.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(customer.clone());
                (id, bar)
            })
            .collect();
        View {
            bars: Some((multi, bars)),
            last: BTreeMap::new(),
        }
    }

    fn show(&mut self, id: JobId, status: JobStatus) {
        match &self.bars {
            Some((_, bars)) => {
                let bar = &bars[&id];
                match status {
                    JobStatus::Running { progress } => {
                        let pct = progress.and_then(|p| p.fraction()).unwrap_or(0.0);
                        bar.set_position((pct * 100.0) as u64);
                        bar.set_message("running");
                    }
                    other => bar.set_message(label(other)),
                }
            }
            None => {
                // Progress changes every poll; print only the state.
                let state = match status {
                    JobStatus::Running { .. } => JobStatus::Running { progress: None },
                    s => s,
                };
                if self.last.insert(id, state) != Some(state) {
                    println!("GET /reports/{id} -> {}", label(status));
                }
            }
        }
    }

    fn finish(&self, id: JobId, answer: &str) {
        if let Some((_, bars)) = &self.bars {
            bars[&id].finish_with_message(answer.to_string());
        }
    }

    fn clear(&self) {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
    }
}

/// A status as the API would show it.
fn label(status: JobStatus) -> String {
    match status {
        JobStatus::Pending => "pending".into(),
        JobStatus::Scheduled => "scheduled".into(),
        JobStatus::Running { progress } => match progress.and_then(|p| p.fraction()) {
            Some(f) => format!("running, {:.0}% done", f * 100.0),
            None => "running".into(),
        },
        JobStatus::Succeeded => "succeeded".into(),
        JobStatus::Failed => "failed".into(),
        _ => "unknown".into(),
    }
}
