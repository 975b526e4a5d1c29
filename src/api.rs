//! The gRPC surface: a thin adapter from `certbroker.v1.CertificateBrokerService` to [`Broker`],
//! served with the standard health and reflection services ([`serve`]). Knows nothing of
//! Redis or ACME.
//!
//! Every request passes the tower stack in [`layers`]; broker RPCs then pass the caller's
//! [`policy`] before any broker work. Certificates handed out go to the [`audit`] trail.

pub mod audit;
pub mod codec;
mod convert;
pub mod layers;
pub mod listener;
pub mod policy;
mod server;
mod status;

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use crate::{
    broker::{Broker, BrokerError, CacheStatus, Watched},
    pb::{self, certificate_broker_service_server::CertificateBrokerService},
    telemetry::Metrics,
};
use audit::{Audit, Delivery};
use policy::{Action, Caller, Policy};
pub use server::{CA_HEALTH_SERVICE, STORE_HEALTH_SERVICE, ServeError, ServeOptions, serve};
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

/// The caller recorded by [`layers::RpcLayer`], or read from the connection directly.
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
        let result = self.get_inner(request, started).await;
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
        let req = convert::cert_request(request.into_inner().into()).map_err(|e| to_status(&e))?;
        self.authorize(
            &caller,
            Action::Get {
                identifiers: &req.identifiers,
                pool: &req.pool,
                ca: req.ca,
            },
        )?;
        let has_csr = req.csr_der.is_some();
        let identifiers = req.identifiers.clone();
        let mut watch = Box::pin(self.broker.watch(req));
        // The first answer is the RPC's status; the later ones go down the stream.
        let first = watch
            .next()
            .await
            .unwrap_or_else(|| Err(BrokerError::Internal("watch ended unanswered".into())))
            .map_err(|e| to_status(&e))?;
        let this = self.clone();
        let answer = move |(cert, status): Watched| {
            this.audit.delivered(
                Delivery {
                    action: "watch_certificate",
                    caller: &caller,
                    cert: &cert,
                    cache_status: status_label(status),
                    key_returned: !has_csr,
                },
                || policy::describe(&identifiers),
            );
            pb::WatchCertificateResponse::from(this.respond(&cert, status, has_csr))
        };
        let first = answer(first);
        let rest = watch.map(move |item| item.map(&answer).map_err(|e| to_status(&e)));
        Ok(Response::new(Box::pin(
            futures::stream::once(std::future::ready(Ok(first))).chain(rest),
        )))
    }

    /// Reports to `metrics` (requests, issuance latency by CA, CA failures, served
    /// certificates).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// `started`: when the request arrived, for the issuance duration.
    async fn get_inner(
        &self,
        request: Request<pb::GetCertificateRequest>,
        started: Instant,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
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
        let has_csr = req.csr_der.is_some();
        let (cert, cache_status) = self
            .broker
            .get_certificate(&req)
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
            || policy::describe(&req.identifiers),
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
