//! Metrics, black-box: the Prometheus exposition on the admin listener after some traffic.

mod common;

use certbroker::pb::{RevokeRequest, revoke_request::Target};
use common::{DevEnv, TestBroker, spc_request};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_shows_traffic() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let first = client
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    client.get_certificate(spc_request("1234")).await.unwrap();
    let bad = client.get_certificate(spc_request("")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex(first.serial_hex.clone())),
            reason: 0,
        })
        .await
        .unwrap();
    client.get_certificate(spc_request("5678")).await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(broker.app.clone().serve_admin(listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "certbroker_requests_total{cache_status=\"issued\",code=\"Ok\",method=\"GetCertificate\"} 2",
        "certbroker_requests_total{cache_status=\"hit_local\",code=\"Ok\",method=\"GetCertificate\"} 1",
        "certbroker_requests_total{cache_status=\"\",code=\"InvalidArgument\",method=\"GetCertificate\"} 1",
        "certbroker_requests_total{cache_status=\"\",code=\"Ok\",method=\"Revoke\"} 1",
        "certbroker_issuance_duration_seconds_count{ca=\"devca\"} 2",
        "certbroker_request_duration_seconds_count{method=\"GetCertificate\"} 4",
        "certbroker_store_fallbacks_total 0",
        // 1234 was revoked; 5678 is the one certificate out there.
        "certbroker_certificates{expires_within=\"+Inf\"} 1",
        "# TYPE certbroker_certificate_min_expiry_seconds gauge",
        "certbroker_requests_rejected_total{method=\"GetCertificate\",reason=\"overloaded\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success());
    let _ = stop.send(());
}
