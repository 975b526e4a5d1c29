//! The gRPC contract checked by the ecosystem's own tools, not by this crate: grpcurl (health,
//! reflection, a call, decoded error details) runs exactly the commands the README shows, and
//! buf checks the proto (`buf lint` with the STANDARD rules, `buf breaking` against the
//! previous commit). `./scripts/test` installs both and exports `GRPCURL` and `BUF`.

use crate::support::common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// The address the README's commands use; the test substitutes the server's real one.
const README_ADDR: &str = "127.0.0.1:50051";

fn serve_dev() -> common::DevServer {
    common::serve_dev(|c| {
        c.env("RUST_LOG", "warn");
    })
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from the environment variable `var` (set by scripts/test), else from PATH.
fn tool(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(name), PathBuf::from);
    let found = Command::new(&path)
        .arg(if name == "grpcurl" {
            "-version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} not found (as ${var} or on PATH): ./scripts/test installs it"
    );
    path
}

/// The grpcurl commands of the README's gRPC section, continuation lines joined.
fn readme_grpcurl_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut commands = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        let line = line.trim();
        match current.as_mut() {
            Some(cmd) => cmd.push_str(line.trim_end_matches('\\').trim_end()),
            None if line.starts_with("grpcurl ") => {
                current = Some(line.trim_end_matches('\\').trim_end().to_owned());
            }
            None => continue,
        }
        if line.ends_with('\\') {
            current.as_mut().unwrap().push(' ');
        } else {
            commands.extend(current.take());
        }
    }
    commands
}

/// Runs one README command as a user's shell would, against `addr`, with the grpcurl
/// scripts/test installed first on PATH.
fn run_readme(command: &str, grpcurl: &Path, addr: &str) -> Output {
    let mut path =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    if let Some(dir) = grpcurl.parent().filter(|d| !d.as_os_str().is_empty()) {
        path.insert(0, dir.to_owned());
    }
    let command = command.replace(README_ADDR, addr);
    let command = match grpcurl.file_name() {
        // The README says `grpcurl`; a differently named binary stands in for it.
        Some(n) if n != "grpcurl" => command.replacen("grpcurl", &grpcurl.to_string_lossy(), 1),
        _ => command,
    };
    Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("PATH", std::env::join_paths(path).unwrap())
        .output()
        .expect("sh runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn grpcurl_runs_the_readme_commands() {
    let grpcurl = tool("GRPCURL", "grpcurl");
    let commands = readme_grpcurl_commands();
    let find = |needle: &str| -> &String {
        commands
            .iter()
            .find(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("the README has a grpcurl command with {needle:?}"))
    };
    let health = find("grpc.health.v1.Health/Check");
    let list = find(" list");
    let describe = find(" describe ");
    let get = find(r#""spc":"1234"}]}'"#);
    let invalid = find(r#""ca_pool":"#);
    assert_eq!(
        commands.len(),
        5,
        "every README grpcurl command is checked here: {commands:#?}"
    );

    let server = serve_dev();
    let run = |cmd: &str| text(&run_readme(cmd, &grpcurl, &server.addr));

    let (out, err) = run(health);
    assert!(
        out.contains(r#""status": "SERVING""#),
        "{health}\n{out}{err}"
    );

    let (out, err) = run(list);
    let services: Vec<&str> = out.lines().collect();
    for s in [
        "certbroker.v1.CertificateBrokerService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&s), "{list} lacks {s}:\n{out}{err}");
    }
    // grpcurl lists the reflection service it talks to (v1alpha up to grpcurl 1.8).
    assert!(
        services
            .iter()
            .any(|s| s.starts_with("grpc.reflection.") && s.ends_with(".ServerReflection")),
        "{out}{err}"
    );

    let (out, err) = run(describe);
    for rpc in [
        "rpc GetCertificate ( .certbroker.v1.GetCertificateRequest ) returns ( .certbroker.v1.GetCertificateResponse );",
        "rpc WatchCertificate ( .certbroker.v1.WatchCertificateRequest ) returns ( stream .certbroker.v1.WatchCertificateResponse );",
    ] {
        assert!(out.contains(rpc), "{describe} lacks {rpc}:\n{out}{err}");
    }

    let (out, err) = run(get);
    let answer: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{get}: {e}\n{out}{err}"));
    assert_eq!(answer["cacheStatus"], "CACHE_STATUS_ISSUED", "{out}");
    assert_eq!(
        answer["certificateChainPem"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    assert!(!answer["serialHex"].as_str().unwrap().is_empty());

    // The failure's google.rpc details, decoded through reflection: grpcurl prints
    // "... is not recognized" for a type it cannot resolve.
    let o = run_readme(invalid, &grpcurl, &server.addr);
    let (out, err) = text(&o);
    // grpcurl 1.8 prints each detail as compact JSON, later versions indent it.
    let all = format!("{out}{err}").replace("\": ", "\":");
    assert!(!o.status.success(), "{invalid} fails:\n{all}");
    assert!(all.contains("Code: InvalidArgument"), "{all}");
    assert!(!all.contains("not recognized"), "{all}");
    assert!(
        all.contains(r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#)
            && all.contains(r#""reason":"INVALID_FIELD""#)
            && all.contains(r#""domain":"certbroker""#),
        "ErrorInfo decoded:\n{all}"
    );
    assert!(
        all.contains(r#""@type":"type.googleapis.com/google.rpc.BadRequest""#)
            && all.contains(r#""field":"ca_pool""#),
        "BadRequest decoded:\n{all}"
    );
}

fn buf(args: &[&str], dir: &Path) -> Output {
    Command::new(tool("BUF", "buf"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("buf runs")
}

#[test]
fn buf_lint_passes_with_the_standard_rules() {
    let buf_yaml = std::fs::read_to_string(repo().join("proto/buf.yaml")).expect("proto/buf.yaml");
    assert!(buf_yaml.contains("STANDARD"), "{buf_yaml}");
    let o = buf(&["lint", "proto"], repo());
    let (out, err) = text(&o);
    assert!(o.status.success(), "buf lint proto:\n{out}{err}");
}

/// `buf breaking` against the previous commit's proto, from the first commit that carries
/// proto/buf.yaml on. The previous commit is `HEAD~1` (on a merge, main's side), or
/// `$CERTBROKER_BUF_AGAINST`. A previous commit without proto/buf.yaml predates the buf
/// layout and is no baseline; a clone without the previous commit fails (fetch one deeper).
#[test]
fn buf_breaking_against_the_previous_commit() {
    tool("BUF", "buf");
    let base = std::env::var("CERTBROKER_BUF_AGAINST").unwrap_or_else(|_| "HEAD~1".into());
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo())
            .output()
            .expect("git runs")
    };
    let commit = git(&["rev-parse", "--verify", &format!("{base}^{{commit}}")]);
    assert!(
        commit.status.success(),
        "{base} is not in this clone (a shallow clone needs `git fetch --deepen=1`): {}",
        String::from_utf8_lossy(&commit.stderr)
    );
    let has_buf = git(&["cat-file", "-e", &format!("{base}:proto/buf.yaml")])
        .status
        .success();
    if !has_buf {
        // The commit that introduces the buf layout: nothing to compare with yet. Checked,
        // not assumed: this tree has it and the base does not.
        assert!(repo().join("proto/buf.yaml").exists());
        eprintln!("{base} has no proto/buf.yaml: no baseline for buf breaking yet");
        return;
    }
    let against = tempfile::tempdir().unwrap();
    let archive = git(&["archive", "--format=tar", &base, "proto"]);
    assert!(archive.status.success(), "git archive {base} proto");
    let mut tar = Command::new("tar")
        .arg("-x")
        .current_dir(against.path())
        .stdin(Stdio::piped())
        .spawn()
        .expect("tar runs");
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    assert!(tar.wait().unwrap().success());
    let against = against.path().join("proto");
    let o = buf(
        &["breaking", "proto", "--against", against.to_str().unwrap()],
        repo(),
    );
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "buf breaking against {base}:\n{out}{err}"
    );
}

/// The gate bites: a renumbered field in a copy of the proto is a breaking change.
#[test]
fn buf_breaking_catches_a_renumbered_field() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("proto");
    std::fs::create_dir_all(copy.join("certbroker/v1")).unwrap();
    std::fs::copy(repo().join("proto/buf.yaml"), copy.join("buf.yaml")).unwrap();
    let proto = std::fs::read_to_string(repo().join("proto/certbroker/v1/broker.proto")).unwrap();
    let broken = proto.replacen("string serial_hex = 6;", "string serial_hex = 16;", 1);
    assert_ne!(broken, proto);
    std::fs::write(copy.join("certbroker/v1/broker.proto"), broken).unwrap();
    let o = buf(
        &[
            "breaking",
            copy.to_str().unwrap(),
            "--against",
            repo().join("proto").to_str().unwrap(),
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "buf breaking accepted a renumbered field"
    );
    assert!(out.contains("serial_hex"), "{out}{err}");
}
