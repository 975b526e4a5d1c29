//! The `certbroker` command line: `serve`, `devca`, `issue` (one certificate straight from an
//! ACME CA, like `lego run`), `account` (key rollover, deactivation), and the gRPC client
//! commands `get` and `revoke`.

mod account;
mod client;
mod devca;
mod ids;
mod issue;
mod serve;

pub use devca::ca_settings_for;

use clap::{Parser, Subcommand};

/// certbroker: a gRPC certificate broker for STIR/SHAKEN.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (gRPC). `--dev` embeds an STI-PA and STI-CA and needs no config.
    Serve(serve::ServeArgs),
    /// Run the embedded STI-PA + STI-CA standalone, for any ACME client.
    Devca(devca::DevcaArgs),
    /// Obtain one certificate directly from an ACME CA and write it to a directory.
    Issue(Box<issue::IssueArgs>),
    /// Revoke a certificate directly at an ACME CA (the counterpart of `issue`).
    RevokeCert(issue::RevokeCertArgs),
    /// Ask a running broker for a certificate.
    Get(client::GetArgs),
    /// Ask a running broker to revoke a certificate.
    Revoke(client::RevokeArgs),
    /// Show the renewal state of the certificates a running broker keeps fresh.
    Status(client::StatusArgs),
    /// Manage a CA's ACME account: `rollover` (new key), `deactivate`, `show`.
    Account(account::AccountArgs),
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Devca(args) => devca::run(args).await,
            Command::Issue(args) => issue::run(*args).await,
            Command::RevokeCert(args) => issue::revoke_cert(args).await,
            Command::Get(args) => client::get(args).await,
            Command::Revoke(args) => client::revoke(args).await,
            Command::Status(args) => client::status(args).await,
            Command::Account(args) => account::run(args).await,
        }
    });
    // Log lines still queued for the writer thread (telemetry) are written before exit.
    crate::telemetry::drain_logs();
    result
}

/// Resolves on SIGTERM or Ctrl-C (the broker's and certbroker-bench's servers stop on it).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// Writes the conventional set certbot and lego users expect in `dir`: `cert.pem` (the
/// leaf only), `chain.pem` (the intermediates), `fullchain.pem` (leaf then intermediates)
/// and, when given, `key.pem` (PKCS#8, owner-only). Returns the paths written.
pub(crate) fn write_cert_files(
    dir: &std::path::Path,
    chain_der: &[Vec<u8>],
    key_pkcs8: Option<&[u8]>,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
    let (leaf, intermediates) = chain_der
        .split_first()
        .context("the answer holds no certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = pem("CERTIFICATE", leaf);
    let chain: String = intermediates
        .iter()
        .map(|d| pem("CERTIFICATE", d))
        .collect();
    let mut written = Vec::new();
    for (name, text) in [
        ("cert.pem", cert.clone()),
        ("chain.pem", chain.clone()),
        ("fullchain.pem", format!("{cert}{chain}")),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    if let Some(key) = key_pkcs8 {
        let path = dir.join("key.pem");
        let pem = secrecy::SecretString::from(pem("PRIVATE KEY", key));
        crate::ca::write_private(&path, secrecy::ExposeSecret::expose_secret(&pem).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// An error for a person: each message of the chain once (a wrapper that repeats its
/// cause's text does not print it twice), no Rust debug formatting.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut printed: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if printed.iter().any(|p| p.contains(&text)) {
            continue;
        }
        printed.push(text);
    }
    let mut out = format!("error: {}\n", printed.first().map_or("", String::as_str));
    for p in printed.iter().skip(1) {
        out.push_str(&format!("  caused by: {p}\n"));
    }
    out
}

/// PEM-encodes DER under `label`.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_repeated_by_its_wrapper_prints_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Wrapper(#[source] std::io::Error);
        let inner = std::io::Error::other("unknown field `listn` in server");
        let err = anyhow::Error::new(Wrapper(inner)).context("loading broker.toml");
        let text = render_error(&err);
        assert_eq!(
            text,
            "error: loading broker.toml\n  caused by: unknown field `listn` in server\n"
        );
    }
}
