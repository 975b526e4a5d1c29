//! Mutual TLS and caller policy on the gRPC listener, black-box: rcgen-made CAs and client
//! certificates, a real broker on port 0 issuing from a real devca.

use crate::support::common;
use crate::support::pki as support_pki;

use std::time::Duration;

use certbroker::{
    config::{PolicySettings, Settings},
    pb::{self, RevokeRequest, revoke_request::Target},
};
use common::{DevEnv, TestBroker, spc_request};
use support_pki::{ServerFiles, TestCa, connect};
use tonic::Code;

fn policy(identities: &[&str], spcs: &[&str], revoke: bool) -> PolicySettings {
    PolicySettings {
        identities: identities.iter().map(|s| (*s).to_owned()).collect(),
        spcs: spcs.iter().map(|s| (*s).to_owned()).collect(),
        pools: vec!["default".into()],
        revoke,
        ..Default::default()
    }
}

/// A broker with mTLS: `*.east.carrier.example` may get SPC 1234; `ops.carrier.example`
/// (by CN) may get anything and revoke.
async fn start(env: &DevEnv, files: &ServerFiles, reload_secs: u64) -> TestBroker {
    let mut settings = Settings::from_toml("").expect("defaults");
    settings.ca = vec![env.ca_settings("devca")];
    settings.server.tls = Some(files.settings(reload_secs));
    settings.policy = vec![
        policy(&["*.east.carrier.example"], &["1234"], false),
        policy(&["ops.carrier.example"], &["*"], true),
    ];
    TestBroker::start_settings(settings).await
}

/// A call that must fail at the TLS layer (or the connection it closes).
async fn refused(
    broker: &TestBroker,
    files: &ServerFiles,
    identity: Option<&support_pki::Leaf>,
) -> String {
    match connect(broker.addr, &files.server_ca.pem, identity).await {
        Err(e) => format!("connect: {e}"),
        Ok(mut client) => {
            let status = client
                .get_certificate(spc_request("1234"))
                .await
                .expect_err("a client the TLS layer refuses gets no answer");
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ),
                "{status:?}"
            );
            format!("call: {status}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_without_certificate_is_refused() {
    let env = DevEnv::start().await;
    let files = ServerFiles::new();
    let broker = start(&env, &files, 10).await;
    let why = refused(&broker, &files, None).await;
    assert!(!why.is_empty());
    assert_eq!(env.ca.stats().new_orders, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificate_from_another_ca_is_refused() {
    let env = DevEnv::start().await;
    let files = ServerFiles::new();
    let broker = start(&env, &files, 10).await;
    // Same name as an allowed signer, wrong CA.
    let rogue = TestCa::new("rogue CA").client("s1", &["s1.east.carrier.example"]);
    refused(&broker, &files, Some(&rogue)).await;
    assert_eq!(env.ca.stats().new_orders, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_decides_what_an_authenticated_client_gets() {
    let env = DevEnv::start().await;
    let files = ServerFiles::new();
    let broker = start(&env, &files, 10).await;
    let signer = files.client_ca.client("s1", &["s1.east.carrier.example"]);
    let mut client = connect(broker.addr, &files.server_ca.pem, Some(&signer))
        .await
        .expect("allowed client connects");

    // Outside its policy: denied before any broker work.
    let denied = client
        .get_certificate(spc_request("9999"))
        .await
        .expect_err("SPC 9999 is not in the signer's policy");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("s1.east.carrier.example"),
        "{denied:?}"
    );
    assert_eq!(env.ca.stats().new_orders, 0, "the CA saw no order");

    // Another pool: denied too.
    let mut other_pool = spc_request("1234");
    other_pool.ca_pool = "premium".into();
    let denied = client.get_certificate(other_pool).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A CA (delegate-issuing) certificate for an allowed SPC needs `ca_certificates`.
    let mut ca_cert = spc_request("1234");
    ca_cert.ca_certificate = true;
    let denied = client.get_certificate(ca_cert).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("CA certificate"), "{denied:?}");
    assert_eq!(env.ca.stats().new_orders, 0, "the CA saw no order");

    // Inside its policy: issued.
    let cert = client
        .get_certificate(spc_request("1234"))
        .await
        .expect("allowed SPC is issued")
        .into_inner();
    assert_eq!(cert.cache_status(), pb::CacheStatus::Issued);
    assert_eq!(env.ca.stats().new_orders, 1);

    // Revoke needs `revoke = true`.
    let revoke = RevokeRequest {
        target: Some(Target::SerialHex(cert.serial_hex.clone())),
        reason: pb::RevocationReason::Superseded as i32,
    };
    let denied = client.revoke(revoke.clone()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(!env.ca.revoked(&cert.serial_hex));

    // The ops identity (matched by subject CN, no SAN) may revoke.
    let ops = files.client_ca.client("ops.carrier.example", &[]);
    let mut ops_client = connect(broker.addr, &files.server_ca.pem, Some(&ops))
        .await
        .expect("ops connects");
    let revoked = ops_client
        .revoke(revoke)
        .await
        .expect("ops may revoke")
        .into_inner();
    assert_eq!(revoked.serial_hex, cert.serial_hex);

    // A client of the right CA that no policy names may do nothing.
    let stranger = files.client_ca.client("s9", &["s9.west.carrier.example"]);
    let mut stranger = connect(broker.addr, &files.server_ca.pem, Some(&stranger))
        .await
        .expect("TLS accepts any certificate of the client CA");
    let denied = stranger
        .get_certificate(spc_request("1234"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_certificate_is_reloaded_without_restart() {
    let env = DevEnv::start().await;
    let files = ServerFiles::new();
    let broker = start(&env, &files, 1).await;
    let signer = files.client_ca.client("s1", &["s1.east.carrier.example"]);
    connect(broker.addr, &files.server_ca.pem, Some(&signer))
        .await
        .expect("old certificate serves");

    let new_ca = TestCa::new("rotated server CA");
    files.write_server(&new_ca.server());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut c = connect(broker.addr, &new_ca.pem, Some(&signer))
                .await
                .ok()?;
            c.get_certificate(spc_request("1234")).await.ok()
        };
        if attempt.await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New connections no longer get the old certificate.
    let old = async {
        let mut c = connect(broker.addr, &files.server_ca.pem, Some(&signer))
            .await
            .ok()?;
        c.get_certificate(spc_request("1234")).await.ok()
    };
    assert!(old.await.is_none(), "the old certificate is still served");
}

/// `certbroker get` speaks mTLS with `--ca-cert/--cert/--key` (a bare `--addr HOST:PORT`
/// then means https://), and the policy applies to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_client_presents_its_certificate() {
    let env = DevEnv::start().await;
    let files = ServerFiles::new();
    let broker = start(&env, &files, 10).await;
    let signer = files.client_ca.client("s1", &["s1.east.carrier.example"]);
    let ca = files.path("cli-server-ca.pem");
    let (cert, key) = (files.path("cli-client.pem"), files.path("cli-client.key"));
    std::fs::write(&ca, &files.server_ca.pem).unwrap();
    std::fs::write(&cert, &signer.cert_pem).unwrap();
    std::fs::write(&key, &signer.key_pem).unwrap();
    let get = |spc: &str| {
        let (ca, cert, key, spc) = (ca.clone(), cert.clone(), key.clone(), spc.to_owned());
        // HOST:PORT with TLS flags means https://.
        let addr = broker.addr.to_string();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::bin())
                .args([
                    "get",
                    "--addr",
                    &addr,
                    "--server-name",
                    "localhost",
                    "--spc",
                    &spc,
                ])
                .arg("--ca-cert")
                .arg(&ca)
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .output()
                .expect("certbroker get runs")
        })
    };
    let ok = get("1234").await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("cache_status: CACHE_STATUS_ISSUED"),
        "{stdout}"
    );

    let denied = get("9999").await.unwrap();
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success());
    assert!(stderr.contains("(PERMISSION_DENIED)"), "{stderr}");
}
