//! Broker errors. They carry what a caller needs (field, CA, problem type, detail, when to
//! retry) and nothing of the transport; `api` turns them into `tonic::Status` in one place.

use std::{fmt, time::Duration};

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The request is malformed; `field` names the offending request field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Request field path, e.g. `tn_auth_list[0].spc`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The request is well-formed but the pool cannot satisfy it (a validity longer than its
    /// CAs issue); `field` names the request field at fault.
    #[error("{field}: {reason}")]
    FailedPrecondition {
        /// Request field path.
        field: String,
        /// Why the pool cannot satisfy it.
        reason: String,
    },
    /// No certificate matches the selector.
    #[error("{0}")]
    NotFound(String),
    /// Every CA that was asked failed.
    #[error(transparent)]
    Upstream(#[from] IssueError),
    /// The whole issuance took longer than `broker.issuance_timeout_secs`.
    #[error("issuance did not finish within {0:?}")]
    DeadlineExceeded(Duration),
    /// A bug or an impossible state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// Shorthand for [`BrokerError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<crate::cert::InvalidIdentifier> for BrokerError {
    fn from(e: crate::cert::InvalidIdentifier) -> Self {
        Self::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// An upstream failure, classified for failover and for the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct IssueError {
    /// Configured name of the CA (or STI-PA step) that failed, if one was reached.
    pub ca: Option<String>,
    /// What kind of failure.
    pub kind: FailureKind,
    /// The ACME problem type (`urn:ietf:params:acme:error:…`) when the CA sent one.
    pub problem_type: Option<String>,
    /// Human-readable detail, from the CA's problem document when there was one.
    pub detail: String,
    /// When the CA said to come back.
    pub retry_after: Option<Duration>,
}

/// Failure classes that decide failover and the caller's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The CA or STI-PA refused this request; asking again will not help.
    Refused,
    /// The CA could not be reached or failed on its side.
    Unavailable,
    /// The CA asked us to slow down.
    RateLimited,
    /// The CA did not finish within the per-attempt timeout.
    Timeout,
    /// The pool named in the request does not exist, or has no CA.
    NoSuchPool,
}

impl IssueError {
    /// Whether another CA (or a later try) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Unavailable | FailureKind::RateLimited | FailureKind::Timeout
        )
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(ca) = &self.ca {
            s.push_str(&format!("ca {ca}: "));
        }
        if let Some(t) = &self.problem_type {
            s.push_str(&format!("{t}: "));
        }
        s.push_str(&self.detail);
        s
    }
}
