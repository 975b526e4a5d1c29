//! ACME Renewal Information ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)) at the
//! upstream: the window a CA suggests for a certificate it issued, and which certificate a
//! new order may say it `replaces`.

use std::time::Duration;

use tracing::debug;

use super::{AttemptError, Upstream};
use crate::{
    acme::{CertificateId, RenewalInfo},
    broker::{RenewalWindow, Replaces},
};

/// Bound on one `renewalInfo` fetch: the renewal loop waits for it, and a slow CA must not
/// hold up the renewal of other certificates (the fetch is retried later).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `replaces` of a new order at CA `ca`: the predecessor's certificate identifier, but
/// only when the predecessor was issued by this very CA and the CA offers ARI (its directory
/// has `renewalInfo`). An order that failed over to another CA, or a CA without ARI, gets
/// none; so does a predecessor without an Authority Key Identifier.
pub(crate) fn replaces_for(
    ca: &str,
    offers_ari: bool,
    predecessor: Option<&Replaces>,
) -> Option<CertificateId> {
    let p = predecessor?;
    if !offers_ari || p.issuer_ca != ca {
        return None;
    }
    match CertificateId::from_der(&p.leaf_der) {
        Ok(id) => Some(id),
        Err(e) => {
            debug!(error = %e, "predecessor has no ARI identifier; ordering without replaces");
            None
        }
    }
}

impl Upstream {
    /// The renewal window this CA suggests for a certificate it issued (leaf DER);
    /// `Ok(None)` when its directory offers no `renewalInfo`, or the certificate has no
    /// identifier to ask with (no Authority Key Identifier). Bounded by a short timeout.
    pub async fn renewal_window(
        &self,
        leaf_der: &[u8],
    ) -> Result<Option<RenewalWindow>, AttemptError> {
        let account = self.account().await?;
        let id = match CertificateId::from_der(leaf_der) {
            Ok(id) => id,
            Err(e) => {
                debug!(error = %e, "no ARI identifier for this certificate");
                return Ok(None);
            }
        };
        let fetch = account.client().renewal_info(&id);
        let info = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| AttemptError::Timeout(FETCH_TIMEOUT))??;
        Ok(info.map(window))
    }
}

/// The window in whole seconds, rounded inwards so that a time chosen in it is in the CA's.
fn window(info: RenewalInfo) -> RenewalWindow {
    let w = info.suggested_window;
    let start = w.start.unix_timestamp() + i64::from(w.start.nanosecond() > 0);
    RenewalWindow {
        start,
        end: w.end.unix_timestamp().max(start),
        retry_after: info.retry_after,
        explanation_url: info.explanation_url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf with an AKI, issued by a throwaway CA.
    fn leaf_der() -> Vec<u8> {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        leaf.signed_by(&key, &issuer).unwrap().der().to_vec()
    }

    #[test]
    fn window_is_rounded_inwards() {
        let w = window(RenewalInfo {
            suggested_window: crate::acme::SuggestedWindow {
                start: time::macros::datetime!(2030-01-01 00:00:10.2 UTC),
                end: time::macros::datetime!(2030-01-01 00:00:20.9 UTC),
            },
            explanation_url: None,
            retry_after: Some(Duration::from_secs(60)),
        });
        let base = time::macros::datetime!(2030-01-01 00:00 UTC).unix_timestamp();
        assert_eq!((w.start - base, w.end - base), (11, 20));
        assert_eq!(w.retry_after, Some(Duration::from_secs(60)));
    }

    #[test]
    fn replaces_only_the_same_ari_capable_ca() {
        let der = leaf_der();
        let old = Replaces {
            issuer_ca: "east".into(),
            leaf_der: der.clone(),
        };
        let id = CertificateId::from_der(&der).unwrap();
        assert_eq!(replaces_for("east", true, Some(&old)), Some(id));
        // Failover to another CA: never tell it about a certificate it did not issue.
        assert_eq!(replaces_for("west", true, Some(&old)), None);
        // The CA does not offer ARI.
        assert_eq!(replaces_for("east", false, Some(&old)), None);
        // Not a renewal.
        assert_eq!(replaces_for("east", true, None), None);
        // A predecessor without a usable AKI: order without replaces rather than fail.
        let junk = Replaces {
            issuer_ca: "east".into(),
            leaf_der: b"junk".to_vec(),
        };
        assert_eq!(replaces_for("east", true, Some(&junk)), None);
    }
}
