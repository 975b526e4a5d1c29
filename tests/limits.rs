//! The server's tower stack, black-box: request size limit, per-caller rate limit and load
//! shedding answer with their documented codes while allowed traffic goes on.

mod common;
mod support_pki;

use std::time::Duration;

use certbroker::config::{PolicySettings, Settings};
use common::{DevEnv, TestBroker, spc_request};
use support_pki::{ServerFiles, connect};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_is_out_of_range_and_the_next_one_is_served() {
    let env = DevEnv::start().await;
    let mut settings = Settings::from_toml("[server]\nmax_request_bytes = 4096").unwrap();
    settings.ca = vec![env.ca_settings("devca")];
    let broker = TestBroker::start_settings(settings).await;
    let mut client = broker.client().await;

    let mut big = spc_request("1234");
    big.csr_der = vec![0x30; 10_000];
    let status = client.get_certificate(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(env.ca.stats().new_orders, 0);

    let ok = client.get_certificate(spc_request("1234")).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_caller_is_rate_limited_and_others_are_not() {
    let env = DevEnv::start().await;
    let files = ServerFiles::new();
    let mut settings =
        Settings::from_toml("[server]\nrate_limit_per_sec = 1\nrate_limit_burst = 3").unwrap();
    settings.ca = vec![env.ca_settings("devca")];
    settings.server.tls = Some(files.settings(10));
    settings.policy = vec![PolicySettings {
        identities: vec!["*.carrier.example".into()],
        spcs: vec!["*".into()],
        pools: vec!["default".into()],
        ..Default::default()
    }];
    let broker = TestBroker::start_settings(settings).await;
    let flooder = files.client_ca.client("a", &["a.carrier.example"]);
    let polite = files.client_ca.client("b", &["b.carrier.example"]);
    let mut a = connect(broker.addr, &files.server_ca.pem, Some(&flooder))
        .await
        .unwrap();
    let mut b = connect(broker.addr, &files.server_ca.pem, Some(&polite))
        .await
        .unwrap();

    let mut ok = 0;
    let mut limited = vec![];
    for _ in 0..12 {
        match a.get_certificate(spc_request("1234")).await {
            Ok(_) => ok += 1,
            Err(s) => limited.push(s),
        }
    }
    assert!(ok >= 3, "the burst is served: {ok}");
    assert!(
        !limited.is_empty(),
        "12 requests at once exceed a burst of 3"
    );
    for s in &limited {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        let retry = s
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay);
        assert!(
            retry.is_some_and(|d| d <= Duration::from_secs(1)),
            "{retry:?}"
        );
    }
    // Another caller has its own bucket.
    let answer = b.get_certificate(spc_request("1234")).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(env.ca.stats().new_orders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_concurrency_limit_are_shed() {
    let env = DevEnv::start().await;
    // Each ACME request takes a while, so concurrent issuances overlap.
    env.ca.behaviour().set_delay(Duration::from_millis(300));
    let mut settings =
        Settings::from_toml("[server]\nmax_concurrent_requests = 2\nrate_limit_per_sec = 0")
            .unwrap();
    settings.ca = vec![env.ca_settings("devca")];
    let broker = TestBroker::start_settings(settings).await;
    let client = broker.client().await;

    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { c.get_certificate(spc_request(&format!("10{i}"))).await })
        })
        .collect();
    let mut served = 0;
    let mut shed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert_eq!(
                    s.get_error_details().error_info().map(|i| i.reason.clone()),
                    Some("OVERLOADED".to_owned())
                );
                shed += 1;
            }
        }
    }
    assert!(served >= 1, "served {served}, shed {shed}");
    assert!(shed >= 1, "6 concurrent issuances exceed a limit of 2");
    // Once the load is gone, requests are served again.
    env.ca.behaviour().set_delay(Duration::ZERO);
    let mut c = client.clone();
    assert!(c.get_certificate(spc_request("1234")).await.is_ok());
}
