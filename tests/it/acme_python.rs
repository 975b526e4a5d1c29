//! The devca as an ACME server, driven by a client no one here wrote: certbot's `acme`
//! library (tests/python/acme_devca.py). Accounts, a TNAuthList order over tkauth-01 with a
//! token from the devca's STI-PA, finalize, download, revoke, keyChange, deactivation, a dns
//! order over real http-01 against the script's own responder, the RFC 8555 error cases,
//! and STAR (RFC 8739) and newAuthz, posted as raw JSON through the library's JWS client.

use std::{process::Stdio, time::Duration};

use certbroker::devca::{DevCa, DevCaSettings};
use secrecy::ExposeSecret;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

/// How many checks tests/python/acme_devca.py makes; update it with the script.
const CHECKS: usize = 75;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_acme_library_drives_the_devca() {
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/acme_devca.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    // Drained alongside stdout, so that a chatty stderr never blocks the script.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr_pipe, &mut s).await;
        s
    });

    // The script binds its http-01 responder on a free port first and says which.
    let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the script prints its http-01 port within 30 s")
        .expect("readable stdout");
    let Some(port) = first
        .as_deref()
        .and_then(|l| l.strip_prefix("HTTP01_PORT "))
        .and_then(|p| p.trim().parse::<u16>().ok())
    else {
        let _ = child.wait().await;
        panic!(
            "no HTTP01_PORT line (scripts/test installs the `acme` package): {first:?}\n{}",
            stderr.await.unwrap()
        );
    };

    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::start(DevCaSettings {
        state_dir: Some(dir.path().join("devca")),
        http01_port: port,
        ..DevCaSettings::default()
    })
    .await
    .expect("devca starts");
    let (user, password) = ca.sti_pa_credentials();
    let cfg = serde_json::json!({
        "directory": ca.directory_url().as_str(),
        "trust_root": ca.trust_root_path(),
        "sti_pa": ca.sti_pa_url().as_str(),
        "user": user,
        "password": password.expose_secret(),
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{cfg}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);

    let mut lines = Vec::new();
    let read_all = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            lines.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(240), read_all)
        .await
        .expect("the script finishes within 240 s");
    let status = child.wait().await.unwrap();
    let stderr = stderr.await.unwrap();
    let report = lines.join("\n");
    println!("{report}");
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        status.success() && failed.is_empty(),
        "certbot's acme library found RFC 8555 deviations:\n{}\n\nstderr:\n{}",
        failed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        stderr
    );
    let summary = lines
        .iter()
        .find_map(|l| l.strip_prefix("summary: "))
        .expect("a summary line");
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("summary starts with the passed count");
    // Every check in the script ran: a section that dies early reports fewer.
    assert_eq!(passed, CHECKS, "{summary}");
    ca.shutdown().await;
}
