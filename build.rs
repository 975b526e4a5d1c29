//! Compiles `proto/` into Rust with tonic-prost-build, plus a descriptor set for server
//! reflection. Needs `protoc` on PATH (the README's set-up command installs
//! `protobuf-compiler`); set `PROTOC` to point elsewhere.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/certbroker/v1/broker.proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("certbroker_descriptor.bin"))
        .compile_protos(&["proto/certbroker/v1/broker.proto"], &["proto"])?;
    Ok(())
}
