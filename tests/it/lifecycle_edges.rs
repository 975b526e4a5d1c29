//! Lifecycle edges found by independent checks (issue 12, item 8): a watched certificate
//! stays renewed past `renewal.idle_horizon_secs`, and a CA that requires an external
//! account binding the broker lacks is reported with its ACME problem type.

use crate::support::common;

use std::time::Duration;

use certbroker::{config::Settings, devca::DevCaSettings, pb};
use common::{DevEnv, TestBroker, spc_request};
use tonic::Code;
use tonic_types::StatusExt;

/// An open WatchCertificate stream marks its certificate in use: with an idle horizon of
/// 2 s (far below the stream's 30 s re-check) and 8-second certificates, the watcher stays
/// open across two lifetimes and gets each renewed certificate before the one it holds
/// expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_keeps_its_certificate_renewed_past_the_idle_horizon() {
    let lifetime = Duration::from_secs(8);
    let env = DevEnv::start_with(DevCaSettings {
        cert_lifetime: lifetime,
        ..Default::default()
    })
    .await;
    let mut settings = Settings::from_toml(
        r#"
[broker]
default_min_remaining_secs = 1
[renewal]
check_interval_secs = 1
idle_horizon_secs = 2
retry_base_secs = 1
"#,
    )
    .expect("settings");
    settings.ca = vec![env.ca_settings("devca")];
    let broker = TestBroker::start_settings(settings).await;
    let mut stream = broker
        .client()
        .await
        .watch_certificate(pb::WatchCertificateRequest::from(spc_request("9191")))
        .await
        .expect("watch starts")
        .into_inner();
    let first = stream.message().await.unwrap().expect("first certificate");
    let (mut serial, mut not_after) = (first.serial_hex, first.not_after.unwrap().seconds);
    for round in 1..=2 {
        // Before the held certificate expires (plus a second for the clock's granularity).
        let wait = u64::try_from(not_after - time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap_or(0)
            + 1;
        let next = tokio::time::timeout(Duration::from_secs(wait), stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: no renewed certificate before notAfter {not_after}")
            })
            .unwrap()
            .expect("stream open");
        let received = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_ne!(next.serial_hex, serial, "round {round}: a new certificate");
        assert!(
            received < not_after,
            "round {round}: received at {received}, the held certificate expired at {not_after}"
        );
        serial = next.serial_hex;
        not_after = next.not_after.unwrap().seconds;
    }
    assert_eq!(env.ca.stats().new_orders, 3, "one order per certificate");
}

/// A CA whose directory says `externalAccountRequired`, and no `[ca.eab]` configured: the
/// caller gets FAILED_PRECONDITION with the ACME problem type in ErrorInfo and in the
/// message, like any refusal the CA itself sends, and no order is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_eab_reports_the_external_account_required_problem_type() {
    let env = DevEnv::start_with(DevCaSettings {
        require_eab: Some(("kid-1".into(), vec![7; 32])),
        ..Default::default()
    })
    .await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let status = broker
        .client()
        .await
        .get_certificate(spc_request("7101"))
        .await
        .unwrap_err();
    const TYPE: &str = "urn:ietf:params:acme:error:externalAccountRequired";
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_REFUSED");
    assert_eq!(info.metadata["problem_type"], TYPE, "{info:?}");
    assert_eq!(info.metadata["ca"], "devca");
    assert!(status.message().contains(TYPE), "{}", status.message());
    assert_eq!(env.ca.stats().new_orders, 0);
}
