//! The pool's Prometheus calls (cargo feature `prometheus`): thin, as
//! everything in this folder; the rendering is `control/prometheus.rs`,
//! the endpoint `control/http.rs`.

use super::Pool;
use crate::control::http::MetricsServer;
use crate::control::prometheus::{MetricsCollector, MetricsFormat, Snapshot, Source, render};
use crate::error::Error;
use std::net::ToSocketAddrs;
use std::sync::Arc;

impl Pool {
    /// The pool's metrics in the Prometheus text format, from one fresh
    /// snapshot ([`inspect`](Pool::inspect) and [`stats`](Pool::stats)):
    /// serve it at `/metrics` from your web framework, or let
    /// [`serve_metrics`](Pool::serve_metrics) do it.
    ///
    /// | metric | type | labels | from |
    /// | --- | --- | --- | --- |
    /// | `forkpool_jobs_submitted_total` | counter | | [`Stats::submitted`](crate::Stats::submitted) |
    /// | `forkpool_jobs_retried_total` | counter | | `Stats::retried` |
    /// | `forkpool_jobs_finished_total` | counter | `outcome` | `Stats::completed`, the failure kinds, `cancelled` |
    /// | `forkpool_worker_restarts_total`, `forkpool_fork_server_restarts_total` | counter | | `Stats` |
    /// | `forkpool_workers_live`, `forkpool_workers_standby`, `forkpool_jobs_scheduled` | gauge | | `Stats` |
    /// | `forkpool_queue_workers`, `_workers_busy`, `_workers_min`, `_workers_max` | gauge | `queue` | [`QueueStats`](crate::QueueStats) |
    /// | `forkpool_queue_grown_total`, `forkpool_queue_shrunk_total` | counter | `queue` | `QueueStats` |
    /// | `forkpool_queue_jobs` | gauge | `queue`, `state` | [`Inspection::queues`](crate::Inspection::queues), `active` |
    /// | `forkpool_queue_jobs_finished_total` | counter | `queue`, `outcome` | the queue's [`JobStats`](crate::JobStats) |
    /// | `forkpool_queue_wait_seconds`, `forkpool_queue_run_seconds` | histogram | `queue` | the queue's `JobStats` |
    /// | `forkpool_function_jobs_finished_total` | counter | `function`, `outcome` | [`Inspection::functions`](crate::Inspection::functions) |
    /// | `forkpool_function_wait_seconds`, `forkpool_function_run_seconds` | histogram | `function` | the function's `JobStats` |
    /// | `forkpool_worker_jobs_done_total` | counter | `queue`, `pid` | [`WorkerView`](crate::WorkerView) |
    /// | `forkpool_worker_resident_memory_bytes`, `forkpool_worker_uptime_seconds` | gauge | `queue`, `pid` | `WorkerView` |
    ///
    /// `outcome` is one of `completed`, `panicked`, `crashed`,
    /// `timed_out`, `codec_error`, `errored`, `expired`, `other_failure`
    /// and `cancelled` (revoked included): disjoint, so a `sum` over them
    /// is every job that ended. `state` is `scheduled`, `waiting`,
    /// `reserved` or `running`. Histograms have the fixed buckets of
    /// [`DurationSummary::BUCKET_BOUNDS`](crate::DurationSummary::BUCKET_BOUNDS).
    /// A worker's series are there while it lives: a dead worker's
    /// disappear at the next scrape. The labels are bounded — the
    /// program's functions, the pool's queues, fixed sets, and live
    /// pids — so the number of series does not grow with the number of
    /// jobs.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn double(x: u32) -> u32 { 2 * x }
    /// let pool = forkpool::Pool::new(1)?;
    /// pool.map(double, 0..10)?;
    /// let text = pool.metrics_text();
    /// assert!(text.contains("forkpool_jobs_submitted_total 10"));
    /// assert!(text.contains(r#"forkpool_jobs_finished_total{outcome="completed"} 10"#));
    /// assert!(text.contains(r#"forkpool_queue_run_seconds_count{queue="default"} 10"#));
    /// # Ok(()) }
    /// ```
    pub fn metrics_text(&self) -> String {
        self.metrics_text_as(MetricsFormat::Prometheus)
    }

    /// [`metrics_text`](Pool::metrics_text) in the format of your choice
    /// (OpenMetrics: `# UNIT` lines, and `# EOF` at the end).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use forkpool::MetricsFormat;
    /// let pool = forkpool::Pool::new(1)?;
    /// assert!(pool.metrics_text_as(MetricsFormat::OpenMetrics).ends_with("# EOF\n"));
    /// # Ok(()) }
    /// ```
    pub fn metrics_text_as(&self, format: MetricsFormat) -> String {
        let snapshot = Snapshot {
            inspection: self.inspect(),
            stats: self.stats(),
        };
        render(snapshot, format)
    }

    /// The pool's metrics as a `prometheus-client` collector, for a
    /// program that has a [`Registry`](prometheus_client::registry::Registry)
    /// of its own: each encode of the registry takes a fresh snapshot.
    /// The collector does not keep the pool alive.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use prometheus_client::registry::Registry;
    /// let pool = forkpool::Pool::new(1)?;
    /// let mut registry = Registry::default();
    /// registry
    ///     .sub_registry_with_label(("pool".into(), "reports".into()))
    ///     .register_collector(Box::new(pool.metrics_collector()));
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains(r#"forkpool_jobs_submitted_total{pool="reports"} 0"#));
    /// # Ok(()) }
    /// ```
    pub fn metrics_collector(&self) -> MetricsCollector {
        MetricsCollector::new(self.metrics_source())
    }

    /// Serves the pool's metrics over HTTP at `addr` (`GET /metrics`, in
    /// the Prometheus text format, or OpenMetrics when the scraper asks
    /// for it) on a thread of its own, until the [`MetricsServer`] is
    /// dropped. Each scrape renders a fresh snapshot; the server does not
    /// keep the pool alive, and never blocks it. Binding `addr` can fail
    /// ([`Error::Io`]: the port is taken, say). See `MetricsServer` for
    /// what it answers and its limits.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(1)?;
    /// let server = pool.serve_metrics("127.0.0.1:0")?;
    /// println!("scrape http://{}/metrics", server.local_addr());
    /// let taken = server.local_addr();
    /// assert!(matches!(pool.serve_metrics(taken), Err(forkpool::Error::Io(_))));
    /// # Ok(()) }
    /// ```
    pub fn serve_metrics(&self, addr: impl ToSocketAddrs) -> Result<MetricsServer, Error> {
        Ok(MetricsServer::start(addr, self.metrics_source())?)
    }

    /// A snapshot taker that holds the pool weakly.
    fn metrics_source(&self) -> Source {
        let shared = Arc::downgrade(&self.shared);
        Arc::new(move || {
            let shared = shared.upgrade()?;
            Some(Snapshot {
                inspection: shared.snapshot(),
                stats: shared.counters.snapshot(),
            })
        })
    }
}
