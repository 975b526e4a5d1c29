//! The integration tests, one binary: a module per area, the shared harness in `support`.
//! One link step instead of one per file (each test binary is ~300 MB on disk and links
//! for tens of seconds on a small machine). `cargo test --test it AREA::` runs one area,
//! e.g. `cargo test --test it fleet::`.
//!
//! Two tests stay binaries of their own, because each installs the process-wide tracing
//! subscriber and would take it from every other test here: tests/tracing_spans.rs (an
//! OpenTelemetry layer with an in-memory exporter) and tests/strict_profile.rs (a JSON
//! log capture).

// Test code may unwrap: a panic is a failed test (Cargo.toml [lints.clippy]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod account_lifecycle;
mod acme2certifier;
mod acme_python;
mod ari;
mod audit;
mod broker_api;
mod ca_pool;
mod ca_quirks;
mod challenge_sti_pa;
mod cli_friction;
mod cli_issue;
mod delegate;
mod deploy;
mod devca_faults;
mod devca_server;
mod devca_star;
mod fleet;
mod fleet_takeover;
mod foreign_client;
mod grpc_tools;
mod issue_devca;
mod lifecycle;
mod lifecycle_edges;
mod limits;
mod mtls;
mod otlp_export;
mod parsers_prop;
mod pebble;
mod pki_lint;
mod preauth;
mod redis_ops;
mod redis_store;
mod star_fleet;
mod store_outage;
mod telemetry;
