//! Black-box tests of the gRPC service: a real tonic client against the broker on port 0,
//! issuing from a real devca over HTTPS.

use crate::support::common;

use std::collections::HashSet;

use certbroker::pb::{
    self, CacheStatus, GetCertificateRequest, RevokeRequest, revoke_request::Target,
    tn_auth_entry::Entry,
};
use common::{DevEnv, TestBroker, openssl_verify, spc_request};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issues_then_serves_from_cache_then_revokes() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;

    let first = client
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.cache_status(), CacheStatus::Issued);
    assert_eq!(first.issuer_ca, "devca");
    assert!(
        !first.private_key_pkcs8_der.is_empty(),
        "broker-made key is returned"
    );
    assert_eq!(first.certificate_chain_der.len(), 2, "leaf + intermediate");
    // The leaf carries exactly TNAuthList spc 1234 (DER 3008a006160431323334).
    let leaf = certbroker::shaken::CertInfo::parse(&first.certificate_chain_der[0]).unwrap();
    assert_eq!(
        hex::encode(leaf.tn_auth_list.as_ref().unwrap().to_der()),
        "3008a006160431323334"
    );
    assert_eq!(leaf.serial_hex.trim_start_matches('0'), first.serial_hex);
    openssl_verify(&first.certificate_chain_pem, &env.ca.issuing_root_pem())
        .expect("chain verifies");

    let second = client
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.cache_status(), CacheStatus::HitLocal);
    assert_eq!(second.serial_hex, first.serial_hex);
    assert_eq!(env.ca.stats().new_orders, 1);

    let revoked = client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex(first.serial_hex.clone())),
            reason: pb::RevocationReason::Superseded as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.serial_hex, first.serial_hex);
    assert_eq!(revoked.issuer_ca, "devca");
    assert!(
        env.ca.revoked(&leaf.serial_hex),
        "devca recorded the revocation"
    );

    let third = client
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.cache_status(), CacheStatus::Issued);
    assert_ne!(third.serial_hex, first.serial_hex);

    // Revoking by fingerprint works too; an unknown serial is NOT_FOUND.
    client
        .revoke(RevokeRequest {
            target: Some(Target::Sha256FingerprintHex(
                third.sha256_fingerprint_hex.clone(),
            )),
            reason: 0,
        })
        .await
        .unwrap();
    let err = client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex("abcdef".into())),
            reason: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_requests_cause_one_order() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let client = broker.client().await;
    let mut tasks = vec![];
    for _ in 0..100 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.get_certificate(spc_request("5678"))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut serials = HashSet::new();
    let mut issued = 0;
    for t in tasks {
        let r = t.await.unwrap().expect("every caller gets a certificate");
        serials.insert(r.serial_hex.clone());
        issued += usize::from(r.cache_status() == CacheStatus::Issued);
        assert!(matches!(
            r.cache_status(),
            CacheStatus::Issued | CacheStatus::Joined | CacheStatus::HitLocal
        ));
    }
    assert_eq!(serials.len(), 1, "one serial for everyone");
    assert_eq!(issued, 1, "exactly one caller issued");
    let stats = env.ca.stats();
    assert_eq!((stats.new_orders, stats.finalizes), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;

    let key = certbroker::shaken::generate_key().unwrap();
    let subject = certbroker::shaken::Subject::shaken("Test Co", "9999");
    let other_list = certbroker::shaken::TnAuthList::from_spc("9999").unwrap();
    let mismatched_csr = certbroker::shaken::build_csr(
        &key,
        &certbroker::shaken::CsrSpec {
            subject: &subject,
            tn_auth_list: Some(&other_list),
            dns_names: &[],
            ca: false,
        },
    )
    .unwrap();
    let mut bad_signature = mismatched_csr.clone();
    let last = bad_signature.len() - 3;
    bad_signature[last] ^= 0x55;

    let range = |start: &str, count| pb::TnAuthEntry {
        entry: Some(Entry::Range(pb::TelephoneNumberRange {
            start: start.into(),
            count,
        })),
    };
    let cases: Vec<(GetCertificateRequest, &str)> = vec![
        (GetCertificateRequest::default(), "tn_auth_list"),
        (
            GetCertificateRequest {
                dns_names: vec!["a.example".into()],
                ..spc_request("1234")
            },
            "dns_names",
        ),
        (spc_request(""), "tn_auth_list[0].spc"),
        (
            GetCertificateRequest {
                tn_auth_list: vec![pb::TnAuthEntry {
                    entry: Some(Entry::Tn("12a4".into())),
                }],
                ..Default::default()
            },
            "tn_auth_list[0].tn",
        ),
        (
            GetCertificateRequest {
                tn_auth_list: vec![range("1215555", 1)],
                ..Default::default()
            },
            "tn_auth_list[0].range.count",
        ),
        (
            GetCertificateRequest {
                tn_auth_list: vec![range("12x", 10)],
                ..Default::default()
            },
            "tn_auth_list[0].range.start",
        ),
        (
            GetCertificateRequest {
                csr_der: vec![0x30, 0x03, 1, 2, 3],
                ..spc_request("1234")
            },
            "csr_der",
        ),
        (
            GetCertificateRequest {
                csr_der: bad_signature,
                ..spc_request("9999")
            },
            "csr_der",
        ),
        (
            GetCertificateRequest {
                csr_der: mismatched_csr,
                ..spc_request("1234")
            },
            "csr_der",
        ),
        (
            GetCertificateRequest {
                ca_pool: "nope".into(),
                ..spc_request("1234")
            },
            "ca_pool",
        ),
    ];
    for (req, field) in cases {
        let status = client.get_certificate(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert_eq!(violations[0].field, field, "{status:?}");
        assert!(!violations[0].description.is_empty());
    }
    assert_eq!(
        env.ca.stats().new_orders,
        0,
        "bad input never reaches the CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_csr_keeps_its_key() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let key = certbroker::shaken::generate_key().unwrap();
    let list = certbroker::shaken::TnAuthList::from_spc("4321").unwrap();
    let csr = certbroker::shaken::build_csr(
        &key,
        &certbroker::shaken::CsrSpec {
            subject: &certbroker::shaken::Subject::shaken("Test Co", "4321"),
            tn_auth_list: Some(&list),
            dns_names: &[],
            ca: false,
        },
    )
    .unwrap();
    let resp = client
        .get_certificate(GetCertificateRequest {
            csr_der: csr,
            ..spc_request("4321")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.private_key_pkcs8_der.is_empty(),
        "no key when the caller brought a CSR"
    );
    let leaf = certbroker::shaken::CertInfo::parse(&resp.certificate_chain_der[0]).unwrap();
    assert_eq!(
        leaf.public_key_spki_der,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut health = broker.health_client().await;
    for service in ["", "certbroker.v1.CertificateBrokerService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_reach_the_caller_with_the_problem() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let problem = |s: &tonic::Status| {
        s.get_error_details()
            .error_info()
            .map(|i| i.metadata.get("problem_type").cloned().unwrap_or_default())
            .unwrap_or_default()
    };

    // The CA answers 503: UNAVAILABLE, with the CA's problem type.
    env.ca.behaviour().set_unavailable(true);
    let s = client
        .get_certificate(spc_request("7001"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(problem(&s), "urn:ietf:params:acme:error:serverInternal");
    env.ca.behaviour().set_unavailable(false);

    // The STI-PA signs with the wrong key: the CA refuses the token.
    env.ca
        .behaviour()
        .set_token_fault(Some(certbroker::devca::TokenFault::WrongKey));
    let s = client
        .get_certificate(spc_request("7002"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(problem(&s), "urn:ietf:params:acme:error:unauthorized");
    assert!(
        s.message().contains("token signature invalid"),
        "{}",
        s.message()
    );
    env.ca.behaviour().set_token_fault(None);

    // Rate limited with Retry-After: RESOURCE_EXHAUSTED with RetryInfo.
    env.ca
        .behaviour()
        .set_rate_limit(Some(std::time::Duration::from_secs(9)));
    let s = client
        .get_certificate(spc_request("7003"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(problem(&s), "urn:ietf:params:acme:error:rateLimited");
    let retry = s
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d <= std::time::Duration::from_secs(9)),
        "{retry:?}"
    );
}

/// Everything that can be checked before any CA or STI-PA work is: SPC syntax and length,
/// TNAuthList size and range bounds, an SPC entry, `min_remaining_validity` bounds and what
/// the pool can issue. No order, no token, for any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_comes_before_any_order() {
    let env = DevEnv::start().await;
    let mut ca = env.ca_settings("devca");
    ca.cert_lifetime = Some(std::time::Duration::from_secs(86_400));
    let broker = TestBroker::start(vec![ca]).await;
    let mut client = broker.client().await;

    let spc = |s: &str| pb::TnAuthEntry {
        entry: Some(Entry::Spc(s.into())),
    };
    let range = |start: &str, count| pb::TnAuthEntry {
        entry: Some(Entry::Range(pb::TelephoneNumberRange {
            start: start.into(),
            count,
        })),
    };
    let list = |entries: Vec<pb::TnAuthEntry>| GetCertificateRequest {
        tn_auth_list: entries,
        ..Default::default()
    };
    let hours = |h: i64| prost_types::Duration {
        seconds: h * 3600,
        nanos: 0,
    };
    let cases: Vec<(GetCertificateRequest, Code, &str)> = vec![
        (
            spc_request(&"7".repeat(60_000)),
            Code::InvalidArgument,
            "tn_auth_list[0].spc",
        ),
        (
            spc_request("123h"),
            Code::InvalidArgument,
            "tn_auth_list[0].spc",
        ),
        (
            spc_request("12 4"),
            Code::InvalidArgument,
            "tn_auth_list[0].spc",
        ),
        (
            spc_request("123"),
            Code::InvalidArgument,
            "tn_auth_list[0].spc",
        ),
        (
            list((0..2000).map(|_| range("12155550000", 100)).collect()),
            Code::InvalidArgument,
            "tn_auth_list",
        ),
        (
            list(vec![range("12155550000", 100)]),
            Code::InvalidArgument,
            "tn_auth_list",
        ),
        (
            list(vec![pb::TnAuthEntry {
                entry: Some(Entry::Tn("12155551212".into())),
            }]),
            Code::InvalidArgument,
            "tn_auth_list",
        ),
        (
            list(vec![spc("1234"), range("1", u32::MAX)]),
            Code::InvalidArgument,
            "tn_auth_list[1].range.count",
        ),
        (
            list(vec![spc("1234"), range("99999999990", 20)]),
            Code::InvalidArgument,
            "tn_auth_list[1].range.count",
        ),
        (
            GetCertificateRequest {
                min_remaining_validity: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..spc_request("1234")
            },
            Code::InvalidArgument,
            "min_remaining_validity",
        ),
        (
            GetCertificateRequest {
                min_remaining_validity: Some(hours(48)),
                ..spc_request("1234")
            },
            Code::FailedPrecondition,
            "min_remaining_validity",
        ),
    ];
    for (req, code, field) in cases {
        for _ in 0..2 {
            let status = client.get_certificate(req.clone()).await.unwrap_err();
            assert_eq!(status.code(), code, "{field}: {status:?}");
            assert!(
                status.message().len() < 600,
                "{field}: {}",
                status.message().len()
            );
            let details = status.get_error_details();
            let violations = &details
                .bad_request()
                .unwrap_or_else(|| panic!("{field}: BadRequest in {status:?}"))
                .field_violations;
            assert_eq!(violations[0].field, field, "{status:?}");
        }
    }
    let stats = env.ca.stats();
    assert_eq!(
        (stats.new_orders, stats.tokens_issued),
        (0, 0),
        "no order, no token"
    );
    // What the pool can issue is still served.
    let ok = client
        .get_certificate(GetCertificateRequest {
            min_remaining_validity: Some(hours(12)),
            ..spc_request("1234")
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// Without `cert_lifetime_secs` the broker cannot know the CA issues 24 h certificates
/// until it has one: the first 48 h request orders once; the repeats, and other requests
/// to that pool, are refused FAILED_PRECONDITION without another order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validity_the_pool_cannot_issue_is_learned_once() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let two_days = |s: &str| GetCertificateRequest {
        min_remaining_validity: Some(prost_types::Duration {
            seconds: 48 * 3600,
            nanos: 0,
        }),
        ..spc_request(s)
    };
    let first = client.get_certificate(two_days("6060")).await.unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition, "{first:?}");
    assert_eq!(env.ca.stats().new_orders, 1);
    for spc in ["6060", "6060", "6060", "6060", "6061"] {
        let status = client.get_certificate(two_days(spc)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().expect("BadRequest").field_violations[0].field,
            "min_remaining_validity"
        );
    }
    assert_eq!(env.ca.stats().new_orders, 1, "no further order");
}
