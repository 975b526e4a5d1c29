//! [`AcmeError`] and the retryable/final classification the CA pool fails over on.

use std::time::Duration;

use crate::acme::types::Problem;

/// Everything that can go wrong talking ACME.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// A certificate could not be parsed, or lacks what ARI needs (an Authority Key
    /// Identifier with a `keyIdentifier`, [RFC 9773 §4.1](https://www.rfc-editor.org/rfc/rfc9773#section-4.1)).
    #[error("certificate: {0}")]
    Certificate(String),
    /// The server requires an external account binding
    /// ([RFC 8555 §7.3.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4)) and none was
    /// given.
    #[error("the ACME server requires an external account binding (EAB) and none was configured")]
    ExternalAccountRequired,
    /// Transport failure: connect, TLS, timeout, reading the body.
    #[error("HTTP request to ACME server failed: {0}")]
    Http(#[source] reqwest::Error),
    /// The server answered with an error status and no problem document.
    #[error("ACME server answered HTTP {status} without a problem document")]
    HttpStatus {
        /// The HTTP status.
        status: u16,
        /// `Retry-After`, if sent.
        retry_after: Option<Duration>,
    },
    /// A key could not be parsed, generated or used to sign.
    #[error("ACME key error ({context}): {source}")]
    Key {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: josekit::JoseError,
    },
    /// The server sent a problem document
    /// ([RFC 8555 §6.7](https://www.rfc-editor.org/rfc/rfc8555#section-6.7)), or an object
    /// ended `invalid` and this is its (possibly synthesized) problem.
    #[error("ACME problem: {problem}")]
    Problem {
        /// The problem document (boxed to keep `Result<_, AcmeError>` small).
        problem: Box<Problem>,
        /// `Retry-After` sent with it, relative to when it was received.
        retry_after: Option<Duration>,
    },
    /// The server's response broke the protocol: bad JSON, missing `Location`, ...
    #[error("ACME protocol violation: {0}")]
    Protocol(String),
    /// A polling deadline ([`crate::acme::RetryPolicy::timeout`]) passed.
    #[error("gave up waiting for {what} after {waited:?}")]
    Timeout {
        /// What was being polled (an object URL).
        what: String,
        /// How long was waited.
        waited: Duration,
    },
    /// The HTTPS client could not be built (bad trust roots).
    #[error("building the ACME HTTPS client: {0}")]
    Tls(#[source] crate::tls::TlsError),
}

impl AcmeError {
    /// Whether trying again (later, or at another CA) may succeed.
    ///
    /// Retryable: transport errors, HTTP 5xx and 429, `serverInternal`, `rateLimited`,
    /// `badNonce` (only seen here once the nonce retries are exhausted), polling timeouts.
    /// Everything else is the caller's or the account's fault and will fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Http(_) | Self::Timeout { .. } => true,
            Self::HttpStatus { status, .. } => is_retryable_status(*status),
            Self::Problem { problem, .. } => {
                if let Some(kind) = problem.r#type.as_deref() {
                    if let Some(name) = kind.strip_prefix(crate::acme::types::ACME_ERROR_PREFIX) {
                        if RETRYABLE_TYPES.contains(&name) {
                            return true;
                        }
                        if FINAL_TYPES.contains(&name) {
                            return false;
                        }
                    }
                }
                // Unknown or absent type: let the HTTP status decide.
                problem.status.is_some_and(is_retryable_status)
            }
            Self::Certificate(_)
            | Self::ExternalAccountRequired
            | Self::Key { .. }
            | Self::Protocol(_)
            | Self::Tls(_) => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Problem { retry_after, .. } | Self::HttpStatus { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether the server refused a new order's `replaces` because that certificate was
    /// already replaced ([RFC 9773 §5](https://www.rfc-editor.org/rfc/rfc9773#section-5),
    /// `alreadyReplaced`); the order may be placed again without `replaces`.
    pub fn is_already_replaced(&self) -> bool {
        self.problem().is_some_and(|p| p.is_acme("alreadyReplaced"))
    }

    /// The ACME problem type (`urn:ietf:params:acme:error:…`) of this failure: the problem
    /// document's, or `externalAccountRequired` when the directory's `meta` said an external
    /// account binding is required and none was configured (decided without asking the
    /// server, but the same refusal as the server's own).
    pub fn problem_type(&self) -> Option<String> {
        match self {
            Self::ExternalAccountRequired => Some(format!(
                "{}externalAccountRequired",
                crate::acme::types::ACME_ERROR_PREFIX
            )),
            _ => self.problem().and_then(|p| p.r#type.clone()),
        }
    }

    /// The problem document, if this error carries one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }

    pub(crate) fn key(context: &'static str) -> impl FnOnce(josekit::JoseError) -> Self {
        move |source| Self::Key { context, source }
    }
}

fn is_retryable_status(status: u16) -> bool {
    status >= 500 || status == 429
}

/// ACME error types worth another attempt.
const RETRYABLE_TYPES: &[&str] = &["badNonce", "rateLimited", "serverInternal"];

/// ACME error types that will fail the same way again, whatever the HTTP status says.
const FINAL_TYPES: &[&str] = &[
    "accountDoesNotExist",
    "alreadyReplaced",
    "alreadyRevoked",
    "badCSR",
    "badPublicKey",
    "badRevocationReason",
    "badSignatureAlgorithm",
    "caa",
    "compound",
    "connection",
    "dns",
    "externalAccountRequired",
    "incorrectResponse",
    "invalidContact",
    "malformed",
    "orderNotReady",
    "rejectedIdentifier",
    "tls",
    "unauthorized",
    "unsupportedContact",
    "unsupportedIdentifier",
    "userActionRequired",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: Option<&str>, status: Option<u16>) -> AcmeError {
        AcmeError::Problem {
            problem: Box::new(Problem {
                r#type: kind.map(|k| format!("urn:ietf:params:acme:error:{k}")),
                status,
                ..Problem::default()
            }),
            retry_after: None,
        }
    }

    #[test]
    fn classification_table() {
        let cases: &[(AcmeError, bool)] = &[
            (problem(Some("badNonce"), Some(400)), true),
            (problem(Some("rateLimited"), Some(429)), true),
            (problem(Some("serverInternal"), Some(500)), true),
            (problem(Some("unauthorized"), Some(403)), false),
            (problem(Some("rejectedIdentifier"), Some(400)), false),
            (problem(Some("badCSR"), Some(400)), false),
            (problem(Some("malformed"), Some(400)), false),
            (problem(Some("incorrectResponse"), Some(400)), false),
            (problem(Some("accountDoesNotExist"), Some(400)), false),
            (problem(Some("externalAccountRequired"), Some(400)), false),
            (problem(Some("userActionRequired"), Some(403)), false),
            (problem(Some("alreadyReplaced"), Some(409)), false),
            // A final type stays final even behind a 5xx.
            (problem(Some("unauthorized"), Some(503)), false),
            // Unknown or missing types fall back to the status.
            (problem(Some("somethingNew"), Some(503)), true),
            (problem(Some("somethingNew"), Some(400)), false),
            (problem(None, Some(502)), true),
            (problem(None, None), false),
            (
                AcmeError::HttpStatus {
                    status: 503,
                    retry_after: None,
                },
                true,
            ),
            (
                AcmeError::HttpStatus {
                    status: 429,
                    retry_after: None,
                },
                true,
            ),
            (
                AcmeError::HttpStatus {
                    status: 404,
                    retry_after: None,
                },
                false,
            ),
            (
                AcmeError::Timeout {
                    what: "order".into(),
                    waited: Duration::from_secs(1),
                },
                true,
            ),
            (AcmeError::Protocol("bad json".into()), false),
            (AcmeError::ExternalAccountRequired, false),
        ];
        for (err, want) in cases {
            assert_eq!(err.is_retryable(), *want, "{err}");
        }
    }

    #[test]
    fn retry_after_and_problem_accessors() {
        let err = AcmeError::Problem {
            problem: Box::new(Problem {
                r#type: Some("urn:ietf:params:acme:error:rateLimited".into()),
                ..Problem::default()
            }),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.problem().is_some_and(|p| p.is_acme("rateLimited")));
        assert_eq!(AcmeError::Protocol("x".into()).retry_after(), None);
        assert!(AcmeError::Protocol("x".into()).problem().is_none());
        assert!(!err.is_already_replaced());
        assert!(problem(Some("alreadyReplaced"), Some(409)).is_already_replaced());
    }
}
