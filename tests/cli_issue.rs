//! `certbroker devca` + `certbroker issue`, and `certbroker issue`/`revoke-cert` against a
//! real Pebble, run as the README tells a new user to.

mod common;
#[path = "support/pebble.rs"]
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use support::{Pebble, PebbleOptions};

struct Devca {
    child: Child,
    directory: String,
    sti_pa: String,
    trust_root: String,
    password_file: String,
    state_dir: tempfile::TempDir,
}

impl Drop for Devca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_devca() -> Devca {
    start_devca_with(&[])
}

fn start_devca_with(args: &[&str]) -> Devca {
    let state_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::bin())
        .args(["devca", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state_dir.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("certbroker devca starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut directory, mut sti_pa, mut trust_root, mut password_file) =
        (String::new(), String::new(), String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        let value = |prefix: &str| line.strip_prefix(prefix).map(|v| v.trim().to_owned());
        if let Some(v) = value("ACME directory:") {
            directory = v;
        } else if let Some(v) = value("STI-PA API:") {
            sti_pa = v.split_whitespace().next().unwrap().to_owned();
            password_file = v
                .split("password in ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')')
                .to_owned();
        } else if let Some(v) = value("trust root:") {
            trust_root = v;
        } else if line.starts_with("press Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(!directory.is_empty() && !sti_pa.is_empty() && !trust_root.is_empty());
    Devca {
        child,
        directory,
        sti_pa,
        trust_root,
        password_file,
        state_dir,
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `certbroker issue` against `ca` with these identifier flags, writing to `out`.
fn issue(ca: &Devca, ids: &[&str], out: &std::path::Path) -> std::process::Output {
    let password = std::fs::read_to_string(&ca.password_file).expect("password file");
    Command::new(common::bin())
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
    assert!(
        issued.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    assert!(
        stdout.contains("serial:") && stdout.contains("notAfter:") && stdout.contains("issuer:"),
        "{stdout}"
    );

    let chain = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
    let root = std::fs::read_to_string(ca.state_dir.path().join("shaken-root.pem")).unwrap();
    common::openssl_verify(&chain, &root).expect("chain verifies up to the devca root");

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

    let stdout = tokio::task::block_in_place(|| {
        run(Command::new(common::bin())
            .args(["issue", "--directory", &directory, "--trust-root"])
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
