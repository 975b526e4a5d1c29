//! Certificate lifecycle: proactive renewal across a fleet, WatchCertificate streams, and
//! STI-CR publication of chains at their x5u URL.

use crate::support::common;
use crate::support::redis as support_redis;

use std::{collections::BTreeMap, time::Duration};

use certbroker::{
    config::Settings,
    devca::DevCaSettings,
    pb::{self, GetCertificateResponse},
};
use common::{DevEnv, TestBroker, spc_request};
use support_redis::RedisServer;
use tokio::time::Instant;

/// A certificate: notBefore, notAfter, and (replica, received at) per watcher that saw it.
type Seen = (i64, i64, Vec<(usize, Instant)>);

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn fleet_settings(env: &DevEnv, redis_url: &str, extra: &str) -> Settings {
    let mut s = Settings::from_toml(&format!(
        r#"
[broker]
default_min_remaining_secs = 2
lock_ttl_secs = 5
[renewal]
check_interval_secs = 1
renew_fraction = 0.3333
retry_base_secs = 1
[store]
backend = "redis"
url = "{redis_url}"
[store.keyring]
active = "k1"
[store.keyring.keys]
k1 = "{KEY1}"
{extra}
"#
    ))
    .expect("settings");
    s.ca = vec![env.ca_settings("devca")];
    s
}

/// With 30-second certificates, three replicas renew each certificate once, with about a
/// third of its life left, and a watcher on every replica sees each new certificate within
/// a second of the others (so within a second of it being stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_renews_ahead_of_expiry_and_watchers_follow() {
    let redis = RedisServer::start();
    let env = DevEnv::start_with(DevCaSettings {
        cert_lifetime: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let s = fleet_settings(&env, &redis.url(), "");
    let mut fleet = vec![];
    for _ in 0..3 {
        fleet.push(TestBroker::start_settings(s.clone()).await);
    }

    // One watcher per replica; each records (serial, not_before, not_after, received at).
    let started = Instant::now();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, GetCertificateResponse, Instant)>();
    for (i, r) in fleet.iter().enumerate() {
        let mut client = r.client().await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stream = client
                .watch_certificate(pb::WatchCertificateRequest::from(spc_request("9090")))
                .await
                .expect("watch starts")
                .into_inner();
            while let Ok(Some(cert)) = stream.message().await {
                let _ = tx.send((i, cert.into(), Instant::now()));
            }
        });
    }
    drop(tx);

    let mut seen: BTreeMap<String, Vec<(usize, Instant, i64, i64)>> = BTreeMap::new();
    let deadline = started + Duration::from_secs(70);
    while let Ok(Some((i, cert, at))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let nb = cert.not_before.unwrap().seconds;
        let na = cert.not_after.unwrap().seconds;
        seen.entry(cert.serial_hex)
            .or_default()
            .push((i, at, nb, na));
    }

    // Certificates in issue order.
    let mut certs: Vec<Seen> = seen
        .values()
        .map(|v| {
            (
                v[0].2,
                v[0].3,
                v.iter().map(|(i, at, _, _)| (*i, *at)).collect(),
            )
        })
        .collect();
    certs.sort_by_key(|c| c.0);
    assert!(
        certs.len() >= 3,
        "at least two renewals in 70 s of 30 s certificates: {}",
        certs.len()
    );
    assert_eq!(
        env.ca.stats().new_orders as usize,
        certs.len(),
        "one order per certificate fleet-wide"
    );

    // Wall-clock seconds (Unix) at which a certificate was first seen by any watcher.
    let epoch =
        time::OffsetDateTime::now_utc().unix_timestamp() as f64 - started.elapsed().as_secs_f64();
    let seen_at = |receipts: &[(usize, Instant)]| {
        let first = receipts.iter().map(|r| r.1).min().unwrap();
        epoch + (first - started).as_secs_f64()
    };
    for pair in certs.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        // Lifetime as the broker saw it (the devca backdates notBefore by five minutes).
        let lifetime = old.1 as f64 - seen_at(&old.2);
        let left_at_renewal = old.1 as f64 - seen_at(&new.2);
        // Renewed with about a third of the old one's life left (1 s checks plus an
        // issuance of slack), and well before it expired.
        assert!(
            left_at_renewal <= lifetime / 3.0 + 2.0,
            "renewed too early: {left_at_renewal:.1}s left of {lifetime:.1}s"
        );
        assert!(
            left_at_renewal > 2.0,
            "renewed too late: {left_at_renewal:.1}s left"
        );
    }
    // Every watcher saw every renewed certificate, within a second of each other.
    for (_, _, receipts) in certs.iter().skip(1) {
        let mut replicas: Vec<usize> = receipts.iter().map(|r| r.0).collect();
        replicas.sort();
        replicas.dedup();
        assert_eq!(replicas, vec![0, 1, 2], "every replica's watcher got it");
        let first = receipts.iter().map(|r| r.1).min().unwrap();
        let last = receipts.iter().map(|r| r.1).max().unwrap();
        assert!(
            last - first < Duration::from_secs(1),
            "spread {:?}",
            last - first
        );
    }

    // The renewal state is visible.
    let renewals = fleet[0].renewals().await;
    assert_eq!(renewals.entries.len(), 1);
    let e = &renewals.entries[0];
    assert!(
        !e.serial_hex.is_empty() && e.next_renewal.is_some() && e.last_error.is_empty(),
        "{e:?}"
    );
}

/// The x5u URL serves the exact chain; a PASSporT signed with the returned key verifies
/// against the chain fetched from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x5u_serves_the_chain_for_passport_verification() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!(
        "[publish]\nbase_url = \"http://127.0.0.1:{port}/sti/\"\nlisten = \"127.0.0.1:{port}\""
    );
    let broker = TestBroker::start_settings(fleet_settings(&env, &redis.url(), &publish)).await;
    let resp = broker
        .client()
        .await
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.x5u,
        format!(
            "http://127.0.0.1:{port}/sti/{}.pem",
            resp.sha256_fingerprint_hex
        )
    );

    let http = certbroker::tls::http_client(None, Duration::from_secs(5)).unwrap();
    let fetched = http.get(&resp.x5u).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        fetched.headers()["content-type"],
        "application/pem-certificate-chain"
    );
    assert!(
        fetched.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public, max-age=")
    );
    let chain = fetched.text().await.unwrap();
    assert_eq!(chain, resp.certificate_chain_pem, "the exact chain");

    // Sign a PASSporT (RFC 8225 shape) with the broker-made key; verify with the x5u leaf.
    use josekit::{
        jws::{ES256, JwsHeader},
        jwt::{self, JwtPayload},
    };
    let signer = ES256.signer_from_der(&resp.private_key_pkcs8_der).unwrap();
    let mut header = JwsHeader::new();
    header.set_token_type("passport");
    header.set_claim("ppt", Some("shaken".into())).unwrap();
    header.set_x509_url(&resp.x5u);
    let mut payload = JwtPayload::new();
    payload.set_claim("attest", Some("A".into())).unwrap();
    payload
        .set_claim("orig", Some(serde_json::json!({"tn": "12155551212"})))
        .unwrap();
    payload
        .set_claim("dest", Some(serde_json::json!({"tn": ["12155551213"]})))
        .unwrap();
    payload
        .set_claim("iat", Some(1_700_000_000.into()))
        .unwrap();
    payload
        .set_claim(
            "origid",
            Some("123e4567-e89b-12d3-a456-426655440000".into()),
        )
        .unwrap();
    let passport = jwt::encode_with_signer(&payload, &header, &signer).unwrap();

    let leaf_der = certbroker::shaken::parse_pem_chain(&chain)
        .unwrap()
        .remove(0);
    let leaf = certbroker::shaken::CertInfo::parse(&leaf_der).unwrap();
    let verifier = ES256.verifier_from_der(&leaf.public_key_spki_der).unwrap();
    let (claims, _) = jwt::decode_with_verifier(&passport, &verifier).expect("PASSporT verifies");
    assert_eq!(claims.claim("attest"), Some(&serde_json::json!("A")));

    // Unknown chains are 404, and no redirect is ever issued.
    let missing = http
        .get(format!(
            "http://127.0.0.1:{port}/sti/{}.pem",
            "0".repeat(64)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
