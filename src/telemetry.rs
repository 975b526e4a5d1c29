//! Logging, tracing and metrics: `tracing` to stderr (text or JSON, filtered by `RUST_LOG`
//! or `telemetry.log_filter`), spans exported over OTLP/gRPC when an endpoint is configured
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, else
//! `telemetry.otlp_endpoint`), Prometheus metrics ([`Metrics`]) served by the admin
//! listener ([`serve_admin`]).
//!
//! Log lines are formatted by the thread that logs but written by a writer thread
//! (`tracing-appender`'s non-blocking writer): a request never waits for stderr. The
//! writer's queue holds up to 128,000 lines; when it is full, logging waits (lines are not
//! dropped, so no `audit` line is lost to a slow consumer). What the queue holds when the
//! process dies abruptly is lost; [`shutdown`] drains it.
//!
//! The exporter sees the project's own spans at `debug` and above whatever the log filter
//! says (so `acme.request` spans are exported at the default `info` log level), plus what
//! the log filter lets through. The standard OpenTelemetry SDK variables apply:
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_*`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`.

mod admin;
mod metrics;

use std::{
    io::IsTerminal,
    sync::{Mutex, OnceLock, PoisonError},
};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    filter::{FilterExt, filter_fn},
    fmt,
    prelude::*,
};

pub use admin::{AdminError, serve_admin};
pub use metrics::{
    CaBreakerSource, Metrics, MetricsError, RejectionObserver, count_undecodable,
    undecodable_counts,
};

use crate::config::TelemetrySettings;

/// The span exporter, kept to flush it at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The log writer thread's guard: dropping it drains the queue.
static LOG_WRITER: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = Mutex::new(None);

/// Instrumentation scope of the project's spans.
const SCOPE: &str = "certbroker";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
/// With span export configured it must run inside a Tokio runtime (the exporter's gRPC
/// client lives there); an exporter that cannot be built is logged and skipped.
pub fn init(settings: &TelemetrySettings) {
    let log_filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&settings.log_filter))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (provider, otlp_error) = match export_target(settings, &|k| std::env::var(k).ok()) {
        Some(endpoint) => match otlp_provider(endpoint.as_deref(), &settings.service_name) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            .with_filter(own_spans().or(log_filter()))
    });
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("certbroker-log")
        .finish(std::io::stderr());
    let result = tracing_subscriber::registry()
        .with(otel)
        .with(settings.json.then(|| {
            fmt::layer()
                .json()
                .with_writer(writer.clone())
                .with_filter(log_filter())
        }))
        .with((!settings.json).then(|| {
            // Colours only for a terminal, not for a log file or a collector's pipe.
            fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(writer)
                .with_filter(log_filter())
        }))
        .try_init();
    // Err: a subscriber is already installed (tests, embedding); keep it (and drop `guard`,
    // which stops the unused writer thread).
    if result.is_ok() {
        if let Some(p) = provider {
            let _ = PROVIDER.set(p);
        }
        *LOG_WRITER.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
    }
    if let Some(e) = otlp_error {
        tracing::error!(error = %e, "OTLP span exporter not started; spans are not exported");
    }
}

/// Spans of the project's own targets at `debug` and above: what the exporter always gets.
fn own_spans() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|m| {
        m.is_span()
            && *m.level() <= tracing::Level::DEBUG
            && (m.target() == SCOPE
                || m.target()
                    .strip_prefix(SCOPE)
                    .is_some_and(|rest| rest.starts_with("::")))
    })
    // Lets `trace!` call sites stay disabled statically while spans are exported.
    .with_max_level_hint(tracing::Level::DEBUG)
}

/// Whether spans are exported and where: `None` no export; `Some(None)` the endpoint the
/// OTLP exporter reads from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (environment wins over the file, as for every other setting); `Some(Some(url))`
/// `telemetry.otlp_endpoint`.
fn export_target(
    settings: &TelemetrySettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Option<String>> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return None;
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        return Some(None);
    }
    settings.otlp_endpoint.clone().map(Some)
}

/// Flushes and stops span export and drains the log writer (call once at shutdown; later
/// log lines are not written).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
    drain_logs();
}

/// Waits until the log writer has written every queued line, then stops it (later log
/// lines are not written). The binary calls it on every exit path.
pub fn drain_logs() {
    drop(
        LOG_WRITER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
}

/// `endpoint`: `None` lets the exporter read the standard environment variables.
/// `service.name` is `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
/// (both read by the SDK's resource detectors), else `service` (`telemetry.service_name`).
fn otlp_provider(endpoint: Option<&str>, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || EnvResourceDetector::new()
            .detect()
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !named_by_env {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

/// Reads propagation fields from HTTP (gRPC metadata) headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the caller's W3C trace context (`traceparent`, `tracestate`) the parent of `span`,
/// so exported spans join the caller's trace and carry its trace state. Returns the
/// caller's trace id (lower-case hex) when the headers carried a valid one, for the logs.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) -> Option<String> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return None;
    }
    // Err: no OpenTelemetry layer is installed; nothing to parent.
    let _ = span.set_parent(cx);
    Some(remote.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn otlp_exporter_builds_without_a_collector() {
        // Export is lazy: building must not need the collector to be up.
        let p = otlp_provider(Some("http://127.0.0.1:9"), "certbroker-test").expect("builds");
        let _ = p.shutdown();
    }

    #[test]
    fn export_target_prefers_the_standard_environment() {
        let file = TelemetrySettings {
            otlp_endpoint: Some("http://file:4317".into()),
            ..Default::default()
        };
        let none = TelemetrySettings::default();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(export_target(&none, &env(&[])), None);
        assert_eq!(
            export_target(&file, &env(&[])),
            Some(Some("http://file:4317".into()))
        );
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let pairs: &'static [(&str, &str)] = if var == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")]
            } else {
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4317")]
            };
            assert_eq!(export_target(&none, &env(pairs)), Some(None), "{var}");
            assert_eq!(export_target(&file, &env(pairs)), Some(None), "{var}");
        }
        assert_eq!(
            export_target(&none, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None,
            "empty is unset"
        );
        assert_eq!(
            export_target(&file, &env(&[("OTEL_SDK_DISABLED", "true")])),
            None
        );
        assert_eq!(
            export_target(&file, &env(&[("OTEL_TRACES_EXPORTER", "none")])),
            None
        );
    }
}
