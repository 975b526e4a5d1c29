//! `[ca.challenge]`: a CA's tkauth-01 dialect. Plain settings; `challenge` acts on them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shaken::TkValueEncoding;

/// Which field of the challenge response carries the token (shaken-acme.md §0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseField {
    /// `{"atc": token}`: deployed SHAKEN CAs. The default.
    #[default]
    Atc,
    /// `{"tkauth": token}`: RFC 9448 §4.
    Tkauth,
    /// Both keys, for CAs whose dialect is unknown.
    Both,
}

/// A CA's tkauth-01 dialect, from `[ca.challenge]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TkAuthSettings {
    /// Token field in the challenge response; default `atc`.
    pub response_field: ResponseField,
    /// Account fingerprint algorithm in the token request; default `jwk_thumbprint`.
    pub fingerprint: FingerprintAlgorithm,
    /// TNAuthList string encoding sent to the CA and the STI-PA; default `base64`.
    pub tkvalue_encoding: TkValueEncoding,
    /// Refetch a cached token this long before its `exp`; default 60 s.
    #[serde(with = "super::secs", rename = "refresh_margin_secs")]
    pub refresh_margin: Duration,
    /// Reuse a token for several challenges, in process and fleet-wide through the shared
    /// store; default true. Off for CAs that enforce one-time `jti` (nothing is cached).
    pub reuse_tokens: bool,
}

impl Default for TkAuthSettings {
    fn default() -> Self {
        Self {
            response_field: ResponseField::Atc,
            fingerprint: FingerprintAlgorithm::JwkThumbprint,
            tkvalue_encoding: TkValueEncoding::Base64,
            refresh_margin: Duration::from_secs(60),
            reuse_tokens: true,
        }
    }
}

/// Which account-key fingerprint an SPC token request carries: what is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FingerprintAlgorithm {
    /// The RFC 7638 JWK thumbprint (RFC 9448 §5 via RFC 8555 §8.1). The default.
    #[default]
    JwkThumbprint,
    /// SHA-256 of the SubjectPublicKeyInfo DER (Peeringhub's client, some helpers).
    SpkiSha256,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_names() {
        let s: TkAuthSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, TkAuthSettings::default());
        let s: TkAuthSettings = serde_json::from_str(
            r#"{"response_field":"tkauth","fingerprint":"spki_sha256","tkvalue_encoding":"base64_url","refresh_margin_secs":5,"reuse_tokens":false}"#,
        )
        .unwrap();
        assert_eq!(s.response_field, ResponseField::Tkauth);
        assert_eq!(s.fingerprint, FingerprintAlgorithm::SpkiSha256);
        assert_eq!(s.tkvalue_encoding, TkValueEncoding::Base64Url);
        assert_eq!(s.refresh_margin, Duration::from_secs(5));
        assert!(!s.reuse_tokens);
    }
}
