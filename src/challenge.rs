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

pub use cache::CachingTokenProvider;
pub use fingerprint::fingerprint;
pub use http01::{Http01Responder, key_authorization};
pub use shared::{SharedTokenProvider, drop_shared_tokens, token_group, token_key};
pub use static_file::StaticTokenProvider;
pub use stipa::{StiPaClient, StiPaSettings};
pub use token::{AuthorityToken, TokenRequest};

/// Re-exported from [`crate::config`], which owns the settings types.
pub use crate::config::{FingerprintAlgorithm, ResponseField, TkAuthSettings};

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
}
