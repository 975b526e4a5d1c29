//! The one place a [`BrokerError`] becomes a `tonic::Status`.
//!
//! | error | code | details |
//! |---|---|---|
//! | invalid request field | `INVALID_ARGUMENT` | `google.rpc.BadRequest` naming the field, `ErrorInfo` `INVALID_FIELD` |
//! | request message not decodable (not protobuf) | `INVALID_ARGUMENT` | `ErrorInfo` `UNDECODABLE`; fixed message |
//! | the pool cannot satisfy a field (validity longer than its CAs issue) | `FAILED_PRECONDITION` | `BadRequest` naming the field |
//! | unknown certificate | `NOT_FOUND` | |
//! | CA or STI-PA refused | `FAILED_PRECONDITION` | `ErrorInfo` with CA, problem type, detail |
//! | CA rate limited | `RESOURCE_EXHAUSTED` | `ErrorInfo`, `RetryInfo` |
//! | no CA reachable, CA timed out | `UNAVAILABLE` | `ErrorInfo`, `RetryInfo` when known |
//! | issuance deadline passed | `DEADLINE_EXCEEDED` | |
//! | anything else | `INTERNAL` | fixed message; the cause is logged |
//! | caller's `[[policy]]` does not allow it | `PERMISSION_DENIED` | `ErrorInfo` `POLICY_DENIED` |
//! | caller over its rate limit | `RESOURCE_EXHAUSTED` | `ErrorInfo` `RATE_LIMITED`, `RetryInfo` |
//! | server at `max_concurrent_requests` (load shed) | `UNAVAILABLE` | `ErrorInfo` `OVERLOADED` |
//! | `server.request_timeout_secs` passed | `DEADLINE_EXCEEDED` | |
//! | request larger than `max_request_bytes` | `OUT_OF_RANGE` | (tonic's decoder) |
//!
//! Every message and detail string is bounded ([`MAX_TEXT`] characters, cut with an
//! ellipsis), whatever the input or the CA sent: a status must fit the caller's metadata
//! limits (grpc-core's default hard limit is 16 KiB for all headers).

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::policy::Denied;
use crate::broker::{BrokerError, FailureKind, IssueError};

/// Longest message or detail string a status carries, in characters.
pub(crate) const MAX_TEXT: usize = 512;

/// `s` cut to at most `max` characters, the last of them an ellipsis when it was cut.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if s[end..].chars().nth(1).is_some() => format!("{}…", &s[..end]),
        _ => s.to_owned(),
    }
}

fn text(s: &str) -> String {
    bounded(s, MAX_TEXT)
}

/// Maps a broker error to the status the caller sees.
pub fn to_status(err: &BrokerError) -> Status {
    match err {
        BrokerError::InvalidArgument { field, reason } => {
            // BadRequest names the field; ErrorInfo gives the machine-readable reason every
            // error carries (AIP-193).
            let mut details = ErrorDetails::with_bad_request_violation(text(field), text(reason));
            details.set_error_info(
                "INVALID_FIELD",
                "certbroker",
                HashMap::from([("field".to_owned(), text(field))]),
            );
            Status::with_error_details(
                Code::InvalidArgument,
                text(&format!("invalid {field}: {reason}")),
                details,
            )
        }
        BrokerError::FailedPrecondition { field, reason } => Status::with_error_details(
            Code::FailedPrecondition,
            text(&format!("{field}: {reason}")),
            ErrorDetails::with_bad_request_violation(text(field), text(reason)),
        ),
        BrokerError::NotFound(what) => Status::not_found(text(what)),
        BrokerError::Upstream(e) => upstream(e),
        BrokerError::DeadlineExceeded(_) => Status::deadline_exceeded(err.to_string()),
        BrokerError::Internal(cause) => {
            tracing::error!(cause = %cause, "internal error");
            Status::internal("internal error; see the broker's log")
        }
    }
}

/// The request message is not valid protobuf for its type: the caller's fault. The
/// message is fixed (the decoder's text is logged, not sent).
pub(crate) fn undecodable(message_type: &str) -> Status {
    let metadata = HashMap::from([("message".to_owned(), text(message_type))]);
    Status::with_error_details(
        Code::InvalidArgument,
        "the request message could not be decoded as protobuf",
        ErrorDetails::with_error_info("UNDECODABLE", "certbroker", metadata),
    )
}

/// The caller's policy refused the request (nothing was done for it).
pub(crate) fn denied(d: &Denied) -> Status {
    let metadata = HashMap::from([("caller".to_owned(), text(&d.caller))]);
    Status::with_error_details(
        Code::PermissionDenied,
        text(&d.to_string()),
        ErrorDetails::with_error_info("POLICY_DENIED", "certbroker", metadata),
    )
}

/// The caller sent more than its rate allows; it may retry after `retry_after`.
pub(crate) fn rate_limited(retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info("RATE_LIMITED", "certbroker", HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(
        Code::ResourceExhausted,
        "too many requests from this caller",
        details,
    )
}

/// The server is at its concurrency limit and shed the request. `UNAVAILABLE` because it is
/// transient and another replica may have room: gRPC retry policies retry it.
pub(crate) fn overloaded() -> Status {
    Status::with_error_details(
        Code::Unavailable,
        "server overloaded; retry with backoff",
        ErrorDetails::with_error_info("OVERLOADED", "certbroker", HashMap::new()),
    )
}

/// The request ran longer than the server allows.
pub(crate) fn request_timed_out(after: Duration) -> Status {
    Status::deadline_exceeded(format!("request exceeded the server's {after:?} limit"))
}

fn upstream(e: &IssueError) -> Status {
    let code = match e.kind {
        FailureKind::Refused => Code::FailedPrecondition,
        FailureKind::RateLimited => Code::ResourceExhausted,
        FailureKind::Unavailable | FailureKind::Timeout => Code::Unavailable,
        FailureKind::NoSuchPool => Code::InvalidArgument,
    };
    let mut metadata = HashMap::new();
    if let Some(ca) = &e.ca {
        metadata.insert("ca".to_owned(), text(ca));
    }
    if let Some(t) = &e.problem_type {
        metadata.insert("problem_type".to_owned(), text(t));
    }
    metadata.insert("detail".to_owned(), text(&e.detail));
    let reason = match e.kind {
        FailureKind::Refused => "UPSTREAM_REFUSED",
        FailureKind::RateLimited => "UPSTREAM_RATE_LIMITED",
        FailureKind::Unavailable => "UPSTREAM_UNAVAILABLE",
        FailureKind::Timeout => "UPSTREAM_TIMEOUT",
        FailureKind::NoSuchPool => "NO_SUCH_POOL",
    };
    let mut details = ErrorDetails::with_error_info(reason, "certbroker", metadata);
    if let Some(after) = e.retry_after {
        details.set_retry_info(Some(after));
    }
    if e.kind == FailureKind::NoSuchPool {
        details.add_bad_request_violation("ca_pool", text(&e.detail));
    }
    Status::with_error_details(code, text(&e.to_string()), details)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn upstream_err(kind: FailureKind, retry: Option<u64>) -> BrokerError {
        BrokerError::Upstream(IssueError {
            ca: Some("ca1".into()),
            kind,
            problem_type: Some("urn:ietf:params:acme:error:rateLimited".into()),
            detail: "slow down".into(),
            retry_after: retry.map(Duration::from_secs),
        })
    }

    #[test]
    fn mapping_table() {
        let cases = [
            (
                BrokerError::invalid("tn_auth_list[0].spc", "must not be empty"),
                Code::InvalidArgument,
            ),
            (BrokerError::NotFound("serial 01".into()), Code::NotFound),
            (
                upstream_err(FailureKind::Refused, None),
                Code::FailedPrecondition,
            ),
            (
                upstream_err(FailureKind::RateLimited, Some(30)),
                Code::ResourceExhausted,
            ),
            (
                upstream_err(FailureKind::Unavailable, None),
                Code::Unavailable,
            ),
            (upstream_err(FailureKind::Timeout, None), Code::Unavailable),
            (
                upstream_err(FailureKind::NoSuchPool, None),
                Code::InvalidArgument,
            ),
            (
                BrokerError::DeadlineExceeded(Duration::from_secs(1)),
                Code::DeadlineExceeded,
            ),
            (
                BrokerError::Internal("secret detail".into()),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(to_status(&err).code(), code, "{err}");
        }
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = to_status(&BrokerError::invalid(
            "tn_auth_list[0].spc",
            "must not be empty",
        ));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, "tn_auth_list[0].spc");
        assert_eq!(bad.field_violations[0].description, "must not be empty");
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_FIELD", "certbroker")
        );
        assert_eq!(info.metadata["field"], "tn_auth_list[0].spc");
    }

    #[test]
    fn upstream_carries_problem_and_retry_info() {
        let status = to_status(&upstream_err(FailureKind::RateLimited, Some(30)));
        assert!(
            status.message().contains("rateLimited"),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.metadata["ca"], "ca1");
        assert_eq!(
            info.metadata["problem_type"],
            "urn:ietf:params:acme:error:rateLimited"
        );
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn layer_statuses() {
        let denied = denied(&Denied {
            caller: "a.example".into(),
            what: "request spc 1".into(),
        });
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(
            denied.get_error_details().error_info().unwrap().metadata["caller"],
            "a.example"
        );
        let limited = rate_limited(Duration::from_millis(500));
        assert_eq!(limited.code(), Code::ResourceExhausted);
        assert_eq!(
            limited
                .get_error_details()
                .retry_info()
                .unwrap()
                .retry_delay,
            Some(Duration::from_millis(500))
        );
        assert_eq!(overloaded().code(), Code::Unavailable);
        assert_eq!(
            request_timed_out(Duration::from_secs(1)).code(),
            Code::DeadlineExceeded
        );
    }

    #[test]
    fn echoed_text_is_bounded() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "ab…");
        assert_eq!(bounded("ééééé", 4), "ééé…");
        assert_eq!(bounded("", 3), "");
        let long = "x".repeat(50_000);
        let statuses = [
            to_status(&BrokerError::invalid(long.clone(), long.clone())),
            to_status(&BrokerError::NotFound(long.clone())),
            to_status(&BrokerError::Upstream(IssueError {
                ca: Some(long.clone()),
                kind: FailureKind::Refused,
                problem_type: Some(long.clone()),
                detail: long.clone(),
                retry_after: None,
            })),
        ];
        for status in statuses {
            assert!(status.message().chars().count() <= MAX_TEXT, "message");
            assert!(status.details().len() < 8 * MAX_TEXT, "details");
        }
        assert_eq!(undecodable("X").code(), Code::InvalidArgument);
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let status = to_status(&BrokerError::Internal("secret detail".into()));
        assert!(!status.message().contains("secret"));
    }
}
