//! Tracing, black-box: the span tree of one cache miss, collected with OpenTelemetry's
//! in-memory exporter and parented to the caller's W3C traceparent. Its own test binary,
//! because it installs the process-wide subscriber.

// Test code may unwrap: a panic is a failed test (Cargo.toml [lints.clippy]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/support/common.rs"]
mod common;

use std::{collections::HashMap, time::Duration};

use certbroker::pb::{self};
use common::{DevEnv, TestBroker, spc_request};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::{filter::Targets, prelude::*};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// The exported name of the `rpc` span (`{rpc.service}/{rpc.method}`, the RPC conventions).
const RPC: &str = "certbroker.v1.CertificateBrokerService/GetCertificate";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_miss_yields_the_span_tree_under_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(Targets::new().with_target("certbroker", tracing::Level::TRACE)),
        )
        .try_init()
        .expect("this test binary installs the only global subscriber");

    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let mut req = tonic::Request::new(spc_request("4321"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let answer = client.get_certificate(req).await.unwrap().into_inner();
    assert_eq!(answer.cache_status(), pb::CacheStatus::Issued);

    // The rpc span ends as the response is sent; give the server a moment to close it.
    let mut spans = vec![];
    for _ in 0..100 {
        spans = exporter.get_finished_spans().unwrap();
        if spans.iter().any(|s| s.name == RPC) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let ancestors = |s: &SpanData| -> Vec<String> {
        let mut out = vec![];
        let mut parent = s.parent_span_id;
        while let Some(p) = by_id.get(&parent) {
            out.push(p.name.to_string());
            parent = p.parent_span_id;
        }
        out
    };
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();

    let rpc = named(RPC);
    assert_eq!(rpc.len(), 1, "{names:?}");
    let rpc = rpc[0];
    assert_eq!(rpc.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(rpc.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(
        rpc.parent_span_id.to_string(),
        CALLER_SPAN,
        "parented to the caller"
    );

    let get = named("broker.get_certificate");
    assert_eq!(get.len(), 1, "{names:?}");
    assert_eq!(get[0].parent_span_id, rpc.span_context.span_id());

    let attempt = named("ca.attempt");
    assert_eq!(attempt.len(), 1, "{names:?}");
    assert_eq!(ancestors(attempt[0])[..2], ["broker.get_certificate", RPC]);

    let token = named("challenge.token");
    assert_eq!(token.len(), 1, "{names:?}");
    assert_eq!(ancestors(token[0])[0], "ca.attempt");

    // Account set-up at start-up makes requests outside any rpc; only this trace counts.
    let acme: Vec<&SpanData> = named("acme.request")
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
        .collect();
    assert!(
        acme.len() >= 5,
        "newOrder, authz, challenge, finalize, cert: {names:?}"
    );
    for s in &acme {
        assert!(
            ancestors(s).contains(&"ca.attempt".to_owned()),
            "acme.request outside ca.attempt: {:?}",
            ancestors(s)
        );
    }
    for s in [get[0], attempt[0], token[0]] {
        assert_eq!(
            s.span_context.trace_id().to_string(),
            TRACE_ID,
            "{}",
            s.name
        );
    }
}
