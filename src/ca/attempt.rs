//! What can go wrong in one attempt at one CA, and how that is classified for failover and
//! for the caller.

use std::time::Duration;

use crate::{
    acme::AcmeError,
    broker::{FailureKind, IssueError},
    challenge::TokenError,
    shaken::ShakenError,
};

const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

/// One attempt at one CA failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The ACME exchange failed (transport, or a problem document from the CA).
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// The SPC token could not be obtained.
    #[error("SPC token: {0}")]
    Token(#[from] TokenError),
    /// The CSR could not be built, or the issued certificate does not fit the request.
    #[error("certificate profile: {0}")]
    Profile(#[from] ShakenError),
    /// The CA offered no challenge this client can answer, or similar protocol gaps.
    #[error("{0}")]
    Unsupported(String),
    /// Local set-up failed (account key file, trust roots).
    #[error("local set-up: {0}")]
    Setup(String),
    /// The CA has terms of service (the URL) that the settings do not agree to.
    #[error(
        "the CA's terms of service ({0}) are not agreed to: read them and set \
         accept_terms_of_service = true in its [[ca]]"
    )]
    TermsNotAgreed(String),
    /// The whole attempt exceeded the CA's `attempt_timeout_secs`.
    #[error("no certificate within {0:?}")]
    Timeout(Duration),
}

impl AttemptError {
    /// Classifies for the broker, naming the CA.
    pub fn to_issue_error(&self, ca: &str) -> IssueError {
        let (kind, problem_type, detail, retry_after) = match self {
            Self::Acme(e) => {
                let problem = e.problem();
                let ptype = e.problem_type();
                let detail = problem
                    .and_then(|p| p.detail.clone())
                    .unwrap_or_else(|| e.to_string());
                let kind = if ptype.as_deref() == Some(RATE_LIMITED) {
                    FailureKind::RateLimited
                } else if e.is_retryable() {
                    FailureKind::Unavailable
                } else {
                    FailureKind::Refused
                };
                (kind, ptype, detail, e.retry_after())
            }
            Self::Token(e) => {
                let kind = if e.is_retryable() {
                    FailureKind::Unavailable
                } else {
                    FailureKind::Refused
                };
                (kind, None, self.to_string(), None)
            }
            Self::Profile(_) | Self::Unsupported(_) | Self::Setup(_) | Self::TermsNotAgreed(_) => {
                (FailureKind::Refused, None, self.to_string(), None)
            }
            Self::Timeout(_) => (FailureKind::Timeout, None, self.to_string(), None),
        };
        IssueError {
            ca: Some(ca.to_owned()),
            kind,
            problem_type,
            detail,
            retry_after,
        }
    }
}
