//! The gRPC surface: a thin adapter from `certbroker.v1.CertificateBroker` to [`Broker`],
//! plus the standard health and reflection services. Knows nothing of Redis or ACME.

mod convert;
mod status;

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use tonic_health::ServingStatus;

use crate::{
    broker::Broker,
    pb::{
        self,
        certificate_broker_server::{CertificateBroker, CertificateBrokerServer},
    },
};
pub use status::to_status;

/// The tonic service: decode, call the broker, encode or map the error.
#[derive(Debug, Clone)]
pub struct GrpcBroker {
    broker: Broker,
}

impl GrpcBroker {
    /// Wraps a broker.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl CertificateBroker for GrpcBroker {
    async fn get_certificate(
        &self,
        request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        let req = convert::cert_request(request.into_inner()).map_err(|e| to_status(&e))?;
        let has_csr = req.csr_der.is_some();
        let (cert, cache_status) = self
            .broker
            .get_certificate(req)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::cert_response(
            &cert,
            cache_status,
            has_csr,
        )))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let req = convert::revoke_request(request.into_inner()).map_err(|e| to_status(&e))?;
        let revoked = self.broker.revoke(req).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::revoke_response(&revoked)))
    }
}

/// Serves the broker, health (`grpc.health.v1`) and reflection on `listener` until
/// `shutdown` resolves; in-flight requests then get `grace` to finish.
pub async fn serve(
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CertificateBrokerServer<GrpcBroker>>()
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
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .trace_fn(|req| tracing::info_span!("rpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CertificateBrokerServer::new(GrpcBroker::new(broker)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    store_health.abort();
    served?;
    Ok(())
}

/// Health-service name reporting whether the shared store answers.
pub const STORE_HEALTH_SERVICE: &str = "certbroker.store";

/// The server could not be built or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service rejected the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}
