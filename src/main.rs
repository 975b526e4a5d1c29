//! The `certbroker` binary: see `certbroker --help`.

fn main() -> anyhow::Result<()> {
    certbroker::cli::main()
}
