//! Logging, tracing and metrics: `tracing` to stderr (text or JSON, filtered by `RUST_LOG`
//! or `telemetry.log_filter`), spans exported over OTLP/gRPC when
//! `telemetry.otlp_endpoint` is set, Prometheus metrics ([`Metrics`]) served by the admin
//! listener ([`serve_admin`]).

mod admin;
mod metrics;

use std::{io::IsTerminal, sync::OnceLock};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub use admin::{AdminError, serve_admin};
pub use metrics::{CaBreakerSource, Metrics, MetricsError};

use crate::{api::layers::TraceParent, config::TelemetrySettings};

/// The span exporter, kept to flush it at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
/// With `otlp_endpoint` set it must run inside a Tokio runtime (the exporter's gRPC
/// client lives there); an exporter that cannot be built is logged and skipped.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, otlp_error) = match settings.otlp_endpoint.as_deref() {
        Some(endpoint) => match otlp_provider(endpoint, &settings.service_name) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer(settings.service_name.clone()))
    });
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(
            settings
                .json
                .then(|| fmt::layer().json().with_writer(std::io::stderr)),
        )
        // Colour only for a person at a terminal: piped into a file, journald or a log
        // shipper, escape codes are noise.
        .with((!settings.json).then(|| {
            fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
        }))
        .try_init();
    // Err: a subscriber is already installed (tests, embedding); keep it.
    if result.is_ok() {
        if let Some(p) = provider {
            let _ = PROVIDER.set(p);
        }
    }
    if let Some(e) = otlp_error {
        tracing::error!(error = %e, "telemetry.otlp_endpoint: exporter not started; spans are not exported");
    }
}

/// Flushes and stops span export (call once at shutdown).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

fn otlp_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build())
}

/// Makes the caller's W3C trace context the parent of `span`, so exported spans join the
/// caller's trace. No effect unless spans are exported.
pub fn set_remote_parent(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    // Err: no OpenTelemetry layer is installed; nothing to parent.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn otlp_exporter_builds_without_a_collector() {
        // Export is lazy: building must not need the collector to be up.
        let p = otlp_provider("http://127.0.0.1:9", "certbroker-test").expect("builds");
        let _ = p.shutdown();
    }
}
