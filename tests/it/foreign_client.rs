//! The README's quick start, as a new user runs it: `certbroker serve --dev`, then a client
//! no one here wrote (Python grpcio via server reflection) and the `certbroker get` CLI.

use crate::support::common;

use std::{process::Command, time::Duration};

fn serve_dev() -> common::DevServer {
    common::serve_dev(|c| {
        c.env("RUST_LOG", "warn");
    })
}

/// Runs `tests/python/<script>` with `args`; its stdout and the JSON object on each line.
fn python_client(script: &str, args: &[&str]) -> (String, Vec<serde_json::Value>) {
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/python/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed (scripts/test installs grpcio):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    (stdout.into_owned(), calls)
}

#[test]
fn python_grpcio_via_reflection_gets_a_shaken_chain() {
    let server = serve_dev();
    let (_, calls) = python_client("reflect_client.py", &[&server.addr, "1234"]);
    assert_eq!(calls[0]["cache_status"], "CACHE_STATUS_ISSUED");
    assert_eq!(calls[1]["cache_status"], "CACHE_STATUS_HIT_LOCAL");
    assert_eq!(calls[0]["serial_hex"], calls[1]["serial_hex"]);
    assert!(calls[0]["key_len"].as_u64().unwrap() > 100);
    let chain = calls[0]["chain_pem"].as_str().unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(calls[2]["code"], "INVALID_ARGUMENT");
    assert!(
        calls[2]["details"]
            .as_str()
            .unwrap()
            .contains("tn_auth_list[0].spc")
    );
}

#[test]
fn cli_get_writes_chain_and_matching_key_then_sigterm_stops_the_server() {
    let mut server = serve_dev();
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args([
            "get",
            "--addr",
            &format!("http://{}", server.addr),
            "--spc",
            "1234",
            "--out",
        ])
        .arg(out_dir.path())
        .output()
        .expect("certbroker get runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cache_status: CACHE_STATUS_ISSUED"),
        "{stdout}"
    );

    // The key in key.pem belongs to the leaf in cert.pem.
    let pubkey = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let cert = out_dir.path().join("cert.pem");
    let key = out_dir.path().join("key.pem");
    assert_eq!(
        pubkey(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]),
        pubkey(&["pkey", "-in", key.to_str().unwrap(), "-pubout"])
    );

    // The renewal scheduler now tracks it, and `certbroker status` shows it.
    let serial = stdout
        .lines()
        .find_map(|l| l.strip_prefix("serial:"))
        .expect("serial printed")
        .trim()
        .to_owned();
    let status = Command::new(common::bin())
        .args(["status", "--addr", &format!("http://{}", server.addr)])
        .output()
        .unwrap();
    let status_out = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && status_out.contains(&serial),
        "{status_out}"
    );

    // Bad input through the CLI names the field.
    let bad = Command::new(common::bin())
        .args([
            "get",
            "--addr",
            &format!("http://{}", server.addr),
            "--dns",
            "bad_name",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("(INVALID_ARGUMENT)") && stderr.contains("dns_names[0]"),
        "{stderr}"
    );

    // SIGTERM: the server exits cleanly.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// grpcio (grpc-core's HTTP/2 and its default 16 KiB metadata limit) sends bytes that are not
/// protobuf on every method and values beyond every bound: each is INVALID_ARGUMENT with a
/// short message, never INTERNAL and never a metadata-size failure.
#[test]
fn python_grpcio_hostile_input_is_invalid_argument() {
    let server = serve_dev();
    let (stdout, calls) = python_client("hostile_client.py", &[&server.addr]);
    assert_eq!(calls.len(), 9, "{stdout}");
    for call in &calls {
        assert_eq!(call["code"], "INVALID_ARGUMENT", "{call}");
        assert!(call["details_len"].as_u64().unwrap() < 300, "{call}");
    }
    for call in &calls[..7] {
        assert_eq!(
            call["details"], "the request message could not be decoded as protobuf",
            "{call}"
        );
    }
}
