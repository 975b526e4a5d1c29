//! The broker's strict review of what CAs return, end to end: two real devcas over HTTPS,
//! the first told to write a profile defect into its certificates
//! (`Behaviour::set_profile_defect`). Without `strict_profile` the certificate is handed out,
//! and the finding is logged at warn, counted in `certbroker_ca_profile_findings_total` and
//! shown by `certbroker status`; with `strict_profile = true` the pool fails over to the next
//! CA, and when no CA is left the caller's error names the finding.
//!
//! The assertions name only the defect the test asked for, so they hold whatever else the
//! devca's own certificates get wrong or right.
//!
//! Its own test binary, not a module of tests/it: it installs the process-wide tracing
//! subscriber to capture the broker's logs, which would take it from every other test there.

// Test code may unwrap: a panic is a failed test (Cargo.toml [lints.clippy]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/support/common.rs"]
mod common;

use std::{
    io::Write,
    process::Command,
    sync::{Arc, Mutex, OnceLock},
};

use certbroker::{
    config::{CaSettings, PoolSettings, Settings},
    devca::ProfileDefect,
    pb,
};
use common::{DevEnv, TestBroker};
use tonic::Code;

/// Everything the broker logs at warn and above, as JSON lines, for every test of this
/// binary (one global subscriber: the broker logs from runtime worker threads).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("warn")
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines() -> Vec<serde_json::Value> {
    let text = String::from_utf8(logs().lock().unwrap().clone()).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ca(env: &DevEnv, name: &str, priority: u32, pools: &[&str], strict: bool) -> CaSettings {
    let mut s = env.ca_settings(name);
    s.priority = priority;
    s.pools = pools.iter().map(|p| (*p).to_owned()).collect();
    s.strict_profile = strict;
    s
}

async fn broker(cas: Vec<CaSettings>) -> TestBroker {
    let mut settings = Settings::from_toml("").expect("defaults");
    settings.ca = cas;
    settings.pool = Vec::<PoolSettings>::new();
    TestBroker::start_settings(settings).await
}

fn request(spc: &str, pool: &str) -> pb::GetCertificateRequest {
    pb::GetCertificateRequest {
        ca_pool: pool.into(),
        ..common::spc_request(spc)
    }
}

fn findings_of(b: &TestBroker, ca: &str) -> std::collections::BTreeMap<String, u64> {
    b.app
        .ca_pool()
        .stats()
        .into_iter()
        .find(|s| s.name == ca)
        .expect("CA is in the pool")
        .profile_findings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_defective_certificate_is_handed_out_logged_counted_and_shown() {
    logs();
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    one.ca
        .behaviour()
        .set_profile_defect(Some(ProfileDefect::NoKeyUsage));
    let b = broker(vec![
        ca(&one, "lax-first", 0, &["default"], false),
        ca(&two, "lax-second", 10, &["default"], false),
    ])
    .await;

    let resp = b
        .client()
        .await
        .get_certificate(request("2001", ""))
        .await
        .expect("the defective certificate is handed out")
        .into_inner();
    assert_eq!(resp.issuer_ca, "lax-first");
    assert_eq!(
        two.ca.stats().new_orders,
        0,
        "no failover without strict_profile"
    );
    // What was handed out really lacks keyUsage (read by openssl, not by the project).
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, &resp.certificate_chain_pem).unwrap();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("1.3.6.1.5.5.7.1.26"),
        "a TNAuthList leaf:\n{text}"
    );
    assert!(!text.contains("X509v3 Key Usage"), "{text}");

    // Counted, by CA and finding, in the pool and in the exposition.
    assert_eq!(
        findings_of(&b, "lax-first").get("key_usage_missing"),
        Some(&1)
    );
    let exposition = b.app.metrics().render(0, 0);
    let line =
        "certbroker_ca_profile_findings_total{ca=\"lax-first\",finding=\"key_usage_missing\"} 1";
    assert!(exposition.contains(line), "missing {line}:\n{exposition}");

    // Logged at warn with CA, serial and finding.
    let logged = log_lines().into_iter().any(|l| {
        l["level"] == "WARN"
            && l["fields"]["ca"] == "lax-first"
            && l["fields"]["finding"] == "key_usage_missing"
            && l["fields"]["serial"]
                .as_str()
                .is_some_and(|s| s.trim_start_matches('0') == resp.serial_hex)
    });
    assert!(logged, "no warn line for the finding: {:?}", log_lines());

    // Shown by the status RPC and by `certbroker status`.
    let status = b.renewals().await;
    let entry = status
        .entries
        .iter()
        .find(|e| e.serial_hex == resp.serial_hex)
        .expect("the certificate is tracked");
    assert_eq!(entry.issuer_ca, "lax-first");
    assert!(
        entry
            .profile_findings
            .iter()
            .any(|f| f.starts_with("key_usage_missing (certificate 0)")),
        "{:?}",
        entry.profile_findings
    );
    let addr = format!("http://{}", b.addr);
    let out = tokio::task::block_in_place(|| {
        Command::new(common::bin())
            .args(["status", "--addr", &addr])
            .output()
            .expect("certbroker runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("finding (ca lax-first): key_usage_missing")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_profile_fails_over_and_names_the_finding_when_no_ca_is_left() {
    logs();
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    one.ca
        .behaviour()
        .set_profile_defect(Some(ProfileDefect::EncodedDefault));
    let b = broker(vec![
        ca(&one, "strict-first", 0, &["default", "solo"], true),
        ca(&two, "strict-fallback", 10, &["default"], false),
    ])
    .await;

    let resp = b
        .client()
        .await
        .get_certificate(request("2002", ""))
        .await
        .expect("the second CA issues")
        .into_inner();
    assert_eq!(resp.issuer_ca, "strict-fallback");
    assert_eq!(
        one.ca.stats().certificates_issued,
        1,
        "the first CA did issue"
    );
    let first = b
        .app
        .ca_pool()
        .stats()
        .into_iter()
        .find(|s| s.name == "strict-first")
        .unwrap();
    assert_eq!(first.successes, 0, "{first:?}");
    assert_eq!(first.failures.get("unavailable"), Some(&1), "{first:?}");
    assert_eq!(first.profile_findings.get("der_encoded_default"), Some(&1));
    let exposition = b.app.metrics().render(0, 0);
    let line = "certbroker_ca_profile_findings_total{ca=\"strict-first\",finding=\"der_encoded_default\"} 1";
    assert!(exposition.contains(line), "missing {line}:\n{exposition}");
    assert!(
        log_lines().into_iter().any(|l| l["level"] == "WARN"
            && l["fields"]["ca"] == "strict-first"
            && l["fields"]["finding"] == "der_encoded_default"),
        "{:?}",
        log_lines()
    );

    // A pool whose only CA is the strict one: the caller sees the finding.
    let err = b
        .client()
        .await
        .get_certificate(request("2003", "solo"))
        .await
        .expect_err("no conforming certificate");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let msg = err.message();
    assert!(
        msg.contains("strict-first")
            && msg.contains("strict_profile")
            && msg.contains("der_encoded_default")
            && msg.contains("cA FALSE"),
        "{msg}"
    );
    assert_eq!(one.ca.stats().certificates_issued, 2);
    assert_eq!(
        two.ca.stats().new_orders,
        1,
        "solo never reaches the second CA"
    );
}
