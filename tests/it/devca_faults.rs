//! `certbroker devca` as a fault injector: the standalone binary started with fault flags,
//! driven by raw HTTPS requests and by `certbroker issue`/`revoke-cert`, and its counters
//! endpoint and event log read back. The CRL's reasonCode entries are read with `openssl crl`
//! (an independent parser).

use crate::support::common;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A running `certbroker devca`, with what its banner printed and its log so far.
struct Devca {
    dev: common::DevcaProcess,
    stats: String,
}

impl std::ops::Deref for Devca {
    type Target = common::DevcaProcess;
    fn deref(&self) -> &common::DevcaProcess {
        &self.dev
    }
}

impl Devca {
    fn start(flags: &[&str]) -> Self {
        let dev = common::DevcaProcess::start(flags, true, |c| {
            c.env("RUST_LOG", "devca=info,warn").env("NO_COLOR", "1");
        });
        let stats = dev
            .field("counters:")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        Self { dev, stats }
    }

    fn http(&self, timeout: Duration) -> reqwest::Client {
        let roots = certbroker::tls::read_roots(self.trust_root.as_ref()).unwrap();
        certbroker::tls::http_client(Some(&roots), timeout).unwrap()
    }

    async fn stats(&self) -> Value {
        let resp = self
            .http(Duration::from_secs(10))
            .get(&self.stats)
            .send()
            .await
            .expect("counters endpoint answers");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("counters are JSON")
    }

    /// `certbroker issue` for one SPC into `out`, as the devca's banner suggests.
    async fn issue(&self, spc: &str, out: &std::path::Path) -> Output {
        let password = std::fs::read_to_string(&self.password_file).expect("password file");
        tokio::process::Command::new(common::bin())
            .args(["issue", "--directory", &self.directory])
            .args(["--trust-root", &self.trust_root, "--spc", spc])
            .args(["--sti-pa", &self.sti_pa, "--sti-pa-user", "dev"])
            .args([
                "--sti-pa-password-env",
                "STI_PA_PASSWORD",
                "--timeout",
                "20",
            ])
            .arg("--out")
            .arg(out)
            .env("STI_PA_PASSWORD", password.trim())
            .env("RUST_LOG", "off")
            .output()
            .await
            .expect("certbroker issue runs")
    }

    /// Waits (bounded) until the devca logged a line containing every one of `parts`.
    async fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}: {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `--error-rate 100 --error-status 503 --error-type serverInternal --retry-after 7`: every
/// ACME request gets that problem document, a raw client and `certbroker issue` see it, and
/// the devca counts and logs each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_answers_the_chosen_status_problem_and_retry_after() {
    let ca = Devca::start(&[
        "--error-rate",
        "100",
        "--error-status",
        "503",
        "--error-type",
        "serverInternal",
        "--retry-after",
        "7",
    ]);
    assert!(
        ca.banner.iter().any(|l| l.contains("faults:")
            && l.contains("100%")
            && l.contains("urn:ietf:params:acme:error:serverInternal")),
        "{:#?}",
        ca.banner
    );
    let http = ca.http(Duration::from_secs(10));
    for _ in 0..3 {
        let resp = http.get(&ca.directory).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["type"], "urn:ietf:params:acme:error:serverInternal");
        assert_eq!(problem["status"], 503);
    }

    let out = tempfile::tempdir().unwrap();
    let issued = ca.issue("1234", out.path()).await;
    assert!(!issued.status.success(), "{}", text(&issued));
    assert!(
        text(&issued).contains("serverInternal"),
        "the issue command names the problem: {}",
        text(&issued)
    );

    let stats = ca.stats().await;
    assert!(stats["injected_errors"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(stats["orders"], 0, "{stats}");
    ca.wait_for_log(&[
        "devca",
        "fault: injected error",
        "step=\"directory\"",
        "status=503",
    ])
    .await;
}

/// Errors limited to one step (`--error-steps new-order`, 429 `rateLimited`): the rest of the
/// flow works, newOrder is refused, no order is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_steps_limit_injected_errors_to_one_step() {
    let ca = Devca::start(&[
        "--error-rate",
        "100",
        "--error-steps",
        "new-order",
        "--error-status",
        "429",
        "--error-type",
        "rateLimited",
        "--retry-after",
        "30",
    ]);
    let http = ca.http(Duration::from_secs(10));
    assert_eq!(http.get(&ca.directory).send().await.unwrap().status(), 200);

    let out = tempfile::tempdir().unwrap();
    let issued = ca.issue("1234", out.path()).await;
    assert!(!issued.status.success(), "{}", text(&issued));
    assert!(text(&issued).contains("rateLimited"), "{}", text(&issued));
    let stats = ca.stats().await;
    assert_eq!(stats["orders"], 0, "{stats}");
    assert_eq!(stats["injected_errors"], 1, "{stats}");
    ca.wait_for_log(&["fault: injected error", "step=\"new-order\"", "status=429"])
        .await;
}

/// `--latency directory=…` holds the directory at least that long and nothing else;
/// `--sti-pa-latency` holds the STI-PA API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_per_step_and_a_slow_sti_pa() {
    let ca = Devca::start(&["--latency", "directory=800ms", "--sti-pa-latency", "600ms"]);
    let http = ca.http(Duration::from_secs(10));
    // One connection for everything: the handshake is paid before the clock starts.
    ca.stats().await;
    http.get(&ca.stats).send().await.unwrap();

    let started = Instant::now();
    assert_eq!(http.get(&ca.directory).send().await.unwrap().status(), 200);
    let directory = started.elapsed();
    assert!(directory >= Duration::from_millis(800), "{directory:?}");

    let nonce_url = ca.directory.replace("/acme/directory", "/acme/new-nonce");
    let started = Instant::now();
    assert_eq!(http.head(&nonce_url).send().await.unwrap().status(), 200);
    let nonce = started.elapsed();
    assert!(
        nonce < Duration::from_millis(800),
        "newNonce delayed too: {nonce:?}"
    );

    let login = format!("{}api/v1/auth/login", ca.sti_pa);
    let started = Instant::now();
    let resp = http
        .post(&login)
        .json(&serde_json::json!({"userId": "dev", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let sti_pa = started.elapsed();
    assert!(sti_pa >= Duration::from_millis(600), "{sti_pa:?}");

    // An issuance still works, only slower.
    let out = tempfile::tempdir().unwrap();
    let issued = ca.issue("1234", out.path()).await;
    assert!(issued.status.success(), "{}", text(&issued));
}

/// `--hang new-order`: newOrder is never answered (the client times out), the counters
/// endpoint still answers at once and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_never_answers_the_step() {
    let ca = Devca::start(&["--hang", "new-order"]);
    let http = ca.http(Duration::from_secs(1));
    let new_order = ca.directory.replace("/acme/directory", "/acme/new-order");
    let started = Instant::now();
    let err = http
        .post(&new_order)
        .body("{}")
        .send()
        .await
        .expect_err("newOrder hangs");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Other steps answer.
    assert_eq!(http.get(&ca.directory).send().await.unwrap().status(), 200);
    let stats = ca.stats().await;
    assert_eq!(stats["hung_requests"], 1, "{stats}");
    ca.wait_for_log(&["fault: request left hanging", "step=\"new-order\""])
        .await;
}

/// `--bad-nonce-rate 100`: every signed request gets `badNonce`; the ACME client retries
/// with the fresh nonce a few times, then reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nonce_rate_rejects_signed_requests() {
    let ca = Devca::start(&["--bad-nonce-rate", "100"]);
    let out = tempfile::tempdir().unwrap();
    let issued = ca.issue("1234", out.path()).await;
    assert!(!issued.status.success(), "{}", text(&issued));
    assert!(text(&issued).contains("badNonce"), "{}", text(&issued));
    let stats = ca.stats().await;
    assert!(
        stats["bad_nonces"].as_u64().unwrap() >= 2,
        "retried: {stats}"
    );
    assert_eq!(stats["orders"], 0, "{stats}");
}

/// Without faults, the counters endpoint and the event log show one issuance per SPC and
/// each revocation; the CRL carries reasonCode `superseded` for a certificate revoked as
/// superseded and no reasonCode for one revoked as unspecified (RFC 5280 §5.3.1), as
/// `openssl crl` reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_log_follow_an_issuance_and_the_crl_carries_reasons() {
    let ca = Devca::start(&[]);
    assert!(
        ca.banner
            .iter()
            .any(|l| l.starts_with("faults:") && l.contains("none")),
        "{:#?}",
        ca.banner
    );
    let before = ca.stats().await;
    assert_eq!(before["orders"], 0);

    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (spc, out) in [("1234", &a), ("5678", &b)] {
        let issued = ca.issue(spc, out.path()).await;
        assert!(issued.status.success(), "{}", text(&issued));
    }
    let stats = ca.stats().await;
    for (key, want) in [
        ("orders", 2),
        ("authorizations", 2),
        ("challenges_validated", 2),
        ("challenges_invalid", 0),
        ("finalizes", 2),
        ("certificates", 2),
        ("revocations", 0),
        ("sti_pa_tokens", 2),
    ] {
        assert_eq!(stats[key], want, "{key}: {stats}");
    }
    assert_eq!(stats["identifiers"]["spc:1234"]["orders"], 1, "{stats}");
    assert_eq!(
        stats["identifiers"]["spc:1234"]["certificates"], 1,
        "{stats}"
    );
    assert_eq!(stats["identifiers"]["spc:5678"]["orders"], 1, "{stats}");
    ca.wait_for_log(&[" INFO devca: account created account="])
        .await;
    for event in [
        "order created",
        "authorization created",
        "challenge valid",
        "certificate issued",
    ] {
        ca.wait_for_log(&[" INFO devca: ", event, "spc:1234"]).await;
    }
    ca.wait_for_log(&[" INFO devca: STI-PA SPC token issued", "spc=5678"])
        .await;

    let serial = |out: &tempfile::TempDir| {
        let pem = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
        let der = certbroker::shaken::parse_pem_chain(&pem).unwrap();
        certbroker::shaken::CertInfo::parse(&der[0])
            .unwrap()
            .serial_hex
            .trim_start_matches('0')
            .to_ascii_uppercase()
    };
    for (out, reason) in [(&a, "4"), (&b, "0")] {
        let revoked = tokio::process::Command::new(common::bin())
            .args(["revoke-cert", "--directory", &ca.directory])
            .args(["--trust-root", &ca.trust_root])
            .arg("--account-key")
            .arg(out.path().join("account.pem"))
            .arg("--cert")
            .arg(out.path().join("cert.pem"))
            .args(["--reason", reason])
            .env("RUST_LOG", "off")
            .output()
            .await
            .unwrap();
        assert!(revoked.status.success(), "{}", text(&revoked));
    }
    let stats = ca.stats().await;
    assert_eq!(stats["revocations"], 2, "{stats}");
    assert_eq!(
        stats["identifiers"]["spc:1234"]["revocations"], 1,
        "{stats}"
    );
    ca.wait_for_log(&["certificate revoked", "spc:1234", "reason=4"])
        .await;

    // The CRL, read by openssl.
    let crl = ca
        .http(Duration::from_secs(10))
        .get(format!("{}download/v1/crl", ca.sti_pa))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crl_path = dir.path().join("devca.crl");
    std::fs::write(&crl_path, &crl).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&crl_path)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    let crl_text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    // One block per revoked certificate: "Serial Number: …" up to the next one.
    let entries: Vec<&str> = crl_text.split("Serial Number:").skip(1).collect();
    assert_eq!(entries.len(), 2, "{crl_text}");
    let entry = |serial: &str| {
        *entries
            .iter()
            .find(|e| {
                e.split_whitespace()
                    .next()
                    .is_some_and(|s| s.trim_start_matches('0').eq_ignore_ascii_case(serial))
            })
            .unwrap_or_else(|| panic!("serial {serial} not in the CRL: {crl_text}"))
    };
    let superseded = entry(&serial(&a));
    assert!(
        superseded.contains("X509v3 CRL Reason Code") && superseded.contains("Superseded"),
        "{crl_text}"
    );
    let unspecified = entry(&serial(&b));
    assert!(
        !unspecified.contains("Reason Code"),
        "no reasonCode for unspecified: {crl_text}"
    );
}
