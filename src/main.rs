//! The `certbroker` binary: see `certbroker --help`.

fn main() -> std::process::ExitCode {
    match certbroker::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", certbroker::cli::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
