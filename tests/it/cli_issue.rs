//! `certbroker devca` + `certbroker issue`, and `certbroker issue`/`revoke-cert` against a
//! real Pebble, run as the README tells a new user to.

use crate::support::common;
use crate::support::pebble as support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use support::{Pebble, PebbleOptions};

use common::DevcaProcess as Devca;

fn start_devca() -> Devca {
    start_devca_with(&[])
}

fn start_devca_with(extra: &[&str]) -> Devca {
    let ca = Devca::start(extra, false, |c| {
        c.env("RUST_LOG", "warn");
    });
    assert!(!ca.directory.is_empty() && !ca.sti_pa.is_empty() && !ca.trust_root.is_empty());
    ca
}

fn run(cmd: &mut Command) -> String {
    run_both(cmd).0
}

/// Runs to success; (stdout, stderr).
fn run_both(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("command runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?}\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// `certbroker issue` against `ca` with these identifier flags, writing to `out`.
fn issue(ca: &Devca, ids: &[&str], out: &std::path::Path) -> std::process::Output {
    let password = std::fs::read_to_string(&ca.password_file).expect("password file");
    Command::new(common::bin())
        .env_remove("RUST_LOG")
        .args([
            "issue",
            "--directory",
            &ca.directory,
            "--trust-root",
            &ca.trust_root,
        ])
        .args(ids)
        .args([
            "--sti-pa",
            &ca.sti_pa,
            "--sti-pa-user",
            "dev",
            "--sti-pa-password-env",
            "STI_PA_PASSWORD",
        ])
        .arg("--out")
        .arg(out)
        .env("STI_PA_PASSWORD", password.trim())
        .output()
        .expect("certbroker issue runs")
}

#[test]
fn devca_profile_and_tn_list_flags() {
    // Default: US SHAKEN CP 1.3 and one SPC only (ATIS-1000080 v005).
    let strict = start_devca();
    let out = tempfile::tempdir().unwrap();
    let refused = issue(&strict, &["--tn", "12155551212"], out.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("rejectedIdentifier") && stderr.contains("exactly one SPC"),
        "{stderr}"
    );

    let ca = start_devca_with(&["--profile", "cp1.4", "--allow-tn-lists"]);
    let done = issue(&ca, &["--spc", "1234", "--tn", "12155551212"], out.path());
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let chain = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
    let der = certbroker::shaken::parse_pem_chain(&chain).unwrap();
    let leaf = certbroker::shaken::CertInfo::parse(&der[0]).unwrap();
    assert_eq!(leaf.policy_oids, vec!["2.16.840.1.114569.1.1.4".to_owned()]);
    assert_eq!(leaf.tn_auth_list.unwrap().entries().len(), 2);
}

#[test]
fn devca_then_issue_spc_1234() {
    let ca = start_devca();
    let out = tempfile::tempdir().unwrap();
    let issued = issue(&ca, &["--spc", "1234"], out.path());
    let stdout = String::from_utf8_lossy(&issued.stdout).to_string();
    let stderr = String::from_utf8_lossy(&issued.stderr).to_string();
    assert!(issued.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("serial:") && stdout.contains("notAfter:") && stdout.contains("issuer:"),
        "{stdout}"
    );
    let not_after = stdout
        .lines()
        .find_map(|l| l.strip_prefix("notAfter:"))
        .unwrap()
        .trim();
    time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("notAfter {not_after:?} is not RFC 3339: {e}"));
    // Each ACME step on stderr, in order, as lego logs them.
    let mut rest = stderr.as_str();
    for step in [
        "acme: account ready",
        "acme: order placed",
        "acme: authorization",
        "acme: answering tkauth-01 challenge",
        "acme: authorization valid",
        "acme: finalizing order",
        "acme: certificate downloaded",
    ] {
        let at = rest
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in\n{stderr}"));
        rest = &rest[at + step.len()..];
    }

    // cert.pem is the leaf alone (certbot's layout); fullchain.pem adds the intermediate.
    let cert_pem = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
    assert_eq!(cert_pem.matches("BEGIN CERTIFICATE").count(), 1);
    let chain = std::fs::read_to_string(out.path().join("fullchain.pem")).unwrap();
    assert_eq!(
        chain,
        cert_pem + &std::fs::read_to_string(out.path().join("chain.pem")).unwrap()
    );
    let root = std::fs::read_to_string(ca.state_dir.path().join("shaken-root.pem")).unwrap();
    common::openssl_verify(&chain, &root).expect("chain verifies up to the devca root");
    // The README's check, as written there.
    let root_file = ca.state_dir.path().join("shaken-root.pem");
    let verified = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_file)
        .arg("-untrusted")
        .arg(out.path().join("chain.pem"))
        .arg(out.path().join("cert.pem")));
    assert!(verified.trim_end().ends_with(": OK"), "{verified}");

    // The leaf's TNAuthList extension is DER 3008a006160431323334 (MAigBhYEMTIzNA==).
    let der = certbroker::shaken::parse_pem_chain(&chain).unwrap();
    let leaf = certbroker::shaken::CertInfo::parse(&der[0]).unwrap();
    assert_eq!(
        hex::encode(leaf.tn_auth_list.unwrap().to_der()),
        "3008a006160431323334"
    );

    // key.pem matches the leaf.
    let pubkey = |args: &[&str]| run(Command::new("openssl").args(args));
    let cert = out.path().join("cert.pem");
    let key = out.path().join("key.pem");
    assert_eq!(
        pubkey(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]),
        pubkey(&["pkey", "-in", key.to_str().unwrap(), "-pubout"])
    );
}

/// A port that was free a moment ago: the devca must know where `certbroker issue` will
/// serve http-01 before that process binds it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `dns` over real http-01: the devca fetches the key authorization from the broker's own
/// responder (`--http01-listen`), on the port the devca was told (`--http01-port`).
#[test]
fn devca_then_issue_dns_over_http01() {
    let port = free_port().to_string();
    let ca = start_devca_with(&["--http01-port", &port]);
    let issue = |listen: &str, out: &std::path::Path| {
        Command::new(common::bin())
            .args(["issue", "--directory", &ca.directory, "--trust-root"])
            .arg(&ca.trust_root)
            .args(["--dns", "sip.example.test", "--http01-listen", listen])
            .args(["--timeout", "30", "--out"])
            .arg(out)
            .output()
            .expect("certbroker issue runs")
    };
    let out = tempfile::tempdir().unwrap();
    let ok = issue(&format!("127.0.0.1:{port}"), out.path());
    assert!(
        ok.status.success(),
        "{}
{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let chain = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
    let der = certbroker::shaken::parse_pem_chain(&chain).unwrap();
    let leaf = certbroker::shaken::CertInfo::parse(&der[0]).unwrap();
    assert_eq!(leaf.dns_names, vec!["sip.example.test".to_owned()]);

    // The responder on another port than the devca fetches from: the authorization fails.
    let out = tempfile::tempdir().unwrap();
    let bad = issue(&format!("127.0.0.1:{}", free_port()), out.path());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success(),
        "issued without a reachable http-01 answer"
    );
    assert!(
        stderr.contains("connection") || stderr.contains("unauthorized"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_and_revoke_against_pebble() {
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject_percent: 50,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pebble-tls-root.pem");
    std::fs::write(&root, certbroker_pem(&pebble.tls_root)).unwrap();
    let directory = pebble.directory_url.to_string();
    let out = dir.path().join("out");

    // Pebble has terms of service: issue asks for agreement first, as lego and certbot do.
    let refused = tokio::task::block_in_place(|| {
        Command::new(common::bin())
            .args(["issue", "--directory", &directory, "--trust-root"])
            .arg(&root)
            .args(["--dns", "example.test", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("terms of service") && stderr.contains("--accept-tos"),
        "{stderr}"
    );
    assert!(!out.join("cert.pem").exists());

    let stdout = tokio::task::block_in_place(|| {
        run(Command::new(common::bin())
            .args([
                "issue",
                "--agree-tos",
                "--directory",
                &directory,
                "--trust-root",
            ])
            .arg(&root)
            .args(["--dns", "example.test", "--out"])
            .arg(&out))
    });
    let serial = stdout
        .lines()
        .find_map(|l| l.strip_prefix("serial:"))
        .expect("serial printed")
        .trim()
        .trim_start_matches('0')
        .to_owned();
    assert_eq!(pebble.cert_status(&serial).await["Status"], "Valid");

    tokio::task::block_in_place(|| {
        run(Command::new(common::bin())
            .args(["revoke-cert", "--directory", &directory, "--trust-root"])
            .arg(&root)
            .arg("--account-key")
            .arg(out.join("account.pem"))
            .arg("--cert")
            .arg(out.join("cert.pem"))
            .args(["--reason", "4"]))
    });
    let status = pebble.cert_status(&serial).await;
    assert_eq!(status["Status"], "Revoked", "{status}");
}

fn certbroker_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}

/// The broker agrees to a CA's terms of service only when its `[[ca]]` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_agrees_to_terms_of_service_only_when_configured() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pebble-tls-root.pem");
    std::fs::write(&root, certbroker_pem(&pebble.tls_root)).unwrap();
    let get = |accept: bool| {
        let config = dir.path().join(format!("broker-{accept}.toml"));
        std::fs::write(
            &config,
            format!(
                "[store]\nbackend = \"memory\"\n[[ca]]\nname = \"pebble\"\n\
                 directory = \"{dir}\"\ntrust_roots = \"{root}\"\n\
                 account_key = \"account-{accept}.pem\"\n{tos}",
                dir = pebble.directory_url,
                root = root.display(),
                tos = if accept {
                    "accept_terms_of_service = true\n"
                } else {
                    ""
                },
            ),
        )
        .unwrap();
        let mut server = Command::new(common::bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("certbroker listening on ")
                    .map(str::to_owned)
            })
            .expect("serve prints its address");
        let out = Command::new(common::bin())
            .args(["get", "--addr", &addr, "--dns", "tos.example.test"])
            .output()
            .unwrap();
        let _ = server.kill();
        let _ = server.wait();
        out
    };

    let refused = tokio::task::block_in_place(|| get(false));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("terms of service") && stderr.contains("accept_terms_of_service = true"),
        "{stderr}"
    );
    let agreed = tokio::task::block_in_place(|| get(true));
    let stdout = String::from_utf8_lossy(&agreed.stdout);
    assert!(
        agreed.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&agreed.stderr)
    );
    assert!(
        stdout.contains("cache_status: CACHE_STATUS_ISSUED"),
        "{stdout}"
    );
}
