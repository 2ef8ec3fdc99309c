//! Prometheus metrics (cargo feature `prometheus`): every counter, gauge
//! and distribution a pool keeps, in the Prometheus text format or in
//! OpenMetrics, encoded by the `prometheus-client` crate.
//!
//! **Rendered fresh from one snapshot.** Nothing here counts: each render
//! (a scrape) takes one [`Inspection`] and one [`Stats`] and encodes
//! them. The pool pays nothing between scrapes, the figures of one scrape
//! agree with each other, and what no longer exists is simply not in the
//! next one — a dead worker's series disappear, and Prometheus marks them
//! stale, instead of lingering as a registry's would.
//!
//! **Bounded labels.** `function` (the program's functions, or the names
//! given on jobs: `&'static str`, so bounded by the program), `queue`
//! (fixed when the pool is built), `outcome` and `state` (fixed sets), and
//! `pid` only on per-worker series, of which there are as many as live
//! workers. Nothing per job — no ids, arguments or error messages — ever
//! becomes a label, so the number of series stays bounded however many
//! jobs run.
//!
//! **Histograms, not summaries.** Waits and run times are Prometheus
//! histograms with fixed bounds
//! ([`DurationSummary::BUCKET_BOUNDS`], 0.5 ms to 5 min) read off the HDR
//! histograms the supervisor keeps: buckets of every function, queue,
//! pool and host can be added up and `histogram_quantile` works across
//! them, where a summary's precomputed quantiles cannot be aggregated.
//! The exact p50/p90/p99 stay in [`Inspection`] (and its JSON).
//!
//! What each [`Stats`] field is called here is in the table of
//! [`Pool::metrics_text`](crate::Pool::metrics_text).

use crate::control::inspection::{Inspection, WaitingJob, WorkerState, WorkerView};
use crate::metrics::durations::DurationSummary;
use crate::metrics::stats::{QueueStats, Stats};
use crate::metrics::tally::Outcomes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::Arc;

/// What one render encodes: a consistent inspection, and the counters.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub inspection: Inspection,
    pub stats: Stats,
}

/// Takes a snapshot of a pool; `None` once the pool is gone.
pub(crate) type Source = Arc<dyn Fn() -> Option<Snapshot> + Send + Sync>;

/// Which text format to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MetricsFormat {
    /// The Prometheus text format, version 0.0.4: what every scraper reads.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text (`# UNIT` lines, ends with `# EOF`).
    OpenMetrics,
}

impl MetricsFormat {
    /// The HTTP `Content-Type` of this format.
    ///
    /// ```
    /// use forkpool::MetricsFormat;
    /// assert!(MetricsFormat::Prometheus.content_type().starts_with("text/plain; version=0.0.4"));
    /// ```
    pub fn content_type(self) -> &'static str {
        match self {
            MetricsFormat::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            MetricsFormat::OpenMetrics => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
        }
    }

    /// The format to answer a request's `Accept` header with: OpenMetrics
    /// when the client says it takes it (as Prometheus does), else the
    /// Prometheus text format.
    ///
    /// ```
    /// use forkpool::MetricsFormat;
    /// let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
    /// assert_eq!(MetricsFormat::from_accept(Some(prometheus)), MetricsFormat::OpenMetrics);
    /// assert_eq!(MetricsFormat::from_accept(Some("*/*")), MetricsFormat::Prometheus);
    /// assert_eq!(MetricsFormat::from_accept(None), MetricsFormat::Prometheus);
    /// ```
    pub fn from_accept(accept: Option<&str>) -> MetricsFormat {
        let open = accept.is_some_and(|a| {
            a.split(',').any(|part| {
                let mut params = part.split(';').map(str::trim);
                let kind = params.next().unwrap_or("");
                let refused = params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if open {
            MetricsFormat::OpenMetrics
        } else {
            MetricsFormat::Prometheus
        }
    }
}

/// A pool's metrics as a `prometheus-client`
/// [`Collector`]: register it in your own [`Registry`] and every encode
/// of that registry takes a fresh snapshot of the pool. From
/// [`Pool::metrics_collector`](crate::Pool::metrics_collector).
///
/// It does not keep the pool alive: once the pool is gone it encodes
/// nothing. To tell several pools apart, register each in a sub-registry
/// with a label (`registry.sub_registry_with_label(("pool", "reports".into()))`).
pub struct MetricsCollector {
    source: Source,
}

impl MetricsCollector {
    pub(crate) fn new(source: Source) -> MetricsCollector {
        MetricsCollector { source }
    }
}

impl fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsCollector").finish_non_exhaustive()
    }
}

impl Collector for MetricsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        match (self.source)() {
            Some(snapshot) => encode(&snapshot, encoder),
            None => Ok(()),
        }
    }
}

/// One snapshot, owned, as a collector: what [`render`] registers.
#[derive(Debug)]
struct Once(Snapshot);

impl Collector for Once {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        encode(&self.0, encoder)
    }
}

/// `snapshot` as text in `format`.
pub(crate) fn render(snapshot: Snapshot, format: MetricsFormat) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Once(snapshot)));
    let mut out = String::new();
    // Writing into a String cannot fail, and every value encodes.
    let _ = match format {
        MetricsFormat::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        MetricsFormat::OpenMetrics => {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        }
    };
    out
}

/// How jobs end, as the `outcome` label: disjoint, so that a `sum` over
/// them is every job that ended. `other_failure` is a failure of none of
/// the named kinds (no worker could start, an unknown queue, ...).
fn outcomes(o: &Outcomes) -> [(&'static str, u64); 9] {
    let named = o.panicked + o.crashed + o.timed_out + o.codec_errors + o.errored + o.expired;
    [
        ("completed", o.completed),
        ("panicked", o.panicked),
        ("crashed", o.crashed),
        ("timed_out", o.timed_out),
        ("codec_error", o.codec_errors),
        ("errored", o.errored),
        ("expired", o.expired),
        ("other_failure", o.failed.saturating_sub(named)),
        ("cancelled", o.cancelled),
    ]
}

/// The pool-wide outcomes, from the counters.
fn stats_outcomes(s: &Stats) -> Outcomes {
    Outcomes {
        completed: s.completed,
        failed: s.failed,
        panicked: s.panicked,
        crashed: s.crashed,
        timed_out: s.timed_out,
        codec_errors: s.codec_errors,
        errored: s.errored,
        expired: s.expired,
        cancelled: s.cancelled,
    }
}

/// Writes metric families into one descriptor encoder.
struct Families<'a> {
    enc: DescriptorEncoder<'a>,
}

/// A label set: a few `name = value` pairs.
type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

impl Families<'_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(m)
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(m)
    }

    /// A family of counters (`gauge: false`) or gauges, one per label
    /// set; nothing when there are none.
    fn family<V, const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        gauge: bool,
        rows: &[(Labels<'_, N>, V)],
    ) -> fmt::Result
    where
        V: EncodeCounterValue + EncodeGaugeValue,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let kind = if gauge {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        let mut m = self.enc.encode_descriptor(name, help, unit, kind)?;
        for (labels, value) in rows {
            let mut series = m.encode_family(labels)?;
            if gauge {
                series.encode_gauge(value)?;
            } else {
                series.encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        Ok(())
    }

    /// A family of histograms in seconds, one per label set.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        rows: &[(&str, &DurationSummary)],
    ) -> fmt::Result {
        if rows.is_empty() {
            return Ok(());
        }
        let mut m =
            self.enc
                .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (value, d) in rows {
            // The encoder adds the buckets up itself: hand it each
            // bucket's own count, and it writes +Inf as the total count.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = d
                .buckets()
                .map(|(bound, le)| {
                    let own = le - below;
                    below = le;
                    (bound.as_secs_f64(), own)
                })
                .collect();
            m.encode_family(&[(label, *value)])?
                .encode_histogram::<NoLabelSet>(d.total.as_secs_f64(), d.count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Every metric of `snap`, in a fixed order.
fn encode(snap: &Snapshot, enc: DescriptorEncoder) -> fmt::Result {
    let (s, ins) = (&snap.stats, &snap.inspection);
    let mut f = Families { enc };

    // The pool's counters (`Stats`).
    f.counter(
        "forkpool_jobs_submitted",
        "Jobs accepted by the pool (a map item counts one, a retry again).",
        s.submitted,
    )?;
    f.counter(
        "forkpool_jobs_retried",
        "Attempts resubmitted by a retry policy.",
        s.retried,
    )?;
    let pool_outcomes: Vec<_> = outcomes(&stats_outcomes(s))
        .into_iter()
        .map(|(o, n)| ([("outcome", o)], n))
        .collect();
    f.family(
        "forkpool_jobs_finished",
        "Jobs that ended, by how.",
        None,
        false,
        &pool_outcomes,
    )?;
    f.counter(
        "forkpool_worker_restarts",
        "Workers started to replace one that exited.",
        s.worker_restarts,
    )?;
    f.counter(
        "forkpool_fork_server_restarts",
        "Fork servers started to replace one that died.",
        s.fork_server_restarts,
    )?;
    f.gauge(
        "forkpool_workers_live",
        "Worker processes alive (not counting a standby).",
        s.live_workers,
    )?;
    f.gauge(
        "forkpool_workers_standby",
        "Spare workers forked ahead of need.",
        s.standby_workers,
    )?;
    f.gauge(
        "forkpool_jobs_scheduled",
        "Jobs waiting for a time: a countdown, an ETA, a retry's backoff, a rate limit.",
        s.scheduled,
    )?;

    // Each queue's workers (`Stats::queues`).
    let per_queue = |get: fn(&QueueStats) -> u64| -> Vec<_> {
        s.queues
            .iter()
            .map(|q| ([("queue", q.name.as_str())], get(q)))
            .collect()
    };
    f.family(
        "forkpool_queue_workers",
        "Workers of the queue alive now.",
        None,
        true,
        &per_queue(|q| q.workers),
    )?;
    f.family(
        "forkpool_queue_workers_busy",
        "Workers of the queue running a job.",
        None,
        true,
        &per_queue(|q| q.busy),
    )?;
    f.family(
        "forkpool_queue_workers_min",
        "Workers the queue keeps when idle.",
        None,
        true,
        &per_queue(|q| q.min_workers),
    )?;
    f.family(
        "forkpool_queue_workers_max",
        "Most workers the queue may run.",
        None,
        true,
        &per_queue(|q| q.max_workers),
    )?;
    f.family(
        "forkpool_queue_grown",
        "Workers forked because jobs waited and every worker was busy.",
        None,
        false,
        &per_queue(|q| q.grown),
    )?;
    f.family(
        "forkpool_queue_shrunk",
        "Idle workers that left after the keep-alive or a resize.",
        None,
        false,
        &per_queue(|q| q.shrunk),
    )?;

    // Each queue's jobs, from the one inspection.
    let mut jobs = Vec::new();
    for q in &ins.queues {
        let items = |v: &[WaitingJob]| -> u64 { v.iter().map(|j| u64::from(j.items)).sum() };
        let scheduled: u64 = q.scheduled.iter().map(|j| u64::from(j.items)).sum();
        let running = ins.active.iter().filter(|a| a.queue == q.name).count() as u64;
        for (state, n) in [
            ("scheduled", scheduled),
            ("waiting", items(&q.waiting)),
            ("reserved", items(&q.reserved)),
            ("running", running),
        ] {
            jobs.push(([("queue", q.name.as_str()), ("state", state)], n));
        }
    }
    f.family(
        "forkpool_queue_jobs",
        "Jobs of the queue not finished, by where they are (scheduled, waiting, reserved by a busy worker, running).",
        None,
        true,
        &jobs,
    )?;
    let mut ended = Vec::new();
    for q in &ins.queues {
        for (o, n) in outcomes(&q.stats.outcomes) {
            ended.push(([("queue", q.name.as_str()), ("outcome", o)], n));
        }
    }
    f.family(
        "forkpool_queue_jobs_finished",
        "Jobs of the queue that ended, by how.",
        None,
        false,
        &ended,
    )?;
    let waits: Vec<_> = ins
        .queues
        .iter()
        .map(|q| (q.name.as_str(), &q.stats.waited))
        .collect();
    f.histograms(
        "forkpool_queue_wait",
        "How long the queue's jobs waited for a worker once they could start.",
        "queue",
        &waits,
    )?;
    let runs: Vec<_> = ins
        .queues
        .iter()
        .map(|q| (q.name.as_str(), &q.stats.ran))
        .collect();
    f.histograms(
        "forkpool_queue_run",
        "How long the queue's jobs ran.",
        "queue",
        &runs,
    )?;

    // Each function's jobs.
    let mut ended = Vec::new();
    for func in &ins.functions {
        for (o, n) in outcomes(&func.stats.outcomes) {
            ended.push(([("function", func.name), ("outcome", o)], n));
        }
    }
    f.family(
        "forkpool_function_jobs_finished",
        "Jobs of the function that ended, by how.",
        None,
        false,
        &ended,
    )?;
    let waits: Vec<_> = ins
        .functions
        .iter()
        .map(|func| (func.name, &func.stats.waited))
        .collect();
    f.histograms(
        "forkpool_function_wait",
        "How long the function's jobs waited for a worker once they could start.",
        "function",
        &waits,
    )?;
    let runs: Vec<_> = ins
        .functions
        .iter()
        .map(|func| (func.name, &func.stats.ran))
        .collect();
    f.histograms(
        "forkpool_function_run",
        "How long the function's jobs ran.",
        "function",
        &runs,
    )?;

    // Each live worker: its series go with it.
    let workers: Vec<_> = ins
        .workers
        .iter()
        .filter(|w| w.pid != 0 && w.state != WorkerState::Exited)
        .map(|w| (w, w.pid.to_string()))
        .collect();
    fn rows<'a, V>(
        workers: &'a [(&WorkerView, String)],
        get: impl Fn(&WorkerView) -> Option<V>,
    ) -> Vec<(Labels<'a, 2>, V)> {
        workers
            .iter()
            .filter_map(|(w, pid)| {
                get(w).map(|v| ([("queue", w.queue.as_str()), ("pid", pid.as_str())], v))
            })
            .collect()
    }
    f.family(
        "forkpool_worker_jobs_done",
        "Jobs the worker process has answered.",
        None,
        false,
        &rows(&workers, |w| Some(w.jobs_done)),
    )?;
    f.family(
        "forkpool_worker_resident_memory",
        "The worker's resident memory.",
        Some(&Unit::Bytes),
        true,
        &rows(&workers, |w| w.rss_bytes),
    )?;
    f.family(
        "forkpool_worker_uptime",
        "How long since the worker was forked.",
        Some(&Unit::Seconds),
        true,
        &rows(&workers, |w| Some(w.uptime.as_secs_f64())),
    )?;
    Ok(())
}
