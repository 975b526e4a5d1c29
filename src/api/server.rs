//! The gRPC server: [`ServeOptions`], the tower stack of [`super::layers`] around the
//! broker, health (`grpc.health.v1`, with the store's and the CAs' own entries) and
//! reflection, served until shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use super::{
    GrpcBroker,
    audit::{self, Audit},
    layers::{self, RateLimitLayer, RejectionObserver, ShedLayer, TimeoutLayer},
    listener::{self, ReloadingTls},
    policy::Policy,
};
use crate::{
    broker::Broker,
    config::{PolicySettings, ServerSettings, ServerTlsSettings},
    pb::{self, certificate_broker_service_server::CertificateBrokerServiceServer},
    telemetry::Metrics,
};

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
            request_timeout: server.request_timeout,
            max_concurrent_requests: server.max_concurrent_requests.get(),
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
        // Who is calling (certificate names or peer IP, for the limits, the policy and the
        // `rpc` span), and the gRPC status of every answer (rejections included) on the span.
        .layer(layers::RpcLayer)
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
