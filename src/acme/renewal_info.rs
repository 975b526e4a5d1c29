//! ACME Renewal Information ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)): the
//! certificate identifier, and the renewal window a server suggests for a certificate.
//!
//! The module says what the server suggested; when to renew is the caller's decision.

use std::{fmt, time::Duration};

use serde::Deserialize;
use time::OffsetDateTime;
use x509_parser::{certificate::X509Certificate, extensions::ParsedExtension, prelude::FromDer};

use crate::acme::{error::AcmeError, jws};

/// A certificate identifier ([RFC 9773 §4.1](https://www.rfc-editor.org/rfc/rfc9773#section-4.1)):
/// the base64url (no padding) `keyIdentifier` of the certificate's Authority Key Identifier,
/// a `.`, and the base64url (no padding) bytes of its DER serial number, a leading zero
/// byte included. Used in the `renewalInfo` URL and as the `replaces` of a new order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertificateId(String);

impl CertificateId {
    /// The identifier of a certificate with this AKI `keyIdentifier` and these serial number
    /// content octets (as DER encodes them: a leading `0x00` stays).
    pub fn from_parts(key_identifier: &[u8], serial_der_content: &[u8]) -> Self {
        Self(format!(
            "{}.{}",
            jws::b64(key_identifier),
            jws::b64(serial_der_content)
        ))
    }

    /// The identifier of a DER certificate. Fails with [`AcmeError::Certificate`] when the
    /// certificate does not parse or has no AKI `keyIdentifier`.
    pub fn from_der(cert_der: &[u8]) -> Result<Self, AcmeError> {
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| AcmeError::Certificate(format!("not a DER certificate: {e}")))?;
        let key_identifier = cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
                _ => None,
            })
            .ok_or_else(|| {
                AcmeError::Certificate(
                    "the certificate has no Authority Key Identifier keyIdentifier".into(),
                )
            })?;
        Ok(Self::from_parts(
            key_identifier.0,
            cert.tbs_certificate.raw_serial(),
        ))
    }

    /// The identifier as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a server suggests for one certificate
/// ([RFC 9773 §4.2](https://www.rfc-editor.org/rfc/rfc9773#section-4.2)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalInfo {
    /// When to renew.
    pub suggested_window: SuggestedWindow,
    /// A page explaining the window (e.g. why renewal is urgent), if the server gave one.
    pub explanation_url: Option<String>,
    /// `Retry-After` of the answer: when to ask again, relative to its receipt.
    pub retry_after: Option<Duration>,
}

/// The suggested renewal window; `start` is before `end`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct SuggestedWindow {
    /// Earliest suggested renewal time.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Latest suggested renewal time.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

/// The renewalInfo object as sent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RenewalInfoBody {
    pub(crate) suggested_window: SuggestedWindow,
    #[serde(default, rename = "explanationURL")]
    pub(crate) explanation_url: Option<String>,
}

impl RenewalInfoBody {
    /// Checks the window (RFC 9773 §4.2: an `end` not after `start` is invalid) and adds
    /// the `Retry-After`.
    pub(crate) fn into_info(self, retry_after: Option<Duration>) -> Result<RenewalInfo, AcmeError> {
        let w = self.suggested_window;
        if w.end <= w.start {
            return Err(AcmeError::Protocol(format!(
                "renewalInfo window ends ({}) before it starts ({})",
                w.end, w.start
            )));
        }
        Ok(RenewalInfo {
            suggested_window: w,
            explanation_url: self.explanation_url,
            retry_after,
        })
    }
}

/// `{renewalInfo}/{certID}`; a trailing `/` on the directory's URL is not doubled.
pub(crate) fn renewal_info_url(base: &str, id: &CertificateId) -> String {
    format!("{}/{id}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 9773 §4.1.
    #[test]
    fn rfc_9773_example_identifier() {
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        let serial = [0x00, 0x87, 0x65, 0x43, 0x21];
        assert_eq!(
            CertificateId::from_parts(&aki, &serial).as_str(),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }

    #[test]
    fn identifier_from_a_certificate() {
        let issuer_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&issuer_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca, &issuer_key);

        let mut leaf = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        // High bit set: DER needs a leading zero byte, which the identifier keeps.
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x87, 0x65, 0x43, 0x21]));
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();

        let (_, parsed_ca) = X509Certificate::from_der(ca_cert.der()).unwrap();
        let ski = parsed_ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let id = CertificateId::from_der(leaf.der()).unwrap();
        assert_eq!(id.as_str(), format!("{}.AIdlQyE", jws::b64(&ski)));

        // No AKI: no identifier.
        let plain = rcgen::CertificateParams::new(vec!["b.test".into()])
            .unwrap()
            .self_signed(&leaf_key)
            .unwrap();
        assert!(matches!(
            CertificateId::from_der(plain.der()),
            Err(AcmeError::Certificate(_))
        ));
        assert!(matches!(
            CertificateId::from_der(b"junk"),
            Err(AcmeError::Certificate(_))
        ));
    }

    #[test]
    fn body_parses_and_rejects_inverted_windows() {
        let body: RenewalInfoBody = serde_json::from_str(
            r#"{"suggestedWindow":{"start":"2025-01-02T04:00:00Z","end":"2025-01-03T04:00:00Z"},
                "explanationURL":"https://ca.test/why"}"#,
        )
        .unwrap();
        let info = body.into_info(Some(Duration::from_secs(21600))).unwrap();
        assert_eq!(
            info.suggested_window.start,
            time::macros::datetime!(2025-01-02 04:00 UTC)
        );
        assert_eq!(info.explanation_url.as_deref(), Some("https://ca.test/why"));
        assert_eq!(info.retry_after, Some(Duration::from_secs(21600)));

        let inverted: RenewalInfoBody = serde_json::from_str(
            r#"{"suggestedWindow":{"start":"2025-01-03T04:00:00Z","end":"2025-01-02T04:00:00Z"}}"#,
        )
        .unwrap();
        assert!(matches!(
            inverted.into_info(None),
            Err(AcmeError::Protocol(_))
        ));
    }

    #[test]
    fn url_joins_without_doubling_slashes() {
        let id = CertificateId::from_parts(&[1], &[2]);
        assert_eq!(
            renewal_info_url("https://ca.test/ari/", &id),
            "https://ca.test/ari/AQ.Ag"
        );
        assert_eq!(
            renewal_info_url("https://ca.test/ari", &id),
            "https://ca.test/ari/AQ.Ag"
        );
    }
}
