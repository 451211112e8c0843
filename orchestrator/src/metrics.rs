//! The server's Prometheus metrics: the registry, its families, and where
//! each is measured. `GET /metrics` serves them (see `http::metrics`).
//!
//! The crate is `prometheus-client`, the Prometheus org's own Rust client.
//! It is served in the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), which every scraper reads, rather than
//! the crate's OpenMetrics default: in OpenMetrics a counter's `# TYPE`
//! line names it without `_total`, which a 0.0.4 parser (Python's stock
//! `prometheus_client.parser`, tried here) reads as an untyped sample.
//!
//! What is measured, and where (the narrowest point that sees the event
//! once, so that no handler grows a line of bookkeeping):
//!
//! | family | type | measured in |
//! |---|---|---|
//! | `sbx_sandboxes{state}` | gauge | at scrape time, from the store ([`Census`]) |
//! | `sbx_warm_pool_ready`, `sbx_warm_pool_size` | gauge | at scrape time, from the pool ([`Census`]) |
//! | `sbx_create_duration_seconds{runtime,source}` | histogram | `Manager::create`, successes |
//! | `sbx_delete_duration_seconds{runtime}` | histogram | `Manager::delete`, successes |
//! | `sbx_auto_resume_duration_seconds{runtime}` | histogram | `Manager::agent`, a stopped or paused sandbox woken for a call |
//! | `sbx_storage_pool_bytes`, `sbx_storage_used_bytes`, `sbx_storage_promised_bytes` | gauge | at scrape time, from the pool and the store ([`Census`]) |
//! | `sbx_execs_total{mode}`, `sbx_exec_duration_seconds{mode}` | counter, histogram | the exec bridge, when the agent answers |
//! | `sbx_file_upload_bytes_total{route}`, `sbx_file_download_bytes_total{route}` | counter | the files/archive bridge bodies, frame by frame |
//! | `sbx_egress_decisions_total{decision}` | counter | the egress proxy's observer ([`CountedEgress`]) |
//! | `sbx_errors_total{error_code}` | counter | one layer that every response passes, by the code its error body carries |
//!
//! Why there:
//!
//! - **Gauges are read, not tracked.** How many sandboxes are in each state
//!   is one `GROUP BY` on the store at scrape time, and the pool's level is
//!   the length of its queue. Both are the source of truth itself, so they
//!   cannot drift: a counter kept beside each transition would miss the
//!   ones made at recovery, by a crash, or by a transition that lost its
//!   race, and would start from zero after a restart while the sandboxes
//!   did not. A scrape every 15 s costs one scan of the sandboxes table,
//!   off the async workers (about 1.6 ms over 5,000 rows, measured with
//!   SQLite in memory); tracking would cost every transition a write.
//!   Pooled sandboxes are left out of the
//!   states (no client can see them) and counted by the pool gauges.
//! - **Create and delete** are timed in the manager, around the whole
//!   operation (a claim from the pool, or a start; a teardown), without the
//!   HTTP around it: this is what the runtime and the pool cost. `source`
//!   (`pool` or `cold`) splits the two populations (under a millisecond and
//!   tens of milliseconds), which one histogram would blur. `runtime` is
//!   constant per server, but tells youki's figures from Docker's where
//!   several servers are scraped together. Failures are not timed: they
//!   are counted by their error code, and a 400 answered in microseconds
//!   would pull the quantiles down.
//! - **Exec** is timed from handing the call to the agent to the agent's
//!   answer head: for a buffered exec the command's whole run, for a
//!   streamed one (`mode="stream"`) the time until it started. No runtime
//!   label: exec goes through the agent's socket the same way on both
//!   runtimes.
//! - **File bytes** are counted as the body streams through the bridge,
//!   frame by frame, never buffered: an upload counts what the agent read
//!   of it, a download (only a successful one, not an error body) what was
//!   sent on; a client that leaves half-way counts what moved.
//! - **Egress** decisions are counted where they are audited: every
//!   decision reaches the proxy's observer, closings of tunnels that a
//!   policy change no longer allows included (as `denied`, as the audit
//!   trail records them with 403).
//! - **Errors** are counted by their `error_code` once, whether the server
//!   made the error (`http::error`, the one place errors become responses)
//!   or passed on an agent's error body (`http::bridged`): both put the
//!   code in the response's extensions, and one layer counts it. An error
//!   that no client waited for (the work detached, see `http::detached`)
//!   is never answered and not counted.
//! - **Cost.** Measured here (release, a throwaway loop, the machine
//!   loaded by other builds): timing an exec and recording it costs about
//!   0.22 µs (two label lookups, a counter, a histogram), and the
//!   error-counting layer about 0.4–0.55 µs per request (axum's `from_fn`
//!   boxes a future): under 1 µs on an exec whose round trip is 1.4–1.6 ms,
//!   about 0.05 %, below what an end-to-end A/B could resolve.
//!
//! No label takes a sandbox id, a path or a token: every label has a
//! handful of values fixed here or by the API, so the series count is
//! bounded whatever clients do.

use crate::egress::{EgressEvent, EgressObserver};
use axum::body::Body;
use axum::http::{header, Method, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sbx_api::{ErrorCode, SandboxState, NDJSON};
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Create and delete, in seconds: a pool claim takes well under a
/// millisecond, a cold youki create 20–70 ms (the cgroup v1 floor is about
/// 11 ms), a Docker create 0.3 s, and the start timeout is 60 s.
const LIFECYCLE_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// Exec, in seconds: `true` answers in 1–2 ms (BENCHMARKS.md), so that
/// range is cut finely; beyond it, a buffered exec lasts as long as its
/// command.
const EXEC_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0,
    60.0, 300.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn lifecycle_histogram() -> Histogram {
    Histogram::new(LIFECYCLE_BUCKETS)
}

fn exec_histogram() -> Histogram {
    Histogram::new(EXEC_BUCKETS)
}

/// Where a created sandbox came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateSource {
    /// Claimed from the warm pool.
    Pool,
    /// Started for the request.
    Cold,
}

impl CreateSource {
    fn as_str(self) -> &'static str {
        match self {
            CreateSource::Pool => "pool",
            CreateSource::Cold => "cold",
        }
    }
}

/// How an exec answers: whole, or as NDJSON events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecMode {
    Buffered,
    Stream,
}

impl ExecMode {
    const ALL: [ExecMode; 2] = [ExecMode::Buffered, ExecMode::Stream];

    fn as_str(self) -> &'static str {
        match self {
            ExecMode::Buffered => "buffered",
            ExecMode::Stream => "stream",
        }
    }

    /// The mode the agent chose, from its answer's content type.
    fn of(response: &Response<Body>) -> Self {
        let ndjson = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with(NDJSON));
        if ndjson {
            ExecMode::Stream
        } else {
            ExecMode::Buffered
        }
    }
}

/// The bridged routes whose bodies are file contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileRoute {
    /// `/files?path=`: one file's bytes.
    Files,
    /// `/archive?path=`: a tar.
    Archive,
}

impl FileRoute {
    const ALL: [FileRoute; 2] = [FileRoute::Files, FileRoute::Archive];

    fn as_str(self) -> &'static str {
        match self {
            FileRoute::Files => "files",
            FileRoute::Archive => "archive",
        }
    }
}

/// Which way a file call moves contents, if it moves any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// `PUT`: the request body goes into the sandbox.
    Upload(FileRoute),
    /// `GET`: the response body comes out of it.
    Download(FileRoute),
}

impl Transfer {
    /// The transfer a bridged call makes: `agent_path` is the agent's path
    /// and query (`/files?path=/x`). Everything but `GET` and `PUT` of
    /// `/files` and `/archive` moves no contents (`/files/stat`, a delete).
    pub fn of(method: &Method, agent_path: &str) -> Option<Self> {
        let path = agent_path.split('?').next().unwrap_or_default();
        let route = match path {
            "/files" => FileRoute::Files,
            "/archive" => FileRoute::Archive,
            _ => return None,
        };
        match *method {
            Method::PUT => Some(Transfer::Upload(route)),
            Method::GET => Some(Transfer::Download(route)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CreateLabels {
    runtime: &'static str,
    source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ExecLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    error_code: Code,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// An [`ErrorCode`] as a label value: its wire spelling (`not_found`),
/// made only when scraped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Code(ErrorCode);

impl EncodeLabelValue for Code {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// What the gauges report, read at scrape time (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Clients' sandboxes per state; a state missing here has none.
    pub sandboxes: Vec<(SandboxState, u64)>,
    /// Pooled sandboxes ready to be claimed.
    pub pool_ready: u64,
    /// How many the pool keeps (`--warm-pool`).
    pub pool_size: u64,
    /// The storage pool's size, use, and promises (see
    /// `sandbox::storage`).
    pub storage_pool_bytes: u64,
    pub storage_used_bytes: u64,
    pub storage_promised_bytes: u64,
}

/// The registry and every family; one per server, shared (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The server's runtime (`youki`, `docker`): the `runtime` label.
    runtime: &'static str,
    create_duration: HistogramFamily<CreateLabels>,
    delete_duration: HistogramFamily<RuntimeLabels>,
    auto_resume_duration: HistogramFamily<RuntimeLabels>,
    execs: Family<ExecLabels, Counter>,
    exec_duration: HistogramFamily<ExecLabels>,
    upload_bytes: Family<RouteLabels, Counter>,
    download_bytes: Family<RouteLabels, Counter>,
    egress_decisions: Family<DecisionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
}

impl Metrics {
    /// The families of a server whose sandboxes run on `runtime`.
    pub fn new(runtime: &'static str) -> Self {
        let mut registry = Registry::default();
        let create_duration =
            HistogramFamily::<CreateLabels>::new_with_constructor(lifecycle_histogram as fn() -> _);
        registry.register(
            "sbx_create_duration_seconds",
            "Time to create a sandbox, from the request reaching the manager to the sandbox running, by runtime and by source (pool: claimed from the warm pool; cold: started)",
            create_duration.clone(),
        );
        let delete_duration = HistogramFamily::<RuntimeLabels>::new_with_constructor(
            lifecycle_histogram as fn() -> _,
        );
        registry.register(
            "sbx_delete_duration_seconds",
            "Time to delete a sandbox and remove every trace of it, by runtime",
            delete_duration.clone(),
        );
        let auto_resume_duration = HistogramFamily::<RuntimeLabels>::new_with_constructor(
            lifecycle_histogram as fn() -> _,
        );
        registry.register(
            "sbx_auto_resume_duration_seconds",
            "Time a call waited for its stopped or paused sandbox to be woken (lifecycle.auto_resume), by runtime",
            auto_resume_duration.clone(),
        );
        let execs = Family::<ExecLabels, Counter>::default();
        registry.register(
            "sbx_execs",
            "Execs answered by a sandbox's agent, by mode (buffered or stream)",
            execs.clone(),
        );
        let exec_duration =
            HistogramFamily::<ExecLabels>::new_with_constructor(exec_histogram as fn() -> _);
        registry.register(
            "sbx_exec_duration_seconds",
            "Time from forwarding an exec to the agent's answer: the whole command when buffered, until it started when streamed",
            exec_duration.clone(),
        );
        let upload_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "sbx_file_upload_bytes",
            "Bytes uploaded into sandboxes through the files and archive routes, as streamed",
            upload_bytes.clone(),
        );
        let download_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "sbx_file_download_bytes",
            "Bytes downloaded from sandboxes through the files and archive routes, as streamed",
            download_bytes.clone(),
        );
        let egress_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "sbx_egress_decisions",
            "Decisions of the egress proxy (allowed or denied; closing a tunnel a policy change no longer allows counts as denied)",
            egress_decisions.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "sbx_errors",
            "Error responses, by the error_code of their body (the server's own and those passed on from agents)",
            errors.clone(),
        );
        // Known label values start at zero, so that every family is there
        // and a rate over it works from the first scrape instead of from
        // the first event.
        for source in [CreateSource::Pool, CreateSource::Cold] {
            create_duration.get_or_create_owned(&CreateLabels {
                runtime,
                source: source.as_str(),
            });
        }
        delete_duration.get_or_create_owned(&RuntimeLabels { runtime });
        auto_resume_duration.get_or_create_owned(&RuntimeLabels { runtime });
        for mode in ExecMode::ALL {
            let labels = ExecLabels {
                mode: mode.as_str(),
            };
            execs.get_or_create_owned(&labels);
            exec_duration.get_or_create_owned(&labels);
        }
        for route in FileRoute::ALL {
            let labels = RouteLabels {
                route: route.as_str(),
            };
            upload_bytes.get_or_create_owned(&labels);
            download_bytes.get_or_create_owned(&labels);
        }
        for decision in ["allowed", "denied"] {
            egress_decisions.get_or_create_owned(&DecisionLabels { decision });
        }
        for code in ErrorCode::ALL {
            errors.get_or_create_owned(&ErrorLabels {
                error_code: Code(code),
            });
        }
        Self {
            registry,
            runtime,
            create_duration,
            delete_duration,
            auto_resume_duration,
            execs,
            exec_duration,
            upload_bytes,
            download_bytes,
            egress_decisions,
            errors,
        }
    }

    /// A sandbox was created in `took`.
    pub fn created(&self, source: CreateSource, took: Duration) {
        let labels = CreateLabels {
            runtime: self.runtime,
            source: source.as_str(),
        };
        self.create_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A sandbox was deleted in `took`.
    pub fn deleted(&self, took: Duration) {
        self.delete_duration
            .get_or_create(&RuntimeLabels {
                runtime: self.runtime,
            })
            .observe(took.as_secs_f64());
    }

    /// A call waited `took` for its sandbox to be woken.
    pub fn auto_resumed(&self, took: Duration) {
        self.auto_resume_duration
            .get_or_create(&RuntimeLabels {
                runtime: self.runtime,
            })
            .observe(took.as_secs_f64());
    }

    /// An agent answered an exec (`response`, its head) `took` after it
    /// was forwarded.
    pub fn exec_answered(&self, response: &Response<Body>, took: Duration) {
        let labels = ExecLabels {
            mode: ExecMode::of(response).as_str(),
        };
        self.execs.get_or_create(&labels).inc();
        self.exec_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The egress proxy decided.
    pub fn egress_decided(&self, allowed: bool) {
        let decision = if allowed { "allowed" } else { "denied" };
        self.egress_decisions
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    /// A response carried an error body with `code`.
    pub fn error_answered(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                error_code: Code(code),
            })
            .inc();
    }

    /// Counts the contents a bridged call moves, if it moves any: the
    /// request body of an upload, the response body of a successful
    /// download.
    pub fn file_bytes(&self, transfer: Option<Transfer>) -> FileBytes {
        let counter = |family: &Family<RouteLabels, Counter>, route: FileRoute| {
            family.get_or_create_owned(&RouteLabels {
                route: route.as_str(),
            })
        };
        match transfer {
            Some(Transfer::Upload(route)) => FileBytes {
                upload: Some(counter(&self.upload_bytes, route)),
                download: None,
            },
            Some(Transfer::Download(route)) => FileBytes {
                upload: None,
                download: Some(counter(&self.download_bytes, route)),
            },
            None => FileBytes::default(),
        }
    }

    /// The exposition: every family, and the gauges from `census`.
    pub fn encode(&self, census: &Census) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        prometheus_text::encode(&mut text, &census_registry(census))
            .expect("writing to a String cannot fail");
        text
    }
}

/// The scrape-time gauges, in a registry of their own made for one scrape:
/// they are a function of `census` alone, so two scrapes at once cannot
/// mix their values.
fn census_registry(census: &Census) -> Registry {
    let mut registry = Registry::default();
    let sandboxes = Family::<StateLabels, Gauge>::default();
    for state in SandboxState::ALL {
        let count = census
            .sandboxes
            .iter()
            .filter(|(counted, _)| *counted == state)
            .map(|(_, count)| *count)
            .sum::<u64>();
        sandboxes
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(
        "sbx_sandboxes",
        "Sandboxes by state, read from the store when scraped (warm-pool sandboxes not included)",
        sandboxes,
    );
    let gauge = |value: u64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge
    };
    registry.register(
        "sbx_warm_pool_ready",
        "Warm-pool sandboxes started and ready to be claimed",
        gauge(census.pool_ready),
    );
    registry.register(
        "sbx_warm_pool_size",
        "Warm-pool sandboxes the server keeps ready (--warm-pool)",
        gauge(census.pool_size),
    );
    registry.register(
        "sbx_storage_pool_bytes",
        "Size of the storage pool that sandbox disks and snapshots live in",
        gauge(census.storage_pool_bytes),
    );
    registry.register(
        "sbx_storage_used_bytes",
        "Bytes the storage pool holds now",
        gauge(census.storage_used_bytes),
    );
    registry.register(
        "sbx_storage_promised_bytes",
        "Disk space promised out of the storage pool: the disk limits of sandboxes that can write, plus what stopped sandboxes and snapshots hold",
        gauge(census.storage_promised_bytes),
    );
    registry
}

/// The counters of one bridged call's file contents (see
/// [`Metrics::file_bytes`]); empty for calls that move none.
#[derive(Debug, Default)]
pub struct FileBytes {
    upload: Option<Counter>,
    download: Option<Counter>,
}

impl FileBytes {
    /// The request body, counted as it is read if this is an upload.
    pub fn request(&self, body: Body) -> Body {
        match &self.upload {
            Some(counter) => Body::new(Counted::new(body, counter.clone())),
            None => body,
        }
    }

    /// The response, its body counted as it is sent if this is a
    /// successful download.
    pub fn response(&self, response: Response<Body>) -> Response<Body> {
        match &self.download {
            Some(counter) if response.status().is_success() => {
                response.map(|body| Body::new(Counted::new(body, counter.clone())))
            }
            _ => response,
        }
    }
}

/// A body that adds the length of every data frame that passes to a
/// counter: streams stay streams, and what is counted is what moved.
#[derive(Debug)]
struct Counted<B> {
    inner: B,
    counter: Counter,
}

impl<B> Counted<B> {
    fn new(inner: B, counter: Counter) -> Self {
        Self { inner, counter }
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts each egress decision, then hands it on (to the audit trail).
#[derive(Debug)]
pub struct CountedEgress {
    metrics: Arc<Metrics>,
    next: Arc<dyn EgressObserver>,
}

impl CountedEgress {
    pub fn new(metrics: Arc<Metrics>, next: Arc<dyn EgressObserver>) -> Self {
        Self { metrics, next }
    }
}

impl EgressObserver for CountedEgress {
    fn observe(&self, event: EgressEvent) {
        self.metrics.egress_decided(event.allowed);
        self.next.observe(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The value of the one sample `series` (name and labels, as written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
    }

    #[test]
    fn file_transfers_are_told_by_route_and_method() {
        let cases = [
            (
                Method::PUT,
                "/files?path=/x",
                Some(Transfer::Upload(FileRoute::Files)),
            ),
            (
                Method::GET,
                "/files?path=/x",
                Some(Transfer::Download(FileRoute::Files)),
            ),
            (
                Method::PUT,
                "/archive?path=/d",
                Some(Transfer::Upload(FileRoute::Archive)),
            ),
            (
                Method::GET,
                "/archive",
                Some(Transfer::Download(FileRoute::Archive)),
            ),
            (Method::DELETE, "/files?path=/x", None),
            (Method::GET, "/files/stat?path=/x", None),
            (Method::GET, "/files/list?path=/", None),
            (Method::POST, "/files/mkdir", None),
            (Method::GET, "/processes", None),
            (Method::GET, "/filesystem", None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(Transfer::of(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let metrics = Metrics::new("youki");
        metrics.created(CreateSource::Pool, Duration::from_micros(700));
        metrics.created(CreateSource::Cold, Duration::from_millis(40));
        metrics.deleted(Duration::from_millis(15));
        metrics.error_answered(ErrorCode::NotFound);
        let census = Census {
            sandboxes: vec![(SandboxState::Running, 3), (SandboxState::Failed, 1)],
            pool_ready: 2,
            pool_size: 4,
            storage_pool_bytes: 40 << 30,
            storage_used_bytes: 1 << 30,
            storage_promised_bytes: 20 << 30,
        };
        let text = metrics.encode(&census);
        let expected = [
            ("sbx_create_duration_seconds", "histogram"),
            ("sbx_delete_duration_seconds", "histogram"),
            ("sbx_execs_total", "counter"),
            ("sbx_exec_duration_seconds", "histogram"),
            ("sbx_file_upload_bytes_total", "counter"),
            ("sbx_file_download_bytes_total", "counter"),
            ("sbx_egress_decisions_total", "counter"),
            ("sbx_errors_total", "counter"),
            ("sbx_sandboxes", "gauge"),
            ("sbx_warm_pool_ready", "gauge"),
            ("sbx_warm_pool_size", "gauge"),
            ("sbx_auto_resume_duration_seconds", "histogram"),
            ("sbx_storage_pool_bytes", "gauge"),
            ("sbx_storage_used_bytes", "gauge"),
            ("sbx_storage_promised_bytes", "gauge"),
        ];
        for (name, kind) in expected {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        let type_lines = text
            .lines()
            .filter(|line| line.starts_with("# TYPE"))
            .count();
        assert_eq!(type_lines, expected.len(), "{text}");
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker: {text}");

        let at = |series: &str| sample(&text, series);
        assert_eq!(at(r#"sbx_sandboxes{state="running"}"#), Some(3.0));
        assert_eq!(at(r#"sbx_sandboxes{state="failed"}"#), Some(1.0));
        assert_eq!(at(r#"sbx_sandboxes{state="creating"}"#), Some(0.0));
        assert_eq!(at(r#"sbx_sandboxes{state="deleting"}"#), Some(0.0));
        assert_eq!(at("sbx_warm_pool_ready"), Some(2.0));
        assert_eq!(at("sbx_warm_pool_size"), Some(4.0));
        assert_eq!(at(r#"sbx_errors_total{error_code="not_found"}"#), Some(1.0));
        assert_eq!(
            at(r#"sbx_egress_decisions_total{decision="denied"}"#),
            Some(0.0)
        );
        let pool =
            r#"sbx_create_duration_seconds_bucket{runtime="youki",source="pool",le="0.001"}"#;
        assert_eq!(at(pool), Some(1.0), "{text}");
        let cold = r#"sbx_create_duration_seconds_bucket{runtime="youki",source="cold",le="0.03"}"#;
        assert_eq!(at(cold), Some(0.0), "{text}");
        assert_eq!(
            at(r#"sbx_create_duration_seconds_count{runtime="youki",source="cold"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn buckets_rise() {
        for buckets in [&LIFECYCLE_BUCKETS[..], &EXEC_BUCKETS[..]] {
            assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[tokio::test]
    async fn bodies_are_counted_as_they_stream_and_only_file_contents() {
        let metrics = Metrics::new("youki");
        let upload = metrics.file_bytes(Transfer::of(&Method::PUT, "/files?path=/x"));
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let body = upload.request(Body::from_stream(futures_util::stream::iter(chunks)));
        assert_eq!(upload.response(Response::new(Body::empty())).status(), 200);
        let read = body.collect().await.expect("a body").to_bytes();
        assert_eq!(&read[..], b"hello world");

        let download = metrics.file_bytes(Transfer::of(&Method::GET, "/archive?path=/d"));
        let ok = download.response(Response::new(Body::from("tar bytes")));
        ok.into_body().collect().await.expect("a body");
        let mut failed = Response::new(Body::from(r#"{"error_code":"not_found"}"#));
        *failed.status_mut() = axum::http::StatusCode::NOT_FOUND;
        let failed = download.response(failed);
        failed.into_body().collect().await.expect("a body");

        let other = metrics.file_bytes(Transfer::of(&Method::GET, "/files/stat?path=/x"));
        other
            .request(Body::from("not counted"))
            .collect()
            .await
            .expect("a body");

        let text = metrics.encode(&Census::default());
        let at = |series: &str| sample(&text, series);
        assert_eq!(
            at(r#"sbx_file_upload_bytes_total{route="files"}"#),
            Some(11.0)
        );
        assert_eq!(
            at(r#"sbx_file_upload_bytes_total{route="archive"}"#),
            Some(0.0)
        );
        assert_eq!(
            at(r#"sbx_file_download_bytes_total{route="archive"}"#),
            Some(9.0)
        );
        assert_eq!(
            at(r#"sbx_file_download_bytes_total{route="files"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn exec_mode_is_read_from_the_answer() {
        let metrics = Metrics::new("youki");
        let buffered = Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::empty())
            .expect("a response");
        let streamed = Response::builder()
            .header(header::CONTENT_TYPE, NDJSON)
            .body(Body::empty())
            .expect("a response");
        metrics.exec_answered(&buffered, Duration::from_micros(1200));
        metrics.exec_answered(&streamed, Duration::from_micros(800));
        metrics.exec_answered(&streamed, Duration::from_micros(800));
        let text = metrics.encode(&Census::default());
        let at = |series: &str| sample(&text, series);
        assert_eq!(at(r#"sbx_execs_total{mode="buffered"}"#), Some(1.0));
        assert_eq!(at(r#"sbx_execs_total{mode="stream"}"#), Some(2.0));
        assert_eq!(
            at(r#"sbx_exec_duration_seconds_bucket{mode="buffered",le="0.0015"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(r#"sbx_exec_duration_seconds_bucket{mode="buffered",le="0.001"}"#),
            Some(0.0)
        );
    }
}
