//! Compiles `proto/` into Rust with tonic-prost-build, plus a descriptor set for server
//! reflection. No system `protoc` is needed: protox, a protobuf compiler written in Rust,
//! parses the files (it carries the `google/protobuf/*` well-known types) and writes the
//! descriptor set that tonic-prost-build then generates code from.
//!
//! Two passes over that one descriptor set: the messages and the server, whose codec answers
//! an undecodable request with INVALID_ARGUMENT (`crate::api::codec::ServerCodec`); then the
//! client alone, over the same messages, with tonic-prost's own codec (an undecodable
//! *answer* is not the caller's fault).

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    build_info();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/certbroker/v1/broker.proto");
    let protos = ["proto/certbroker/v1/broker.proto"];
    let includes = ["proto"];
    // The same descriptor set `protoc --include_imports --include_source_info -o` writes:
    // imports included (reflection serves them), source info kept (doc comments in the code).
    let fds = protox::compile(protos, includes)?;
    let descriptor = out_dir.join("certbroker_descriptor.bin");
    std::fs::write(&descriptor, fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::api::codec::ServerCodec")
        .file_descriptor_set_path(&descriptor)
        .skip_protoc_run()
        .compile_protos(&protos, &includes)?;
    let client_dir = out_dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&client_dir)
        .extern_path(".certbroker.v1", "crate::pb")
        .file_descriptor_set_path(&descriptor)
        .skip_protoc_run()
        .compile_protos(&protos, &includes)?;
    Ok(())
}

/// The labels of `certbroker_build_info`: the compiler's version (asked of `$RUSTC`, which
/// cargo sets) and the commit, when the build environment names one in
/// `CERTBROKER_GIT_COMMIT` (e.g. a CI or `docker build --build-arg`); no git needed.
fn build_info() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CERTBROKER_BUILD_RUSTC={version}");
    println!("cargo:rerun-if-env-changed=CERTBROKER_GIT_COMMIT");
    let git = env::var("CERTBROKER_GIT_COMMIT").unwrap_or_default();
    println!("cargo:rustc-env=CERTBROKER_BUILD_GIT={}", git.trim());
}
