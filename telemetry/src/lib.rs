//! Tracing for every Berth process: logs on standard error (filtered by `BERTH_LOG`),
//! and OpenTelemetry spans, exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set. Trace context crosses processes as a W3C `traceparent`: in HTTP headers
//! into the gateway, in gRPC metadata on calls from nodes, and inside the assignment
//! a node receives, so that a node's work on a deploy is part of the deploy's trace.

use std::collections::HashMap;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// The W3C trace context header and metadata key.
pub const TRACEPARENT: &str = "traceparent";

/// Keeps the tracer provider; dropping it flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs logging and tracing for a process named `service`. Log lines at
/// `default_level` and above go to standard error unless `BERTH_LOG` says otherwise;
/// spans are always made (so trace ids propagate) and exported only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service: &'static str, default_level: &str) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let mut problem = None;
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => problem = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    global::set_tracer_provider(provider.clone());
    let logs = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| default_level.into());
    let _ = tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(logs))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(LevelFilter::INFO),
        )
        .try_init();
    if let Some(problem) = problem {
        tracing::warn!(%problem, "spans will not be exported");
    }
    Telemetry { provider }
}

/// The `traceparent` of `span`, if it belongs to a trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span `traceparent` names. A malformed value is
/// ignored: the span starts a trace of its own.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

/// The trace id in a `traceparent` (`00-TRACEID-SPANID-FLAGS`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Puts the current span's trace context in a gRPC request's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(value) = traceparent(&tracing::Span::current())
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_str()).ok())
    {
        metadata.insert(TRACEPARENT, value);
    }
}

/// The trace context a gRPC request carries, if any.
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_read_from_traceparents() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
    }
}
