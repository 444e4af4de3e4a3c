//! Prometheus metrics, served on `/metrics` in the OpenMetrics text format: the API's
//! requests (by route template, never by raw path, so tenants' names do not become
//! label values), the node API's counters, and the pool's nodes and placed replicas.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use berth_telemetry as telemetry;

use crate::{ApiError, Gateway};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// A tenant's name is a label only where it comes from a verified token (tenants are
/// made by admins), never from a path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    tenant: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The gateway's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    nodes: Family<StateLabels, Gauge>,
    connected: Gauge,
    reports: Family<OutcomeLabels, Gauge>,
    joins: Gauge,
    liveness: Family<OutcomeLabels, Gauge>,
    leading: Gauge,
    witness_intact: Gauge,
    witness_anchored: Gauge,
    rate_limited: Family<RateLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "API requests by method, route template and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an API request, by route template",
            latency.clone(),
        );
        let nodes = Family::<StateLabels, Gauge>::default();
        registry.register("nodes", "Nodes in the pool by state", nodes.clone());
        let connected = Gauge::default();
        registry.register(
            "nodes_connected",
            "Node agents with an open assignment stream to this process",
            connected.clone(),
        );
        let reports = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "node_reports",
            "Signed status reports from nodes since start, accepted or refused",
            reports.clone(),
        );
        let joins = Gauge::default();
        registry.register("node_joins", "Nodes that joined since start", joins.clone());
        let liveness = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "failure_detector",
            "Since start: heartbeats accepted, nodes found suspect, nodes declared dead, and detector ticks that came late (leases extended)",
            liveness.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "allocator_leading",
            "1 when this process leads the allocators (serves the node API, runs the failure detector), 0 when it stands by",
            leading.clone(),
        );
        let witness_intact = Gauge::default();
        witness_intact.set(-1);
        registry.register(
            "ledger_witness_intact",
            "1 when the witness's last round found the audit chain holding its last anchor, 0 when it found it broken (-1 before its first round)",
            witness_intact.clone(),
        );
        let witness_anchored = Gauge::default();
        registry.register(
            "ledger_witness_anchored_entry",
            "The audit ledger entry the witness last anchored",
            witness_anchored.clone(),
        );
        let rate_limited = Family::<RateLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused 429 because a tenant was over one of its rates (request, deploy, attenuation)",
            rate_limited.clone(),
        );
        Arc::new(Self {
            rate_limited,
            witness_intact,
            witness_anchored,
            registry,
            requests,
            latency,
            nodes,
            connected,
            reports,
            joins,
            liveness,
            leading,
        })
    }
}

impl Metrics {
    /// Counts a request of `tenant` refused for being over its `kind` rate.
    pub(crate) fn rate_limited(&self, tenant: &str, kind: &str) {
        self.rate_limited
            .get_or_create(&RateLabels {
                tenant: tenant.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// Middleware: counts and times every request under its route template, and runs it
/// in a span that continues the caller's trace (a `traceparent` header) and is named
/// in the response's `traceparent`.
pub(crate) async fn track(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let started = Instant::now();
    let metrics = request
        .app_data::<web::Data<Gateway>>()
        .map(|gw| gw.metrics.clone());
    // A label takes a bounded set of values: a method no client of this API sends is
    // `other`, so that made-up methods cannot grow the series without bound.
    let method = match request.method().as_str() {
        m @ ("GET" | "PUT" | "POST" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    // The route template, known before the handler runs, names the span.
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = request
        .headers()
        .get(telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        telemetry::set_parent(&span, parent);
    }
    let mut response = next.call(request).instrument(span.clone()).await?;
    span.record("http.response.status_code", response.status().as_u16());
    if let Some(value) = telemetry::traceparent(&span)
        .and_then(|v| actix_web::http::header::HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("traceparent"),
            value,
        );
    }
    if let Some(metrics) = metrics {
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                route: route.clone(),
                status: response.status().as_u16(),
            })
            .inc();
        metrics
            .latency
            .get_or_create(&RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// `GET /metrics`.
pub(crate) async fn metrics(gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    let m = &gw.metrics;
    let nodes = gw.allocator.nodes().await?;
    for state in ["active", "cordoned", "draining", "down"] {
        let count = nodes
            .iter()
            .filter(|n| {
                serde_json::to_value(n.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    == Some(state.to_owned())
            })
            .count();
        m.nodes
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    if let Some(witness) = &gw.witness {
        let health = witness.health();
        m.witness_intact.set(
            match (
                health.rounds.load(Ordering::Relaxed),
                health.broken.load(Ordering::Relaxed),
            ) {
                (0, _) => -1,
                (_, true) => 0,
                (_, false) => 1,
            },
        );
        m.witness_anchored
            .set(i64::try_from(health.anchored_seq.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }
    let stats = gw.nodes.stats();
    m.connected.set(stats.connected.load(Ordering::Relaxed));
    m.leading
        .set(i64::from(stats.leading.load(Ordering::Relaxed)));
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (outcome, counter) in [
        ("accepted", &stats.reports_accepted),
        ("refused", &stats.reports_refused),
    ] {
        m.reports
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .set(as_i64(counter.load(Ordering::Relaxed)));
    }
    m.joins.set(as_i64(stats.joins.load(Ordering::Relaxed)));
    for (outcome, counter) in [
        ("heartbeats", &stats.heartbeats),
        ("suspected", &stats.suspected),
        ("declared_dead", &stats.declared_dead),
        ("late_ticks", &stats.detector_late),
    ] {
        m.liveness
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .set(as_i64(counter.load(Ordering::Relaxed)));
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry)
        .map_err(|e| ApiError::internal(format!("cannot encode metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text))
}
