//! STAR (RFC 8739) at an upstream: placing auto-renewal orders where the CA offers them,
//! downloading a STAR order's current certificate, fetching each next one, and cancelling.
//!
//! A STAR order keeps its CSR, so every short-term certificate carries the key of the
//! first: the successor's record takes the predecessor's key.

use std::sync::{Arc, atomic::Ordering};

use time::OffsetDateTime;
use tracing::{info, warn};

use super::{AttemptError, CaPool, Issued, Upstream, order_flow::OrderSettings, pool};
use crate::{
    acme::{self, Account, AutoRenewal},
    broker::{FailureKind, IssueError, IssueRequest},
    cert::{CertRecord, StarOrder},
    shaken::{self, CertInfo, Expected},
};

/// The `auto-renewal` to send in newOrder: with `[ca.star]` configured and the CA's
/// directory offering STAR (`meta.auto-renewal`); otherwise `None` (an ordinary order),
/// and a CA that offers none is logged once.
pub(super) fn auto_renewal(settings: &OrderSettings, account: &Account) -> Option<AutoRenewal> {
    let star = settings.star?;
    if account.client().directory().meta.auto_renewal.is_none() {
        if !settings.star_unoffered_logged.swap(true, Ordering::Relaxed) {
            warn!(
                ca = %settings.ca,
                "ca.star is configured, but the CA's directory has no meta.auto-renewal \
                 (it offers no STAR): placing ordinary orders"
            );
        }
        return None;
    }
    let end = OffsetDateTime::now_utc() + star.duration;
    Some(AutoRenewal::new(end, star.lifetime))
}

/// The current short-term certificate of a `valid` STAR order, from its
/// `star-certificate` URL, with what the record keeps of the order.
pub(super) async fn download(
    settings: &OrderSettings,
    account: &Account,
    order: &acme::Order,
    star_url: &str,
) -> Result<(String, Option<StarOrder>), AttemptError> {
    let current = account.star_certificate(star_url).await?;
    info!(ca = %settings.ca, order = %order.url, star_certificate = %star_url, "acme: STAR certificate downloaded");
    let (end_date, lifetime_secs) = match (&order.state.auto_renewal, settings.star) {
        (Some(ar), _) => (ar.end_date.unix_timestamp(), ar.lifetime),
        (None, Some(s)) => (
            OffsetDateTime::now_utc().unix_timestamp()
                + i64::try_from(s.duration.as_secs()).unwrap_or(i64::MAX / 4),
            s.lifetime.as_secs(),
        ),
        (None, None) => (i64::MAX, 0),
    };
    let star = StarOrder {
        order_url: order.url.clone(),
        certificate_url: star_url.to_owned(),
        end_date,
        lifetime_secs,
    };
    Ok((current.pem, Some(star)))
}

impl Upstream {
    /// The STAR order's current certificate, checked like any issued one against its
    /// predecessor `prev` (same identifiers, same key). It may still be `prev` itself when
    /// the CA has not issued the next one yet.
    pub async fn star_current(
        &self,
        prev_chain_der: &[Vec<u8>],
        star: &StarOrder,
    ) -> Result<Issued, AttemptError> {
        let account = self.account().await?;
        let current = account.star_certificate(&star.certificate_url).await?;
        let chain_der = shaken::parse_pem_chain(&current.pem)?;
        let prev = CertInfo::parse(prev_chain_der.first().ok_or_else(|| {
            AttemptError::Unsupported("the STAR record holds no certificate".into())
        })?)?;
        let leaf = shaken::check_issued(
            &chain_der,
            &Expected {
                tn_auth_list: prev.tn_auth_list.as_ref(),
                dns_names: &prev.dns_names,
                public_key_spki_der: &prev.public_key_spki_der,
                ca: prev.is_ca,
            },
            OffsetDateTime::now_utc(),
        )?;
        let findings = shaken::profile_findings(&chain_der);
        for f in &findings {
            warn!(ca = %self.name(), serial = %leaf.serial_hex, finding = f.code, cert = f.cert, detail = %f.detail, "STAR certificate from the CA does not conform");
        }
        if self.order_settings().strict_profile && !findings.is_empty() {
            return Err(AttemptError::NonConforming {
                serial: leaf.serial_hex,
                findings,
            });
        }
        Ok(Issued {
            chain_pem: current.pem,
            chain_der,
            key_pkcs8: None,
            leaf,
            account_url: account.url().to_owned(),
            findings,
            star: Some(star.clone()),
        })
    }

    /// Cancels a STAR order (RFC 8739 §3.1.2). An order already canceled counts as
    /// canceled.
    pub async fn cancel_star(&self, order_url: &str) -> Result<(), AttemptError> {
        let account = self.account().await?;
        if let Ok(order) = account.order(order_url).await
            && order.state.status == acme::OrderStatus::Canceled
        {
            return Ok(());
        }
        account.cancel_star_order(order_url).await?;
        info!(ca = %self.name(), order = %order_url, "acme: STAR order canceled");
        Ok(())
    }
}

/// Why no successor came from the STAR order.
pub(super) enum NoSuccessor {
    /// The order is over (canceled, past its end-date, or its CA is gone): order anew.
    Over(String),
    /// The fetch failed, or the CA still serves the same certificate: try again later.
    Failed(IssueError),
}

impl CaPool {
    /// The successor of `prev`, a short-term certificate, from its STAR order at the CA
    /// that issued it: a record with the new certificate and `prev`'s key.
    pub(super) async fn next_star(
        &self,
        req: &IssueRequest,
        prev: &CertRecord,
    ) -> Result<CertRecord, NoSuccessor> {
        let star = prev
            .star
            .as_ref()
            .ok_or_else(|| NoSuccessor::Over("not a STAR certificate".into()))?;
        let upstream = self
            .upstream_named(&prev.issuer_ca)
            .ok_or_else(|| NoSuccessor::Over(format!("ca {:?} is gone", prev.issuer_ca)))?;
        if OffsetDateTime::now_utc().unix_timestamp() >= star.end_date {
            return Err(NoSuccessor::Over("the STAR order's end-date passed".into()));
        }
        let issued = match upstream.star_current(&prev.chain_der, star).await {
            Ok(issued) => issued,
            Err(AttemptError::Acme(e))
                if e.problem().is_some_and(|p| {
                    p.is_acme(acme::AUTO_RENEWAL_CANCELED) || p.is_acme(acme::AUTO_RENEWAL_EXPIRED)
                }) =>
            {
                return Err(NoSuccessor::Over(e.to_string()));
            }
            Err(e) => return Err(NoSuccessor::Failed(e.to_issue_error(upstream.name()))),
        };
        let mut record = pool::record(req, upstream.name(), issued);
        if record.serial_hex == prev.serial_hex {
            return Err(NoSuccessor::Failed(IssueError {
                ca: Some(upstream.name().to_owned()),
                kind: FailureKind::Unavailable,
                problem_type: None,
                detail: format!(
                    "the STAR order still serves certificate {} (the next is not issued yet)",
                    prev.serial_hex
                ),
                retry_after: None,
            }));
        }
        record.private_key_pkcs8 = prev.private_key_pkcs8.clone();
        record.issuer_account = prev.issuer_account.clone();
        info!(ca = %record.issuer_ca, order = %star.order_url, serial = %record.serial_hex, old = %prev.serial_hex, "next STAR certificate fetched");
        Ok(record)
    }

    /// Cancels the STAR order of `cert` at the CA that issued it.
    pub(super) async fn cancel_star_of(&self, cert: &CertRecord) -> Result<(), IssueError> {
        let refused = |detail: &str| IssueError {
            ca: Some(cert.issuer_ca.clone()),
            kind: FailureKind::Refused,
            problem_type: None,
            detail: detail.to_owned(),
            retry_after: None,
        };
        let star = cert
            .star
            .as_ref()
            .ok_or_else(|| refused("not a STAR certificate"))?;
        let upstream: &Arc<Upstream> = self.upstream_named(&cert.issuer_ca).ok_or_else(|| {
            refused("the CA that issued this certificate is no longer configured")
        })?;
        upstream
            .cancel_star(&star.order_url)
            .await
            .map_err(|e| e.to_issue_error(upstream.name()))
    }
}
