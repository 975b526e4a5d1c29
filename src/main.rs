//! The `certbroker` binary: see `certbroker --help`.

/// The allocator of the broker binary (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match certbroker::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", certbroker::cli::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
