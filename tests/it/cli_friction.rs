//! The CLI as lego and certbot users expect it, each habit run through the binary as a user
//! runs it: plain logs when stderr is not a terminal, `--addr HOST:PORT`, an aligned
//! `status`, errors in words (each once), RFC 3339 times, the conventional certificate
//! files, a `get` timeout, config paths relative to the config file, and a `devca
//! --state-dir` that keeps its roots, password and (asked) port across restarts.

use crate::support::common;

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `certbroker ARGS`, reads stdout until a line starts with `ready`, returns the
/// process, that line's remainder and the lines before it; stdout is drained afterwards.
fn start(args: &[&str], cwd: Option<&Path>, ready: &str) -> (Proc, String, Vec<String>) {
    let mut cmd = Command::new(common::bin());
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("certbroker starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut before = Vec::new();
    let rest = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{args:?} exited before printing {ready:?}: {before:?}"))
            .unwrap();
        if let Some(rest) = line.strip_prefix(ready) {
            break rest.trim().to_owned();
        }
        before.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), rest, before)
}

fn serve_dev() -> (Proc, String) {
    let (p, addr, _) = start(
        &["serve", "--dev", "--listen", "127.0.0.1:0"],
        None,
        "certbroker (dev mode) listening on ",
    );
    (p, addr)
}

fn cli(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("certbroker runs")
}

fn ok(args: &[&str]) -> String {
    let o = cli(args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in\n{stdout}"))
        .trim()
}

fn pem_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "openssl {args:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let mut child = Command::new(common::bin())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("certbroker (dev mode) listening on ")),
        "serve --dev starts"
    );
    // SIGTERM, not SIGKILL: log lines are written by a writer thread, which the binary
    // drains on a graceful exit; a killed process may not have written them yet.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // Logged before the address is printed.
    assert!(stderr.contains("devca listening"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape in piped logs:\n{stderr:?}"
    );
}

#[test]
fn client_takes_host_port_writes_the_usual_files_aligns_status_and_words_errors() {
    let (_server, addr) = serve_dev();
    assert!(!addr.contains("://"), "{addr}");
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();

    let stdout = ok(&["get", "--addr", &addr, "--spc", "1234", "--out", o]);
    let not_after = field(&stdout, "notAfter:");
    time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("notAfter {not_after:?} is not RFC 3339: {e}"));
    // certbot's layout: the leaf alone, the intermediates, both, and the key.
    let p = |n: &str| out.path().join(n);
    assert_eq!(pem_count(&p("cert.pem")), 1);
    assert_eq!(pem_count(&p("chain.pem")), 1);
    assert_eq!(pem_count(&p("fullchain.pem")), 2);
    assert_eq!(
        std::fs::read_to_string(p("fullchain.pem")).unwrap(),
        std::fs::read_to_string(p("cert.pem")).unwrap()
            + &std::fs::read_to_string(p("chain.pem")).unwrap()
    );
    assert_eq!(
        openssl(&[
            "x509",
            "-in",
            p("cert.pem").to_str().unwrap(),
            "-noout",
            "-pubkey"
        ]),
        openssl(&["pkey", "-in", p("key.pem").to_str().unwrap(), "-pubout"]),
        "key.pem belongs to cert.pem's leaf"
    );
    let serial = field(&stdout, "serial:").to_owned();

    // Columns start where their headers start, whatever the widths.
    let status = ok(&["status", "--addr", &addr]);
    let lines: Vec<&str> = status.lines().collect();
    let row = lines
        .iter()
        .find(|l| l.contains(&serial))
        .unwrap_or_else(|| panic!("{serial} in\n{status}"));
    let header = lines[0];
    assert_eq!(header.find("serial"), row.find(&serial), "\n{status}");
    let row_not_after = row.find(not_after).expect("notAfter in the row, RFC 3339");
    assert_eq!(header.find("notAfter"), Some(row_not_after), "\n{status}");
    let next = header.find("next renewal").unwrap();
    assert!(
        row[next..].starts_with(|c: char| c.is_ascii_digit()),
        "next renewal column:\n{status}"
    );

    // Errors in words: the message and the gRPC code's name, no Rust debug output.
    let o = cli(&["revoke", "--addr", &addr, "--serial", "ab12"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(
        stderr, "error: no certificate known for serial ab12 (NOT_FOUND)\n",
        "{stderr:?}"
    );
}

#[test]
fn get_gives_up_after_its_timeout() {
    // Accepts connections and never answers: an overloaded or wedged broker.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let help = ok(&["get", "--help"]);
    assert!(
        help.contains("--timeout") && help.contains("[default: 30]"),
        "{help}"
    );
    let started = Instant::now();
    let o = cli(&["get", "--addr", &addr, "--spc", "1234", "--timeout", "1"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(stderr.contains("within 1s"), "{stderr}");
}

#[test]
fn a_config_error_is_printed_once_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "[server]\nlistn = \"127.0.0.1:50051\"\n").unwrap();
    let o = cli(&["serve", "--config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.matches("unknown field").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("Caused by") && !stderr.contains("Error {"),
        "{stderr}"
    );
}

/// A standalone devca: (process, directory URL, password file, config written).
fn devca(state: &Path, config: &Path) -> (Proc, String, PathBuf) {
    let (p, _, before) = start(
        &[
            "devca",
            "--listen",
            "127.0.0.1:0",
            "--keep-port",
            "--state-dir",
            state.to_str().unwrap(),
            "--write-config",
            config.to_str().unwrap(),
        ],
        None,
        "press Ctrl-C to stop",
    );
    let directory = before
        .iter()
        .find_map(|l| l.strip_prefix("ACME directory:"))
        .unwrap_or_else(|| panic!("{before:?}"))
        .trim()
        .to_owned();
    (p, directory, state.join("sti-pa-password"))
}

fn serve_config(config: &Path, cwd: &Path) -> (Proc, String) {
    let (p, addr, _) = start(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        Some(cwd),
        "certbroker listening on ",
    );
    (p, addr)
}

#[test]
fn devca_state_dir_keeps_roots_password_and_port_so_its_config_stays_valid() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("broker.toml");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();

    let (first, directory, password_file) = devca(&state, &config);
    let (password, tls_root, shaken_root) = (
        read(&password_file),
        read(&state.join("tls-root.pem")),
        read(&state.join("shaken-root.pem")),
    );
    let first_config = read(&config);
    drop(first);

    let (_second, directory_again, _) = devca(&state, &config);
    assert_eq!(
        directory_again, directory,
        "--keep-port: same port, same URL"
    );
    assert_eq!(read(&password_file), password, "same STI-PA password");
    assert_eq!(read(&state.join("tls-root.pem")), tls_root, "same TLS root");
    assert_eq!(
        read(&state.join("shaken-root.pem")),
        shaken_root,
        "same SHAKEN root"
    );

    // The configuration the first run wrote works against the second.
    let old = dir.path().join("first.toml");
    std::fs::write(&old, first_config).unwrap();
    let (_broker, addr) = serve_config(&old, dir.path());
    let stdout = ok(&["get", "--addr", &addr, "--spc", "1234"]);
    assert_eq!(field(&stdout, "cache_status:"), "CACHE_STATUS_ISSUED");
}

#[test]
fn relative_paths_in_a_config_file_resolve_against_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("roots")).unwrap();
    let written = dir.path().join("written.toml");
    let (_devca, _, _) = devca(&state, &written);

    // The written configuration, with its files next to it under relative names.
    std::fs::copy(state.join("tls-root.pem"), etc.join("roots/tls-root.pem")).unwrap();
    let text: String = std::fs::read_to_string(&written)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("trust_roots = ") {
                "trust_roots = \"roots/tls-root.pem\"".to_owned()
            } else if l.starts_with("account_key = ") {
                "account_key = \"keys/devca-account.pem\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert!(text.contains("roots/tls-root.pem") && text.contains("keys/devca-account.pem"));
    std::fs::create_dir_all(etc.join("keys")).unwrap();
    let config = etc.join("broker.toml");
    std::fs::write(&config, text).unwrap();

    // Started from elsewhere, as systemd or a container would.
    let cwd = tempfile::tempdir().unwrap();
    let (_broker, addr) = serve_config(&config, cwd.path());
    let stdout = ok(&["get", "--addr", &addr, "--spc", "1234"]);
    assert_eq!(field(&stdout, "cache_status:"), "CACHE_STATUS_ISSUED");
    assert!(
        etc.join("keys/devca-account.pem").exists(),
        "account key next to the config"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing written to the working directory"
    );
}
