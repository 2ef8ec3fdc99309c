//! The service itself: its jobs, its routes and its periodic job. Kept
//! apart from `main.rs` so that `tests/web_service.rs` drives this very
//! code over real HTTP.
//!
//! | route | what it does |
//! | --- | --- |
//! | `POST /reports` `{"customer": "acme", "rows": 40}` | detaches a report job; `202` with its id |
//! | `GET /reports/{id}` | its state: pending, scheduled (a retry's backoff), running with its progress, then the report or why it failed |
//! | `DELETE /reports/{id}` | revokes it (kills it if it runs) |
//! | `GET /quotes/{symbol}` | runs a short, rate-limited job and `.await`s its handle |
//! | `GET /digest` | what the periodic digest job last said |
//! | `GET /metrics` | the pool's Prometheus metrics |
//! | `GET /inspect` | the pool's inspection, as JSON |

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use forkpool::{
    Failure, Job, JobError, JobId, JobStatus, MetricsFormat, Pool, Queue, RateLimit, RetryOn,
    RetryPolicy, Revoked,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a client asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Whose report (1 to 64 characters). `"broken"` plays a customer
    /// whose upstream always fails, to show retries and a typed error.
    pub customer: String,
    /// How many rows to go through (1 to 10,000).
    pub rows: u64,
    /// How long each row takes, in ms (a stand-in for real work; at most
    /// 1,000; 15 by default).
    #[serde(default = "default_row_ms")]
    pub row_ms: u64,
}

fn default_row_ms() -> u64 {
    15
}

/// A finished report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub customer: String,
    pub rows: u64,
    pub total: u64,
    /// The worker process that built it.
    pub worker_pid: u32,
}

/// Why a report failed: a typed error that crosses back from the worker.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ReportError {
    #[error("the upstream failed at row {0}")]
    Upstream(u64),
}

/// The slow job: one row at a time, reporting progress as it goes.
pub fn build_report(req: ReportRequest) -> Result<Report, ReportError> {
    let mut total = 0;
    for row in 0..req.rows {
        std::thread::sleep(Duration::from_millis(req.row_ms));
        if req.customer == "broken" && row == req.rows / 2 {
            return Err(ReportError::Upstream(row));
        }
        total += row * row % 97;
        forkpool::report_progress(row + 1, req.rows);
    }
    Ok(Report {
        customer: req.customer,
        rows: req.rows,
        total,
        worker_pid: std::process::id(),
    })
}

/// A quick call to an upstream that allows a few calls a second.
pub fn fetch_quote(symbol: String) -> f64 {
    symbol.bytes().map(f64::from).sum::<f64>() / 10.0
}

/// What the periodic digest job says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Digest {
    pub worker_pid: u32,
    pub at_unix_s: f64,
}

/// The periodic job.
pub fn build_digest(_: ()) -> Digest {
    Digest {
        worker_pid: std::process::id(),
        at_unix_s: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    }
}

/// The pool the service runs its jobs in. Build it before the async
/// runtime: workers are forks of the program as it is then.
pub fn build_pool() -> Result<Pool, forkpool::Error> {
    Pool::builder()
        .workers(2)
        .queue(
            "reports",
            Queue::new().workers(2).time_limit(Duration::from_secs(120)),
        )
        .route(build_report, "reports")
        .rate_limit(
            fetch_quote,
            "20/s".parse::<RateLimit>().expect("a valid rate"),
        )
        // Results nobody collects are dropped after ten minutes.
        .result_expires(Duration::from_secs(600))
        .build()
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often the periodic digest job runs.
    pub digest_every: Duration,
}

/// The service's state, shared by every request.
pub struct Service {
    pool: Pool,
    reports: Job<ReportRequest, Report, ReportError>,
    /// Answers of finished reports, taken from the pool, kept for later
    /// requests (the newest [`KEEP`]).
    finished: Mutex<Finished>,
    digests: Mutex<Digests>,
    config: Config,
}

/// How many finished reports' answers are kept.
const KEEP: usize = 1000;

#[derive(Default)]
struct Finished {
    answers: HashMap<JobId, Value>,
    order: VecDeque<JobId>,
}

#[derive(Default, Serialize)]
struct Digests {
    runs: u64,
    failures: u64,
    last: Option<Digest>,
    last_error: Option<String>,
}

impl Service {
    pub fn new(pool: Pool, config: Config) -> Arc<Service> {
        let reports = pool
            .try_job(build_report)
            .retry(
                RetryPolicy::new(2)
                    .backoff(Duration::from_millis(100))
                    .on(RetryOn::ERROR | RetryOn::CRASHED),
            )
            .expires(Duration::from_secs(300))
            .on_error(|f: &Failure<ReportError>| eprintln!("[log] a report failed: {f}"));
        Arc::new(Service {
            pool,
            reports,
            finished: Mutex::new(Finished::default()),
            digests: Mutex::new(Digests::default()),
            config,
        })
    }
}

/// Serves on `listener` until `shutdown` resolves, with the periodic job
/// running beside; then stops both.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let periodic = tokio::spawn(digest_loop(service.clone()));
    let served = axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown)
        .await;
    periodic.abort();
    let _ = periodic.await;
    served
}

/// The routes.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/reports", axum::routing::post(post_report))
        .route("/reports/{id}", get(get_report).delete(delete_report))
        .route("/quotes/{symbol}", get(get_quote))
        .route("/digest", get(get_digest))
        .route("/metrics", get(get_metrics))
        .route("/inspect", get(get_inspect))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(service)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// The periodic job: every `digest_every`, submit the digest and await
/// it. Awaiting in the loop means runs never overlap (a slow run delays
/// the next; ticks missed meanwhile are skipped, not replayed).
///
/// Beat plugs in here: once forkpool has periodic tasks (`beat/`), this
/// loop becomes one schedule registered on the pool at startup — an
/// interval or a crontab, with its overlap and missed-run policies — and
/// the service only reads its runs.
async fn digest_loop(service: Arc<Service>) {
    let mut tick = tokio::time::interval(service.config.digest_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let result = service.pool.submit(build_digest, ()).await;
        let mut d = service.digests.lock().unwrap();
        match result {
            Ok(digest) => {
                d.runs += 1;
                d.last = Some(digest);
            }
            Err(JobError::PoolClosed) => return,
            Err(e) => {
                d.failures += 1;
                d.last_error = Some(e.to_string());
            }
        }
    }
}

/// `POST /reports`: checks the request, detaches the job, answers with
/// its id at once.
async fn post_report(
    State(service): State<Arc<Service>>,
    Json(req): Json<ReportRequest>,
) -> Response {
    let chars = req.customer.chars().count();
    if chars == 0 || chars > 64 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "customer: 1 to 64 characters",
        );
    }
    if req.rows == 0 || req.rows > 10_000 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "rows: 1 to 10000");
    }
    if req.row_ms > 1_000 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "row_ms: at most 1000");
    }
    let id = service.reports.detach(req);
    let url = format!("/reports/{}", id.as_u64());
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&url) {
        headers.insert(header::LOCATION, v);
    }
    let body = json!({ "id": id, "status_url": url });
    (StatusCode::ACCEPTED, headers, Json(body)).into_response()
}

/// `GET /reports/{id}`: where the report is, with its progress while it
/// runs; once it is over, the report or why it failed (kept for later
/// requests).
async fn get_report(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    let id: JobId = match id.parse() {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(answer) = service.finished.lock().unwrap().answers.get(&id) {
        return Json(answer.clone()).into_response();
    }
    let body = match service.pool.status(id) {
        JobStatus::Pending => json!({ "id": id, "state": "pending" }),
        JobStatus::Scheduled => json!({ "id": id, "state": "scheduled" }),
        JobStatus::Running { progress } => json!({
            "id": id,
            "state": "running",
            "progress": progress.map(|p| json!({
                "done": p.done,
                "total": p.total,
                "fraction": p.fraction(),
            })),
        }),
        JobStatus::Succeeded | JobStatus::Failed => {
            let answer = match service.pool.take_result::<Result<Report, ReportError>>(id) {
                Some(Ok(Ok(report))) => {
                    json!({ "id": id, "state": "succeeded", "report": report })
                }
                Some(Ok(Err(e))) => json!({ "id": id, "state": "failed", "error": e.to_string() }),
                Some(Err(e)) => json!({ "id": id, "state": "failed", "error": e.to_string() }),
                // Another request took it a moment ago.
                None => match service.finished.lock().unwrap().answers.get(&id) {
                    Some(answer) => return Json(answer.clone()).into_response(),
                    None => return error(StatusCode::NOT_FOUND, format!("no report {id}")),
                },
            };
            let mut f = service.finished.lock().unwrap();
            f.answers.insert(id, answer.clone());
            f.order.push_back(id);
            while f.order.len() > KEEP {
                if let Some(old) = f.order.pop_front() {
                    f.answers.remove(&old);
                }
            }
            answer
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no report {id}")),
    };
    Json(body).into_response()
}

/// `DELETE /reports/{id}`: revokes the report, killing its worker if it
/// runs.
async fn delete_report(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    let id: JobId = match id.parse() {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let what = match service.pool.revoke(id, true) {
        Revoked::BeforeStart(_) => "revoked before it started",
        Revoked::Terminated => "revoked: its worker was stopped",
        Revoked::LeftRunning => "finishing: it was about to end",
        _ => return error(StatusCode::NOT_FOUND, format!("no report {id} in progress")),
    };
    Json(json!({ "id": id, "revoked": what })).into_response()
}

/// `GET /quotes/{symbol}`: a short job whose handle the request awaits —
/// no thread blocks while the worker runs it.
async fn get_quote(State(service): State<Arc<Service>>, Path(symbol): Path<String>) -> Response {
    let ok = (1..=8).contains(&symbol.len()) && symbol.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok {
        return error(StatusCode::BAD_REQUEST, "symbol: 1 to 8 letters or digits");
    }
    let symbol = symbol.to_ascii_uppercase();
    match service.pool.submit(fetch_quote, symbol.clone()).await {
        Ok(price) => Json(json!({ "symbol": symbol, "price": price })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

/// `GET /digest`: what the periodic job last said.
async fn get_digest(State(service): State<Arc<Service>>) -> Response {
    let d = service.digests.lock().unwrap();
    let every = service.config.digest_every.as_secs_f64();
    Json(json!({ "every_s": every, "digests": &*d })).into_response()
}

/// `GET /metrics`: the pool's metrics, in the format the scraper asks for.
async fn get_metrics(State(service): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = MetricsFormat::from_accept(accept);
    // A snapshot is the supervisor's answer to a command, and reads each
    // worker's memory from /proc: short, but not async.
    let pool = service.pool.clone();
    match tokio::task::spawn_blocking(move || pool.metrics_text_as(format)).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /inspect`: the pool's inspection, as JSON.
async fn get_inspect(State(service): State<Arc<Service>>) -> Response {
    let pool = service.pool.clone();
    match tokio::task::spawn_blocking(move || pool.inspect()).await {
        Ok(inspection) => Json(inspection).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
