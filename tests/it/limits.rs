//! The server's tower stack, black-box: request size limit, per-caller rate limit and load
//! shedding answer with their documented codes while allowed traffic goes on.

use crate::support::common;
use crate::support::pki as support_pki;

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
            tokio::spawn(async move { c.get_certificate(spc_request(&format!("100{i}"))).await })
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

/// Passes raw bytes through as the message: lets a test send what no generated client can.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Bytes that are not valid protobuf for the method's request, on every broker method:
/// INVALID_ARGUMENT with a fixed message (not the decoder's text), counted; no CA work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_messages_are_invalid_argument_on_every_method() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let seen = env.ca.stats().acme_requests;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // tn_auth_list[0].spc = the bytes FF FE: a string field that is not UTF-8.
    let bad_get = vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    // serial_hex = FF FE.
    let bad_revoke = vec![0x0a, 0x02, 0xff, 0xfe];
    // A length-delimited field 1 claiming 5 bytes where there is 1: truncated.
    let truncated = vec![0x0a, 0x05, 0x01];
    let path = |m: &str| {
        http::uri::PathAndQuery::try_from(format!("/certbroker.v1.CertificateBrokerService/{m}"))
            .unwrap()
    };
    let mut outcomes = vec![];
    for (method, body) in [
        ("GetCertificate", bad_get.clone()),
        ("GetCertificate", truncated.clone()),
        ("Revoke", bad_revoke),
        ("ListRenewals", truncated.clone()),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(tonic::Request::new(body), path(method), RawCodec)
            .await
            .unwrap_err();
        outcomes.push((method, status));
    }
    for body in [bad_get, truncated] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .server_streaming(
                tonic::Request::new(body),
                path("WatchCertificate"),
                RawCodec,
            )
            .await
            .map(|_| ())
            .unwrap_err();
        outcomes.push(("WatchCertificate", status));
    }
    for (method, status) in &outcomes {
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert_eq!(
            status.message(),
            "the request message could not be decoded as protobuf",
            "{method}: a fixed message, not the decoder's text"
        );
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.clone()),
            Some("UNDECODABLE".to_owned()),
            "{method}"
        );
    }
    let metrics = broker.app.metrics().render(0, 0);
    for (message, least) in [
        ("GetCertificateRequest", 2),
        // WatchCertificate has its own request type (buf's one-type-per-RPC rule).
        ("WatchCertificateRequest", 2),
        ("RevokeRequest", 1),
        ("ListRenewalsRequest", 1),
    ] {
        let line = format!("certbroker_requests_undecodable_total{{message=\"{message}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in\n{metrics}"));
        assert!(count >= least, "{message}: {count}");
    }
    assert_eq!(env.ca.stats().acme_requests, seen, "no CA work");
    // The connection and the server are fine: a good request is served.
    let mut client = broker.client().await;
    assert!(client.get_certificate(spc_request("1234")).await.is_ok());
}

/// Values from the caller are bounded where they are validated, and every echo in an error
/// is short: a 50,000-digit serial, a 60,000-character SPC, a huge pool name or DNS name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_messages_never_echo_unbounded_input() {
    use certbroker::pb::{RevokeRequest, revoke_request::Target};
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let seen = env.ca.stats().acme_requests;
    let mut client = broker.client().await;
    let long_hex = "a".repeat(50_000);
    let check = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().len() < 300,
            "{field}: a {}-byte message",
            status.message().len()
        );
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, field);
        assert!(bad.field_violations[0].description.len() < 300);
    };
    for (target, field) in [
        (Target::SerialHex(long_hex.clone()), "serial_hex"),
        (
            Target::SerialHex(format!("00{}", "b".repeat(41))),
            "serial_hex",
        ),
        (
            Target::Sha256FingerprintHex(long_hex.clone()),
            "sha256_fingerprint_hex",
        ),
    ] {
        let status = client
            .revoke(RevokeRequest {
                target: Some(target),
                reason: 0,
            })
            .await
            .unwrap_err();
        check(status, field);
    }
    // A 40-digit serial (20 octets) with a leading zero octet is fine, and unknown.
    let status = client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex(format!("00{}", "c".repeat(40)))),
            reason: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().len() < 300);

    let mut long_spc = spc_request(&"1".repeat(60_000));
    long_spc.ca_pool = String::new();
    check(
        client.get_certificate(long_spc).await.unwrap_err(),
        "tn_auth_list[0].spc",
    );
    let mut long_pool = spc_request("1234");
    long_pool.ca_pool = "p".repeat(10_000);
    check(
        client.get_certificate(long_pool).await.unwrap_err(),
        "ca_pool",
    );
    let long_dns = certbroker::pb::GetCertificateRequest {
        dns_names: vec![format!("{}.example", "d".repeat(10_000))],
        ..Default::default()
    };
    check(
        client.get_certificate(long_dns).await.unwrap_err(),
        "dns_names[0]",
    );
    assert_eq!(env.ca.stats().acme_requests, seen, "no CA work");
}
