//! The CA pool: named groups of upstreams, tried in priority order with failover on
//! retryable failures. A refusal (bad identifier, bad token, bad CSR) ends the request:
//! another CA would be asked the same wrong thing.

use std::sync::Arc;

use tracing::warn;

use super::{AttemptError, Tracking, Upstream};
use crate::{
    broker::{FailureKind, IssueError, IssueRequest, Issuer},
    config::CaSettings,
    store::CertRecord,
};

/// Every configured upstream, grouped by pool.
#[derive(Debug)]
pub struct CaPool {
    /// Sorted by priority, then by configuration order.
    upstreams: Vec<Arc<Upstream>>,
}

impl CaPool {
    /// Builds every `[[ca]]`; fails on the first bad one.
    pub fn from_settings(cas: &[CaSettings]) -> Result<Self, AttemptError> {
        let upstreams = cas
            .iter()
            .map(|s| Upstream::from_settings(s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(upstreams))
    }

    /// A pool over already-built upstreams.
    pub fn new(mut upstreams: Vec<Arc<Upstream>>) -> Self {
        upstreams.sort_by_key(|u| u.priority());
        Self { upstreams }
    }

    /// The upstreams serving `pool`, in the order they are tried.
    pub fn members(&self, pool: &str) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams
            .iter()
            .filter(move |u| u.pools().iter().any(|p| p == pool))
    }

    /// Creates (or finds) the account at every CA, so configuration mistakes show at start-up.
    pub async fn warm_up(&self) -> Vec<(String, AttemptError)> {
        let mut failures = vec![];
        for u in &self.upstreams {
            if let Err(e) = u.account().await {
                failures.push((u.name().to_owned(), e));
            }
        }
        failures
    }
}

#[async_trait::async_trait]
impl Issuer for CaPool {
    fn has_pool(&self, pool: &str) -> bool {
        self.members(pool).next().is_some()
    }

    async fn issue(&self, req: &IssueRequest) -> Result<CertRecord, IssueError> {
        let mut last = None;
        for upstream in self.members(&req.pool) {
            let tracking = Tracking {
                resume: req.resume.as_deref(),
                progress: req.progress.as_ref(),
            };
            let attempt =
                upstream.issue_tracked(&req.identifiers, req.csr_der.as_deref(), tracking);
            match attempt.await {
                Ok(issued) => {
                    return Ok(CertRecord {
                        cache_key: req.cache_key.clone(),
                        chain_pem: issued.chain_pem,
                        chain_der: issued.chain_der,
                        private_key_pkcs8: issued.key_pkcs8,
                        not_before: issued.leaf.not_before.unix_timestamp(),
                        not_after: issued.leaf.not_after.unix_timestamp(),
                        serial_hex: issued.leaf.serial_hex.trim_start_matches('0').to_owned(),
                        fingerprint_hex: issued.leaf.sha256_fingerprint_hex,
                        issuer_ca: upstream.name().to_owned(),
                        issuer_account: issued.account_url,
                    });
                }
                Err(e) => {
                    let err = e.to_issue_error(upstream.name());
                    if !err.is_retryable() {
                        return Err(err);
                    }
                    warn!(ca = %upstream.name(), error = %err, "CA failed; trying the next");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| IssueError {
            ca: None,
            kind: FailureKind::NoSuchPool,
            problem_type: None,
            detail: format!("no CA serves pool {:?}", req.pool),
            retry_after: None,
        }))
    }

    async fn revoke(&self, cert: &CertRecord, reason: u8) -> Result<(), IssueError> {
        let upstream = self
            .upstreams
            .iter()
            .find(|u| u.name() == cert.issuer_ca)
            .ok_or_else(|| IssueError {
                ca: Some(cert.issuer_ca.clone()),
                kind: FailureKind::Refused,
                problem_type: None,
                detail: "the CA that issued this certificate is no longer configured".into(),
                retry_after: None,
            })?;
        let leaf = cert.chain_der.first().ok_or_else(|| IssueError {
            ca: Some(cert.issuer_ca.clone()),
            kind: FailureKind::Refused,
            problem_type: None,
            detail: "stored record has no certificate".into(),
            retry_after: None,
        })?;
        upstream
            .revoke(leaf, reason)
            .await
            .map_err(|e| e.to_issue_error(upstream.name()))
    }
}
