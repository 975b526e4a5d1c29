//! A fully read HTTP response and the header parsing ACME needs: `Location`, `Link`,
//! `Retry-After`, and problem documents.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::acme::{error::AcmeError, retry::parse_retry_after, types::Problem};

/// Status, headers and body of one response; `url` is the request URL, for resolving
/// relative references.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) url: String,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Response {
    /// Parses the body as JSON.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, AcmeError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| AcmeError::Protocol(format!("malformed JSON from {}: {e}", self.url)))
    }

    /// The absolute `Location` URL (account and order URLs,
    /// [RFC 8555 §7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3)).
    pub(crate) fn location(&self) -> Result<String, AcmeError> {
        let value = self
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                AcmeError::Protocol(format!(
                    "response from {} lacks a Location header",
                    self.url
                ))
            })?;
        self.resolve(value)
    }

    /// `Retry-After`, relative to now.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(header::RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(value, SystemTime::now())
    }

    /// Absolute targets of every `Link` with the given `rel`
    /// ([RFC 8288](https://www.rfc-editor.org/rfc/rfc8288)).
    pub(crate) fn links(&self, rel: &str) -> Vec<String> {
        self.headers
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_links)
            .filter(|(_, rels)| rels.split_whitespace().any(|r| r.eq_ignore_ascii_case(rel)))
            .filter_map(|(target, _)| self.resolve(&target).ok())
            .collect()
    }

    /// Turns a non-success response into an error: a problem document if the body is one,
    /// else a bare status.
    pub(crate) fn into_error(self) -> AcmeError {
        let retry_after = self.retry_after();
        match serde_json::from_slice::<Problem>(&self.body) {
            Ok(mut problem) if problem.r#type.is_some() || problem.detail.is_some() => {
                problem.status.get_or_insert(self.status.as_u16());
                AcmeError::Problem {
                    problem: Box::new(problem),
                    retry_after,
                }
            }
            _ => AcmeError::HttpStatus {
                status: self.status.as_u16(),
                retry_after,
            },
        }
    }

    fn resolve(&self, reference: &str) -> Result<String, AcmeError> {
        let base = url::Url::parse(&self.url)
            .map_err(|e| AcmeError::Protocol(format!("bad request URL {}: {e}", self.url)))?;
        base.join(reference)
            .map(String::from)
            .map_err(|e| AcmeError::Protocol(format!("bad URL reference {reference:?}: {e}")))
    }
}

/// What the client reads from one HTTP response, decoded by the code the client itself runs
/// on every response: see [`read_response`].
#[derive(Debug)]
pub struct ResponseReading {
    /// The absolute `Location` URL, or why there is none.
    pub location: Result<String, AcmeError>,
    /// Absolute targets of every `Link` whose `rel` is the one asked for.
    pub links: Vec<String>,
    /// `Retry-After`, relative to now.
    pub retry_after: Option<Duration>,
    /// The error the response becomes if its status is not a success: a problem document
    /// if the body is one, else a bare status.
    pub error: AcmeError,
}

/// Reads an ACME server's response (`Location`, `Link` targets with `rel`, `Retry-After`,
/// and the problem document of an error) without a network round trip. Public so that fuzz
/// targets and tests can feed the client's header and problem decoding untrusted input;
/// `url` is the request URL that relative references resolve against.
pub fn read_response(
    url: &str,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    rel: &str,
) -> ResponseReading {
    let resp = Response {
        url: url.to_owned(),
        status,
        headers,
        body,
    };
    ResponseReading {
        location: resp.location(),
        links: resp.links(rel),
        retry_after: resp.retry_after(),
        error: resp.into_error(),
    }
}

/// Splits one `Link` header value into `(target, rel)` pairs. Targets are inside `<>`, so
/// commas in them do not split.
fn parse_links(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start + 1..].find('>') else {
            break;
        };
        let target = rest[start + 1..start + 1 + len].trim().to_owned();
        rest = &rest[start + 1 + len + 1..];
        // Parameters run until the next link (a comma outside quotes).
        let mut in_quotes = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    in_quotes = !in_quotes;
                }
                c == ',' && !in_quotes
            })
            .map_or(rest.len(), |(i, _)| i);
        let rel = rest[..end]
            .split(';')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("rel"))
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .unwrap_or_default();
        out.push((target, rel));
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Response {
            url: "https://ca.test/acme/cert/abc".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn link_alternates_relative_and_multiple() {
        let r = response(
            200,
            &[
                ("link", r#"<https://ca.test/dir>;rel="index""#),
                (
                    "link",
                    r#"</acme/cert/abc/1>;rel="alternate", <https://x.test/a,b>; rel=alternate"#,
                ),
            ],
            "",
        );
        assert_eq!(
            r.links("alternate"),
            vec!["https://ca.test/acme/cert/abc/1", "https://x.test/a,b"]
        );
        assert_eq!(r.links("index"), vec!["https://ca.test/dir"]);
        assert!(r.links("up").is_empty());
    }

    #[test]
    fn location_is_resolved_or_required() {
        let r = response(201, &[("location", "/acme/order/9")], "{}");
        assert_eq!(r.location().unwrap(), "https://ca.test/acme/order/9");
        let r = response(201, &[], "{}");
        assert!(matches!(r.location(), Err(AcmeError::Protocol(_))));
    }

    #[test]
    fn problem_or_bare_status() {
        let r = response(
            429,
            &[
                ("retry-after", "30"),
                ("content-type", "application/problem+json"),
            ],
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down"}"#,
        );
        let err = r.into_error();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        let p = err.problem().unwrap();
        assert!(p.is_acme("rateLimited"));
        assert_eq!(p.status, Some(429));
        assert!(err.is_retryable());

        let err = response(502, &[], "<html>bad gateway</html>").into_error();
        assert!(matches!(err, AcmeError::HttpStatus { status: 502, .. }));
        assert!(err.is_retryable());
    }
}
