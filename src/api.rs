//! The gRPC surface: a thin adapter from `certbroker.v1.CertificateBroker` to [`Broker`],
//! plus the standard health and reflection services. Knows nothing of Redis or ACME.

mod convert;
mod status;

use std::{future::Future, pin::Pin, time::Duration};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use tonic_health::ServingStatus;

use crate::{
    broker::{Broker, CacheStatus},
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
    x5u_base: Option<url::Url>,
}

impl GrpcBroker {
    /// Wraps a broker; with `x5u_base`, answers carry the chain's STI-CR URL.
    pub fn new(broker: Broker, x5u_base: Option<url::Url>) -> Self {
        Self { broker, x5u_base }
    }

    fn respond(
        &self,
        cert: &crate::store::CertRecord,
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
    Pin<Box<dyn Stream<Item = Result<pb::GetCertificateResponse, Status>> + Send>>;

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
        Ok(Response::new(self.respond(&cert, cache_status, has_csr)))
    }

    type WatchCertificateStream = CertificateStream;

    async fn watch_certificate(
        &self,
        request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<Self::WatchCertificateStream>, Status> {
        let mut req = convert::cert_request(request.into_inner()).map_err(|e| to_status(&e))?;
        let has_csr = req.csr_der.is_some();
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
        tokio::spawn(async move {
            let mut last = first.serial_hex.clone();
            if tx
                .send(Ok(this.respond(&first, status, has_csr)))
                .await
                .is_err()
            {
                return;
            }
            // Re-checking now and then keeps the certificate on the renewal schedule and
            // covers a missed notification.
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
                        if tx
                            .send(Ok(this.respond(&cert, status, has_csr)))
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

    async fn list_renewals(
        &self,
        _request: Request<pb::ListRenewalsRequest>,
    ) -> Result<Response<pb::ListRenewalsResponse>, Status> {
        let entries = self
            .broker
            .renewal_status()
            .await
            .into_iter()
            .map(convert::renewal_entry)
            .collect();
        Ok(Response::new(pb::ListRenewalsResponse { entries }))
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
    x5u_base: Option<url::Url>,
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
        .add_service(CertificateBrokerServer::new(GrpcBroker::new(
            broker, x5u_base,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    store_health.abort();
    served?;
    Ok(())
}

/// How often a watch re-checks its certificate without a notification.
const WATCH_RECHECK: Duration = Duration::from_secs(30);

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
