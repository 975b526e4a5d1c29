//! What can go wrong in one attempt at one CA, and how that is classified for failover and
//! for the caller.

use std::time::Duration;

use crate::{
    acme::AcmeError,
    broker::{FailureKind, IssueError},
    challenge::TokenError,
    shaken::{Finding, ShakenError},
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
    /// The CA issued a certificate with profile findings and this CA has `strict_profile`:
    /// a failure of the CA, so the pool fails over (and the CA's breaker counts it).
    #[error(
        "certificate {serial} does not conform (strict_profile): {}",
        join(findings)
    )]
    NonConforming {
        /// The leaf's serial, lowercase hex.
        serial: String,
        /// What the strict review found.
        findings: Vec<Finding>,
    },
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
            Self::NonConforming { .. } => (FailureKind::Unavailable, None, self.to_string(), None),
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

fn join(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_conforming_certificate_fails_over_and_names_its_findings() {
        let e = AttemptError::NonConforming {
            serial: "4b4b".into(),
            findings: vec![Finding {
                cert: 0,
                code: "key_usage_missing",
                detail: "no keyUsage extension".into(),
            }],
        };
        let ie = e.to_issue_error("first");
        assert!(ie.is_retryable(), "{ie:?}");
        assert_eq!(ie.kind, FailureKind::Unavailable);
        assert_eq!(
            ie.to_string(),
            "ca first: certificate 4b4b does not conform (strict_profile): \
             key_usage_missing (certificate 0): no keyUsage extension"
        );
    }
}
