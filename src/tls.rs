//! TLS plumbing shared by every HTTPS client and server in the crate: one crypto provider
//! (ring) and PEM trust-root loading.

use std::{path::Path, sync::Once};

use rustls_pki_types::{CertificateDer, pem::PemObject};

/// Installs ring as the process-wide rustls crypto provider. Idempotent; every TLS entry
/// point calls it, so callers never have to.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM held no certificate or did not parse.
    #[error("{what}: no PEM certificate found")]
    NoCertificate {
        /// Where the PEM came from.
        what: String,
    },
    /// A reqwest client could not be built.
    #[error("building HTTPS client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Parses every certificate in a PEM bundle.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a PEM bundle of trust roots from a file.
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    certs_from_pem(&pem, &path.display().to_string())
}

/// Builds an HTTPS client. With `roots` given, only those roots are trusted (a private CA,
/// the devca, a test Pebble); without, the platform's verifier is used.
pub fn http_client(
    roots: Option<&[CertificateDer<'static>]>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    init();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .user_agent(concat!("certbroker/", env!("CARGO_PKG_VERSION")));
    if let Some(roots) = roots {
        builder = builder.tls_certs_only(
            roots
                .iter()
                .filter_map(|c| reqwest::Certificate::from_der(c).ok()),
        );
    }
    Ok(builder.build()?)
}
