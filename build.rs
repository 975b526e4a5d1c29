//! Compiles `proto/` into Rust with tonic-prost-build, plus a descriptor set for server
//! reflection. Needs `protoc` on PATH (the README's set-up command installs
//! `protobuf-compiler`); set `PROTOC` to point elsewhere.
//!
//! Two passes: the messages and the server, whose codec answers an undecodable request
//! with INVALID_ARGUMENT (`crate::api::codec::ServerCodec`); then the client alone, over
//! the same messages, with tonic-prost's own codec (an undecodable *answer* is not the
//! caller's fault).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/certbroker/v1/broker.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::api::codec::ServerCodec")
        .file_descriptor_set_path(out_dir.join("certbroker_descriptor.bin"))
        .compile_protos(&["proto/certbroker/v1/broker.proto"], &["proto"])?;
    let client_dir = out_dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&client_dir)
        .extern_path(".certbroker.v1", "crate::pb")
        .compile_protos(&["proto/certbroker/v1/broker.proto"], &["proto"])?;
    Ok(())
}
