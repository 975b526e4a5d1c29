//! Challenge answers. tkauth-01 (RFC 9447/9448): SPC tokens from the STI-PA or a file,
//! cached per (TNAuthList, ca flag, account fingerprint) in process ([`CachingTokenProvider`])
//! and fleet-wide in the shared store ([`SharedTokenProvider`]), and the response payload in
//! the field the CA expects. http-01 (RFC 8555 §8.3): a small responder for `dns` identifiers.

mod cache;
mod fingerprint;
mod http01;
mod shared;
mod static_file;
mod stipa;
mod token;

use std::time::Duration;

pub use cache::CachingTokenProvider;
pub use fingerprint::{FingerprintAlgorithm, fingerprint};
pub use http01::{Http01Responder, key_authorization};
use serde::{Deserialize, Serialize};
pub use shared::{SharedTokenProvider, drop_shared_tokens, token_group, token_key};
pub use static_file::StaticTokenProvider;
pub use stipa::{StiPaClient, StiPaSettings};
pub use token::{AuthorityToken, TokenRequest};

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
    #[serde(with = "secs", rename = "refresh_margin_secs")]
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

/// The challenge response payload carrying `token`.
pub fn response_payload(field: ResponseField, token: &AuthorityToken) -> serde_json::Value {
    let jwt = token.jwt();
    match field {
        ResponseField::Atc => serde_json::json!({ "atc": jwt }),
        ResponseField::Tkauth => serde_json::json!({ "tkauth": jwt }),
        ResponseField::Both => serde_json::json!({ "atc": jwt, "tkauth": jwt }),
    }
}

/// Getting an SPC token failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The STI-PA refused the login.
    #[error("STI-PA login refused (HTTP {status}): {detail}")]
    Login {
        /// HTTP status.
        status: u16,
        /// The STI-PA's message.
        detail: String,
    },
    /// The STI-PA refused the token request.
    #[error("STI-PA token request refused (HTTP {status}): {detail}")]
    Request {
        /// HTTP status.
        status: u16,
        /// The STI-PA's message.
        detail: String,
    },
    /// The STI-PA could not be reached.
    #[error("STI-PA unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// A token or a response did not decode.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The token's claims differ from what was asked for.
    #[error("token {field} does not match the request: {detail}")]
    Mismatch {
        /// Which claim: `tktype`, `tkvalue`, `ca`, `fingerprint`.
        field: &'static str,
        /// How it differs.
        detail: String,
    },
    /// The token has expired (or expires within the refresh margin).
    #[error("token expired at {0}")]
    Expired(time::OffsetDateTime),
    /// The TNAuthList holds no SPC, which the STI-PA API needs in its URL.
    #[error("the TNAuthList has no SPC entry; the STI-PA issues tokens per SPC")]
    NoSpc,
    /// The token file could not be read.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTPS client could not be built.
    #[error("STI-PA client: {0}")]
    Setup(String),
}

impl TokenError {
    /// Whether trying again later (or elsewhere) may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Login { status, .. } | Self::Request { status, .. } => {
                *status >= 500 || *status == 429
            }
            _ => false,
        }
    }
}

/// Serde for a `Duration` written as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// A token [`CachingTokenProvider`] fetched anew (first use, near its `exp`, or after a
/// refusal): announced to [`TokenProvider::refreshes`] subscribers. No JWT in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRefreshed {
    /// What the token answers.
    pub request: TokenRequest,
    /// The new token's `jti`.
    pub jti: String,
    /// The new token's `exp`.
    pub expires_at: time::OffsetDateTime,
}

/// Source of SPC tokens.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync + std::fmt::Debug {
    /// A token for `req`, valid for at least a little while.
    async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError>;

    /// Forgets any token cached for `req`, because the CA refused it: the next
    /// [`TokenProvider::token`] fetches a new one. Providers that cache nothing do nothing.
    async fn discard(&self, _req: &TokenRequest) {}

    /// Announcements of tokens fetched anew, for providers that keep tokens (a cache);
    /// `None` for providers whose every answer is fetched (or read) as it is asked for.
    fn refreshes(&self) -> Option<tokio::sync::broadcast::Receiver<TokenRefreshed>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shapes() {
        let t = token::tests::sample_token(3600);
        assert_eq!(
            response_payload(ResponseField::Atc, &t),
            serde_json::json!({"atc": t.jwt()})
        );
        assert_eq!(
            response_payload(ResponseField::Tkauth, &t),
            serde_json::json!({"tkauth": t.jwt()})
        );
        let both = response_payload(ResponseField::Both, &t);
        assert_eq!(both["atc"], both["tkauth"]);
    }

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
