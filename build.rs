//! Compiles `proto/` into Rust with tonic-prost-build, plus a descriptor set for server
//! reflection. No system `protoc` is needed: protox, a protobuf compiler written in Rust,
//! parses the files (it carries the `google/protobuf/*` well-known types) and writes the
//! descriptor set that tonic-prost-build then generates code from.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
        .file_descriptor_set_path(&descriptor)
        .skip_protoc_run()
        .compile_protos(&protos, &includes)?;
    Ok(())
}
