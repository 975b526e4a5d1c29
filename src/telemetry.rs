//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` or
//! `telemetry.log_filter`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::TelemetrySettings;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if settings.json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // Err: a subscriber is already installed (tests, embedding); keep it.
    drop(result);
}
