//! What the scenarios run against: brokers served on port 0 (built the way `App` builds
//! them), the plain-tonic baseline, an embedded devca, and the template issuer that fills
//! caches with copies of one real certificate.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Request, Response, Status};

use certbroker::{
    api,
    app::App,
    broker::{Broker, BrokerOptions, CertRequest, FailureKind, IssueError, IssueRequest, Issuer},
    cert::{CertRecord, Identifiers},
    config::Settings,
    devca::{DevCa, DevCaHandle, DevCaSettings},
    pb::{
        self,
        certificate_broker_service_server::{
            CertificateBrokerService, CertificateBrokerServiceServer,
        },
        tn_auth_entry::Entry,
    },
    shaken::TnAuthList,
    store::{self, Store},
};

/// Base64 of 32 bytes: the bench's own keyring key for keys at rest in Redis.
const BENCH_KEY: &str = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMzI=";

/// A GetCertificate for one SPC.
pub(super) fn spc_request(spc: &str) -> pb::GetCertificateRequest {
    pb::GetCertificateRequest {
        tn_auth_list: vec![pb::TnAuthEntry {
            entry: Some(Entry::Spc(spc.into())),
        }],
        ..Default::default()
    }
}

/// The domain request for one SPC.
pub(super) fn spc_cert_request(spc: &str) -> anyhow::Result<CertRequest> {
    Ok(CertRequest {
        identifiers: Identifiers::TnAuthList(TnAuthList::from_spc(spc)?),
        csr_der: None,
        csr_public_key: None,
        pool: "default".into(),
        min_remaining: None,
        force_renew: false,
        ca: false,
    })
}

// === impl Served ===

/// A gRPC server on a free loopback port, stopped on drop.
#[derive(Debug)]
pub(super) struct Served {
    /// Where it listens.
    pub(super) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Served {
    /// Serves `broker` exactly as `certbroker serve` does ([`api::serve`]).
    pub(super) async fn broker(broker: Broker) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            // The production stack, with the per-caller limits off: the load generator is
            // one caller by design.
            let mut options = api::ServeOptions::from_settings(
                &certbroker::config::ServerSettings::default(),
                &[],
            );
            options.rate_limit_per_sec = 0;
            options.max_concurrent_requests = 1 << 20;
            if let Err(e) = api::serve(broker, listener, options, shutdown).await {
                tracing::error!(error = %e, "bench broker server failed");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
        })
    }

    /// Serves the baseline: the same service, server options and transport as
    /// [`api::serve`], whose handler returns a prepared response without any work.
    pub(super) async fn baseline(response: pb::GetCertificateResponse) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = oneshot::channel::<()>();
        let svc = CertificateBrokerServiceServer::new(Baseline {
            response: Arc::new(response),
        });
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .trace_fn(|req| tracing::info_span!("rpc", path = %req.uri().path()))
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = rx.await;
                    },
                )
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "bench baseline server failed");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The minimal tonic unary service: answers every GetCertificate with the same response.
#[derive(Debug, Clone)]
struct Baseline {
    response: Arc<pb::GetCertificateResponse>,
}

#[tonic::async_trait]
impl CertificateBrokerService for Baseline {
    async fn get_certificate(
        &self,
        _request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        Ok(Response::new(self.response.as_ref().clone()))
    }

    async fn revoke(
        &self,
        _request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline only answers GetCertificate",
        ))
    }

    type WatchCertificateStream = api::CertificateStream;

    async fn watch_certificate(
        &self,
        _request: Request<pb::WatchCertificateRequest>,
    ) -> Result<Response<Self::WatchCertificateStream>, Status> {
        Err(Status::unimplemented(
            "the baseline only answers GetCertificate",
        ))
    }

    async fn list_renewals(
        &self,
        _request: Request<pb::ListRenewalsRequest>,
    ) -> Result<Response<pb::ListRenewalsResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline only answers GetCertificate",
        ))
    }
}

// === impl DevEnv ===

/// An embedded devca and a directory for account keys.
#[derive(Debug)]
pub(super) struct DevEnv {
    /// The devca.
    pub(super) ca: DevCaHandle,
    dir: tempfile::TempDir,
}

impl DevEnv {
    /// Starts a devca.
    pub(super) async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::start(DevCaSettings {
            state_dir: Some(dir.path().join("devca")),
            ..DevCaSettings::default()
        })
        .await
        .context("starting the devca")?;
        Ok(Self { ca, dir })
    }

    /// Broker settings for this devca over `store_toml` (a `[store]` body).
    pub(super) fn settings(&self, store_toml: &str) -> anyhow::Result<Settings> {
        let mut s = Settings::from_toml(&format!(
            "[broker]\ncache_capacity = 1000000\n[store]\n{store_toml}"
        ))?;
        s.ca = vec![certbroker::cli::ca_settings_for(&self.ca, self.dir.path())];
        Ok(s)
    }

    /// A broker for this devca with an in-memory store.
    pub(super) async fn memory_app(&self) -> anyhow::Result<App> {
        App::build(&self.settings("backend = \"memory\"")?).await
    }
}

/// A `[store]` body for the Redis at `url`, with the bench keyring.
pub(super) fn redis_store_toml(url: &str) -> String {
    format!(
        "backend = \"redis\"\nurl = \"{url}\"\ntimeout_ms = 2000\n\
         [store.keyring]\nactive = \"b1\"\n[store.keyring.keys]\nb1 = \"{BENCH_KEY}\"\n"
    )
}

/// A real certificate record: one issuance from `env`'s devca through a broker.
pub(super) async fn template_record(env: &DevEnv) -> anyhow::Result<CertRecord> {
    let app = env.memory_app().await?;
    let (record, _) = app
        .broker()
        .get_certificate(spc_cert_request("1000")?)
        .await
        .context("issuing the template certificate")?;
    Ok(record.as_ref().clone())
}

/// A broker over `store` whose issuer hands out copies of `template`, with the settings'
/// `[broker]` options. Used where the cache must hold many certificates fast.
pub(super) async fn template_broker(
    store: Arc<dyn Store>,
    template: CertRecord,
) -> anyhow::Result<Broker> {
    let b = Settings::from_toml("[broker]\ncache_capacity = 1000000")?.broker;
    let broker = Broker::new(
        Arc::new(TemplateIssuer {
            template,
            next: AtomicU64::new(1),
        }),
        store,
        BrokerOptions::from(&b),
    );
    if let Err(e) = broker.listen_for_invalidations().await {
        tracing::warn!(error = %e, "no invalidations");
    }
    Ok(broker)
}

/// Connects to the Redis at `url` with the bench keyring.
pub(super) async fn redis_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let settings = Settings::from_toml(&format!("[store]\n{}", redis_store_toml(url)))?;
    let redis = store::connect(&store::RedisSettings::from(&settings.store)).await?;
    redis.check_keyring().await?;
    Ok(Arc::new(redis))
}

/// Issues copies of one real certificate record, each with its own cache key, serial and
/// fingerprint (and its own heap allocations), without any CA round trip.
#[derive(Debug)]
struct TemplateIssuer {
    template: CertRecord,
    next: AtomicU64,
}

#[async_trait::async_trait]
impl Issuer for TemplateIssuer {
    fn has_pool(&self, pool: &str) -> bool {
        pool == "default"
    }

    async fn issue(&self, req: &IssueRequest) -> Result<CertRecord, IssueError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut record = self.template.clone();
        record.cache_key = req.cache_key.clone();
        record.serial_hex = format!("be4c{n:012x}");
        record.fingerprint_hex = hex::encode(Sha256::digest(record.serial_hex.as_bytes()));
        Ok(record)
    }

    async fn revoke(&self, _cert: &CertRecord, _reason: u8) -> Result<(), IssueError> {
        Err(IssueError {
            ca: Some("bench-template".into()),
            kind: FailureKind::Refused,
            problem_type: None,
            detail: "the benchmark's template issuer does not revoke".into(),
            retry_after: None,
        })
    }
}

/// Bytes a record owns on the heap for the certificate itself: chain (PEM and DER), key,
/// and its strings.
pub(super) fn record_bytes(r: &CertRecord) -> usize {
    r.cache_key.len()
        + r.chain_pem.len()
        + r.chain_der.iter().map(Vec::len).sum::<usize>()
        + r.private_key_pkcs8.as_ref().map_or(0, Vec::len)
        + r.serial_hex.len()
        + r.fingerprint_hex.len()
        + r.issuer_ca.len()
        + r.issuer_account.len()
}
