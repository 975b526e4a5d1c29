//! ACME response decoding: the status, headers and body a CA sends, read the way the client
//! reads them (`Location`, `Link` targets, `Retry-After`, the problem document of an error)
//! and the body decoded as each RFC 8555 object (directory, order, authorization, challenge,
//! problem). Input: a status line, `name: value` header lines, a blank line, the body.
//!
//! Invariants: every URL handed back is absolute and parses; a `Retry-After` in seconds is
//! taken as is; an error that carries a problem document has a status; a problem survives
//! a JSON round trip; a challenge's `extra` holds none of the fields it knows.

#![no_main]

use std::time::Duration;

use bytes::Bytes;
use certbroker::acme::{
    AcmeError, Authorization, Challenge, Directory, OrderState, Problem, read_response,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

/// The request URL relative references resolve against.
const REQUEST_URL: &str = "https://ca.test/acme/order/7";

fuzz_target!(
    init: certbroker_fuzz::write_seeds_if_asked(certbroker_fuzz::seeds::acme_response),
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let status = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.trim().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }

    for rel in ["alternate", "up"] {
        let reading = read_response(
            REQUEST_URL,
            status,
            headers.clone(),
            Bytes::copy_from_slice(body),
            rel,
        );
        if let Ok(location) = &reading.location {
            assert_absolute(location);
        }
        for link in &reading.links {
            assert_absolute(link);
        }
        if let Some(value) = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            && let Ok(secs) = value.trim().parse::<u64>()
        {
            assert_eq!(reading.retry_after, Some(Duration::from_secs(secs)));
        }
        let error = reading.error;
        // Each read of an HTTP-date takes its own "now": allow the time between them.
        let (a, b) = (error.retry_after(), reading.retry_after);
        assert_eq!(a.is_some(), b.is_some());
        if let (Some(a), Some(b)) = (a, b) {
            assert!(a.abs_diff(b) < Duration::from_secs(1), "{a:?} vs {b:?}");
        }
        let _ = (error.is_retryable(), error.to_string());
        if let AcmeError::Problem { problem, .. } = &error {
            assert!(problem.status.is_some());
            assert!(problem.r#type.is_some() || problem.detail.is_some());
        }
    }

    let _ = serde_json::from_slice::<Directory>(body);
    let _ = serde_json::from_slice::<OrderState>(body);
    let _ = serde_json::from_slice::<Authorization>(body);
    if let Ok(challenge) = serde_json::from_slice::<Challenge>(body) {
        for known in ["type", "url", "status", "token", "validated", "error"] {
            assert!(
                !challenge.extra.contains_key(known),
                "{known} left in extra"
            );
        }
    }
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        let json = serde_json::to_vec(&problem).expect("a problem serializes");
        assert_eq!(
            serde_json::from_slice::<Problem>(&json).expect("own JSON parses"),
            problem
        );
        let _ = problem.to_string();
    }
}

fn assert_absolute(url: &str) {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not absolute: {e}"));
    assert_eq!(parsed.as_str(), url, "URL does not re-serialize to itself");
}
