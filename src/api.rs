//! The gRPC surface: a thin adapter from `certbroker.v1.CertificateBrokerService` to [`Broker`],
//! plus the standard health and reflection services. Knows nothing of Redis or ACME.
//!
//! Every request passes the tower stack in [`layers`]; broker RPCs then pass the caller's
//! [`policy`] before any broker work. Certificates handed out go to the [`audit`] trail.

pub mod audit;
pub mod codec;
mod convert;
pub mod layers;
pub mod listener;
pub mod policy;
mod status;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;

use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

use tonic_health::ServingStatus;

use crate::{
    broker::{Broker, BrokerError, CacheStatus},
    config::{PolicySettings, ServerSettings, ServerTlsSettings},
    pb::{
        self,
        certificate_broker_service_server::{
            CertificateBrokerService, CertificateBrokerServiceServer,
        },
    },
    telemetry::Metrics,
};
use audit::{Audit, Delivery};
use layers::{RateLimitLayer, RejectionObserver, ShedLayer, TimeoutLayer};
use listener::ReloadingTls;
use policy::{Action, Caller, Policy};
pub use status::to_status;

/// The tonic service: decode, check the caller's policy, call the broker, encode or map
/// the error.
#[derive(Debug, Clone)]
pub struct GrpcBroker {
    broker: Broker,
    policy: Arc<Policy>,
    metrics: Option<Metrics>,
    x5u_base: Option<url::Url>,
    audit: Audit,
}

impl GrpcBroker {
    /// Wraps a broker; every caller is checked against `policy`.
    pub fn new(broker: Broker, policy: Policy) -> Self {
        Self {
            broker,
            policy: Arc::new(policy),
            metrics: None,
            x5u_base: None,
            audit: Audit::new(audit::DEFAULT_INTERVAL),
        }
    }

    /// Records hand-outs in `audit` (whose summaries the caller schedules).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Answers carry the chain's STI-CR URL under `base`.
    pub fn with_x5u_base(mut self, base: Option<url::Url>) -> Self {
        self.x5u_base = base;
        self
    }

    fn respond(
        &self,
        cert: &crate::cert::CertRecord,
        status: CacheStatus,
        has_csr: bool,
    ) -> pb::GetCertificateResponse {
        let mut resp = convert::cert_response(cert, status, has_csr);
        if let Some(base) = &self.x5u_base {
            resp.x5u = crate::publish::x5u(base, &cert.fingerprint_hex).to_string();
        }
        resp
    }
}

/// The stream type of `WatchCertificate`.
pub type CertificateStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchCertificateResponse, Status>> + Send>>;
/// `cache_status` metric label.
fn cache_label(status: pb::CacheStatus) -> &'static str {
    match status {
        pb::CacheStatus::HitLocal => "hit_local",
        pb::CacheStatus::HitShared => "hit_shared",
        pb::CacheStatus::Joined => "joined",
        pb::CacheStatus::Issued => "issued",
        pb::CacheStatus::Unspecified => "unspecified",
    }
}

/// `cache_status` label of a broker answer.
fn status_label(status: CacheStatus) -> &'static str {
    match status {
        CacheStatus::HitLocal => "hit_local",
        CacheStatus::HitShared => "hit_shared",
        CacheStatus::Joined => "joined",
        CacheStatus::Issued => "issued",
    }
}

/// The caller recorded by [`layers::identify`], or read from the connection directly.
fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller::from_extensions(request.extensions()))
}

#[tonic::async_trait]
impl CertificateBrokerService for GrpcBroker {
    async fn get_certificate(
        &self,
        request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        let started = Instant::now();
        let result = self.get_inner(request).await;
        let cache_status = result
            .as_ref()
            .ok()
            .map(|r| cache_label(r.get_ref().cache_status()));
        self.record("GetCertificate", &result, cache_status, started);
        result
    }

    type WatchCertificateStream = CertificateStream;

    async fn watch_certificate(
        &self,
        request: Request<pb::WatchCertificateRequest>,
    ) -> Result<Response<Self::WatchCertificateStream>, Status> {
        // Counted once, when the stream opens: its code is the first answer's, its
        // duration the time to that answer.
        let started = Instant::now();
        let result = self.watch_inner(request).await;
        self.record("WatchCertificate", &result, None, started);
        result
    }

    async fn list_renewals(
        &self,
        _request: Request<pb::ListRenewalsRequest>,
    ) -> Result<Response<pb::ListRenewalsResponse>, Status> {
        let started = Instant::now();
        let entries = self
            .broker
            .renewal_status()
            .await
            .into_iter()
            .map(convert::renewal_entry)
            .collect();
        let result = Ok(Response::new(pb::ListRenewalsResponse { entries }));
        self.record("ListRenewals", &result, None, started);
        result
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let started = Instant::now();
        let result = self.revoke_inner(request).await;
        self.record("Revoke", &result, None, started);
        result
    }
}

// === impl GrpcBroker ===

impl GrpcBroker {
    async fn watch_inner(
        &self,
        request: Request<pb::WatchCertificateRequest>,
    ) -> Result<Response<CertificateStream>, Status> {
        let caller = caller_of(&request);
        let mut req =
            convert::cert_request(request.into_inner().into()).map_err(|e| to_status(&e))?;
        self.authorize(
            &caller,
            Action::Get {
                identifiers: &req.identifiers,
                pool: &req.pool,
                ca: req.ca,
            },
        )?;
        self.broker
            .check_satisfiable(&req)
            .await
            .map_err(|e| to_status(&e))?;
        let has_csr = req.csr_der.is_some();
        let identifiers = req.identifiers.clone();
        let key = req.cache_key();
        // Subscribe before the first answer so no renewal can slip between the two.
        let mut updates = self.broker.watch();
        let (first, status) = self
            .broker
            .get_certificate(req.clone())
            .await
            .map_err(|e| to_status(&e))?;
        req.force_renew = false;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        // A watched certificate is in use: renewed while the stream is open, however long
        // `renewal.idle_horizon_secs` is.
        let watching = self.broker.watching(&req);
        tokio::spawn(async move {
            let _watching = watching;
            let audit = |cert: &crate::cert::CertRecord, status: CacheStatus| {
                this.audit.delivered(
                    Delivery {
                        action: "watch_certificate",
                        caller: &caller,
                        cert,
                        cache_status: status_label(status),
                        key_returned: !has_csr,
                    },
                    || policy::describe(&identifiers),
                );
            };
            let mut last = first.serial_hex.clone();
            audit(&first, status);
            if tx
                .send(Ok(this.respond(&first, status, has_csr).into()))
                .await
                .is_err()
            {
                return;
            }
            // Re-checking now and then covers a missed notification.
            let mut recheck = tokio::time::interval(WATCH_RECHECK);
            recheck.tick().await;
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    msg = updates.recv() => match msg {
                        Ok(k) if k != key => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = recheck.tick() => {}
                }
                match this.broker.get_certificate(req.clone()).await {
                    Ok((cert, status)) if cert.serial_hex != last => {
                        last = cert.serial_hex.clone();
                        audit(&cert, status);
                        if tx
                            .send(Ok(this.respond(&cert, status, has_csr).into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watch re-check failed; retrying"),
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Reports to `metrics` (requests, issuance latency by CA, CA failures, served
    /// certificates).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn get_inner(
        &self,
        request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = convert::cert_request(request.into_inner()).map_err(|e| to_status(&e))?;
        self.authorize(
            &caller,
            Action::Get {
                identifiers: &req.identifiers,
                pool: &req.pool,
                ca: req.ca,
            },
        )?;
        self.broker
            .check_satisfiable(&req)
            .await
            .map_err(|e| to_status(&e))?;
        let has_csr = req.csr_der.is_some();
        // Kept for the audit line of a first hand-out.
        let identifiers = req.identifiers.clone();
        let (cert, cache_status) = self
            .broker
            .get_certificate(req)
            .await
            .map_err(|e| self.broker_error(&e))?;
        let response = self.respond(&cert, cache_status, has_csr);
        self.audit.delivered(
            Delivery {
                action: "get_certificate",
                caller: &caller,
                cert: &cert,
                cache_status: status_label(cache_status),
                key_returned: !has_csr,
            },
            || policy::describe(&identifiers),
        );
        if let Some(m) = &self.metrics {
            if cache_status == CacheStatus::Issued {
                m.issued(&cert.issuer_ca, started.elapsed());
            }
            m.certificate_served(&cert.serial_hex, cert.not_after);
        }
        Ok(Response::new(response))
    }

    async fn revoke_inner(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = caller_of(&request);
        self.authorize(&caller, Action::Revoke)?;
        let req = convert::revoke_request(request.into_inner()).map_err(|e| to_status(&e))?;
        let reason = req.reason;
        let revoked = self
            .broker
            .revoke(req)
            .await
            .map_err(|e| self.broker_error(&e))?;
        tracing::info!(
            target: "audit",
            action = "revoke",
            caller = %caller.label(),
            ca = %revoked.issuer_ca,
            serial = %revoked.serial_hex,
            reason,
            "certificate revoked"
        );
        if let Some(m) = &self.metrics {
            m.certificate_revoked(&revoked.serial_hex);
        }
        Ok(Response::new(convert::revoke_response(&revoked)))
    }

    fn authorize(&self, caller: &Caller, action: Action<'_>) -> Result<(), Status> {
        self.policy.check(caller, action).map_err(|d| {
            tracing::warn!(target: "audit", action = "denied", caller = %d.caller, denied = %d.what, "request denied by policy");
            status::denied(&d)
        })
    }

    fn broker_error(&self, e: &BrokerError) -> Status {
        if let (Some(m), BrokerError::Upstream(ie)) = (&self.metrics, e) {
            let kind = format!("{:?}", ie.kind).to_lowercase();
            m.ca_failure(ie.ca.as_deref().unwrap_or(""), &kind);
        }
        to_status(e)
    }

    fn record<T>(
        &self,
        method: &str,
        result: &Result<T, Status>,
        cache_status: Option<&str>,
        started: Instant,
    ) {
        if let Some(m) = &self.metrics {
            let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
            m.request(method, code, cache_status, started.elapsed());
        }
    }
}

/// How the gRPC server runs: TLS, caller policy and the limits of the tower stack.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TLS material; absent: plaintext.
    pub tls: Option<ServerTlsSettings>,
    /// The `[[policy]]` tables, enforced when TLS has a client CA.
    pub policies: Vec<PolicySettings>,
    /// Upper bound of one request.
    pub request_timeout: Duration,
    /// Requests in the services at once before shedding.
    pub max_concurrent_requests: usize,
    /// Per-caller sustained rate; 0: off.
    pub rate_limit_per_sec: u32,
    /// Per-caller burst.
    pub rate_limit_burst: u32,
    /// Largest request message, in bytes.
    pub max_request_bytes: usize,
    /// Told about every request the stack turns away (metrics).
    pub observer: Option<Arc<dyn RejectionObserver>>,
    /// Request, issuance and certificate metrics.
    pub metrics: Option<Metrics>,
    /// Public STI-CR base; answers carry `x5u` under it.
    pub x5u_base: Option<url::Url>,
    /// How often the [`audit`] trail writes its repeat counts.
    pub audit_interval: Duration,
}

impl ServeOptions {
    /// From `[server]` and `[[policy]]`.
    pub fn from_settings(server: &ServerSettings, policies: &[PolicySettings]) -> Self {
        Self {
            tls: server.tls.clone(),
            policies: policies.to_vec(),
            request_timeout: Duration::from_secs(server.request_timeout_secs),
            max_concurrent_requests: server.max_concurrent_requests,
            rate_limit_per_sec: server.rate_limit_per_sec,
            rate_limit_burst: server.rate_limit_burst,
            max_request_bytes: server.max_request_bytes,
            observer: None,
            metrics: None,
            x5u_base: None,
            audit_interval: audit::DEFAULT_INTERVAL,
        }
    }

    /// The policy these options put in force.
    pub fn policy(&self) -> Policy {
        match &self.tls {
            Some(tls) if tls.client_ca.is_some() => Policy::Enforced(self.policies.clone()),
            Some(_) => {
                tracing::warn!(
                    "gRPC listener has TLS but no server.tls.client_ca: callers are not \
                     authenticated and ANY caller may request ANY certificate"
                );
                Policy::Open
            }
            None => {
                tracing::warn!(
                    "gRPC listener is PLAINTEXT without client authentication: ANY caller may \
                     request ANY certificate and revoke. Development only; set [server.tls] \
                     with client_ca and [[policy]] in production"
                );
                Policy::Open
            }
        }
    }
}

/// Reflection offers every service served here and the types a client needs to decode
/// the answers: the broker's own, `grpc.health.v1`, and the `google.rpc` error details
/// (BadRequest, ErrorInfo, RetryInfo, ...) that failures carry in `grpc-status-details-bin`,
/// so tools such as grpcurl print them decoded.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Serves the broker, health (`grpc.health.v1`) and reflection on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    broker: Broker,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = options.tls.as_ref().map(ReloadingTls::start).transpose()?;
    let policy = options.policy();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CertificateBrokerServiceServer<GrpcBroker>>()
        .await;
    // The broker keeps serving without its shared store (degraded to per-replica caching);
    // the store's own health is reported under its own name for dashboards and alerts.
    let store_health = tokio::spawn({
        let (broker, reporter) = (broker.clone(), health_reporter.clone());
        async move {
            loop {
                let status = if broker.store_ok().await {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter
                    .set_service_status(STORE_HEALTH_SERVICE, status)
                    .await;
                reporter
                    .set_service_status(CA_HEALTH_SERVICE, ca_status(&broker.ca_readiness()))
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let observer = options.observer.clone();
    let stack = tower::ServiceBuilder::new()
        // The gRPC status of every answer (rejections included) on the `rpc` span.
        .layer(layers::RpcStatusLayer)
        // Who is calling: certificate names or peer IP, for the limits and the policy.
        .map_request(layers::identify)
        // Per-caller token bucket; a flood from one caller does not starve the others.
        .layer(RateLimitLayer::new(
            options.rate_limit_per_sec,
            options.rate_limit_burst,
            observer.clone(),
        ))
        // Bounded work in flight; the excess is shed at once rather than queued.
        .layer(ShedLayer::new(
            options.max_concurrent_requests,
            observer.clone(),
        ))
        // No request runs longer than the server allows.
        .layer(TimeoutLayer::new(options.request_timeout, observer))
        .into_inner();
    // Repeat hand-outs are counted and summarized by a background task, off the request path.
    let audit = Audit::new(options.audit_interval);
    let audit_summaries = audit.spawn();
    let mut grpc_broker = GrpcBroker::new(broker, policy)
        .with_x5u_base(options.x5u_base.clone())
        .with_audit(audit.clone());
    if let Some(m) = options.metrics.clone() {
        grpc_broker = grpc_broker.with_metrics(m);
    }
    let broker_service = CertificateBrokerServiceServer::new(grpc_broker)
        // Request size limit: larger messages are refused while decoding (OUT_OF_RANGE).
        .max_decoding_message_size(options.max_request_bytes);

    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // The `rpc` span, parented to the caller's W3C trace context.
        .trace_fn(layers::rpc_span)
        .layer(stack)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(broker_service);
    let served = match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                .await
        }
        None => {
            // No Nagle delay: a response split over several frames must not wait for the
            // client's delayed ACK (about 40 ms per request otherwise).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    store_health.abort();
    audit_summaries.abort();
    // The counts of the last, partial interval.
    audit.flush();
    served?;
    Ok(())
}

/// How often a watch re-checks its certificate without a notification.
const WATCH_RECHECK: Duration = Duration::from_secs(30);

/// Health-service name reporting whether the shared store answers.
pub const STORE_HEALTH_SERVICE: &str = "certbroker.store";

/// Health-service name reporting the upstream CAs: `SERVING` once any CA's account works,
/// `UNKNOWN` while none does and the start-up warm-up is still running, `NOT_SERVING` when
/// the warm-up failed at every CA (requests still try them).
pub const CA_HEALTH_SERVICE: &str = "certbroker.ca";

fn ca_status(cas: &[crate::broker::CaReadiness]) -> ServingStatus {
    use crate::broker::ReadyState;
    if cas.iter().any(|c| c.state == ReadyState::Ready) {
        ServingStatus::Serving
    } else if cas.iter().any(|c| c.state == ReadyState::WarmingUp) {
        ServingStatus::Unknown
    } else {
        ServingStatus::NotServing
    }
}

/// The server could not be built or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service rejected the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] listener::ListenerTlsError),
}
