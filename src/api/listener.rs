//! The TLS side of the gRPC listener: a rustls server configuration built from
//! `[server.tls]` PEM files, re-read every `reload_interval_secs` and swapped in for new
//! connections when the files change, and the stream of handshaken connections tonic
//! serves.
//!
//! With `client_ca` set the handshake itself refuses clients without a certificate from
//! that CA bundle, so an unauthenticated client never reaches a service.

use std::{sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::{config::ServerTlsSettings, tls};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenerTlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("server.tls: {0}")]
    Material(#[from] tls::TlsError),
    /// The private key file holds no key.
    #[error("server.tls.key {0}: no PEM private key found")]
    NoKey(String),
    /// rustls refused the combination (key does not match the certificate, bad CA).
    #[error("server.tls: {0}")]
    Rustls(String),
}

/// The current server configuration, replaced when the files change.
#[derive(Debug, Clone)]
pub struct ReloadingTls {
    current: watch::Receiver<Arc<ServerConfig>>,
}

/// The raw file contents a configuration was built from, to notice changes.
#[derive(PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

// === impl ReloadingTls ===

impl ReloadingTls {
    /// Loads the files (failing start-up if they are unusable) and starts the reload task,
    /// which lives as long as any clone of the returned value.
    pub fn start(settings: &ServerTlsSettings) -> Result<Self, ListenerTlsError> {
        tls::init();
        let material = Material::read(settings)?;
        let config = material.build(settings)?;
        let (tx, rx) = watch::channel(config);
        let settings = settings.clone();
        tokio::spawn(async move {
            let mut loaded = material;
            let mut tick = tokio::time::interval(settings.reload_interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => break,
                }
                let fresh = match Material::read(&settings) {
                    Ok(m) if m == loaded => continue,
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "server.tls: cannot re-read; keeping the current certificate");
                        continue;
                    }
                };
                match fresh.build(&settings) {
                    Ok(config) => {
                        tracing::info!(cert = %settings.cert.display(), "server.tls: reloaded certificate material");
                        loaded = fresh;
                        if tx.send(config).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "server.tls: new material unusable; keeping the current one")
                    }
                }
            }
        });
        Ok(Self { current: rx })
    }

    /// The configuration new connections use now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.borrow().clone()
    }

    /// Accepts TCP connections on `listener`, completes TLS handshakes concurrently and
    /// yields the established connections. Failed handshakes (no or untrusted client
    /// certificate) are logged and dropped.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    () = tx.closed() => break,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Transient (EMFILE, ECONNABORTED): back off briefly and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(self.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

// === impl Material ===

impl Material {
    fn read(s: &ServerTlsSettings) -> Result<Self, tls::TlsError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| tls::TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert: read(&s.cert)?,
            key: read(&s.key)?,
            client_ca: s.client_ca.as_deref().map(read).transpose()?,
        })
    }

    fn build(&self, s: &ServerTlsSettings) -> Result<Arc<ServerConfig>, ListenerTlsError> {
        let chain = tls::certs_from_pem(&self.cert, &s.cert.display().to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|_| ListenerTlsError::NoKey(s.key.display().to_string()))?;
        let builder = ServerConfig::builder();
        let mut config = match &self.client_ca {
            Some(pem) => {
                let what = s
                    .client_ca
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                builder
                    .with_client_cert_verifier(client_verifier(pem, &what)?)
                    .with_single_cert(chain, key)
            }
            None => builder.with_no_client_auth().with_single_cert(chain, key),
        }
        .map_err(|e| ListenerTlsError::Rustls(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn client_verifier(
    pem: &[u8],
    what: &str,
) -> Result<Arc<dyn ClientCertVerifier>, ListenerTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in tls::certs_from_pem(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| ListenerTlsError::Rustls(format!("{what}: {e}")))?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| ListenerTlsError::Rustls(format!("{what}: {e}")))
}
