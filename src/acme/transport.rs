//! The HTTP side of the ACME client: [`Endpoint`] names and the [`RequestObserver`] told
//! about every exchange, and [`send`], which runs one request inside an OpenTelemetry-shaped
//! span with credentials kept out of `url.full`.

use std::time::Duration;

use tracing::Instrument;

use crate::acme::{error::AcmeError, response::Response};

/// The ACME resource a request is for: the `endpoint` label of request metrics. Server
/// URLs (orders, authorizations, ...) are not bounded; these names are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The directory (GET).
    Directory,
    /// `newNonce` (HEAD).
    NewNonce,
    /// `newAccount`, also to find an existing account.
    NewAccount,
    /// The account URL: state, deactivation.
    Account,
    /// `newOrder`.
    NewOrder,
    /// An authorization URL.
    Authz,
    /// A challenge URL.
    Challenge,
    /// An order's `finalize` URL.
    Finalize,
    /// An order URL.
    Order,
    /// A certificate URL (download).
    Certificate,
    /// `revokeCert`.
    RevokeCert,
    /// `renewalInfo` (RFC 9773).
    RenewalInfo,
    /// `keyChange`.
    KeyChange,
    /// `newAuthz` (pre-authorization).
    NewAuthz,
    /// A STAR order's `star-certificate` URL (RFC 8739).
    StarCertificate,
}

impl Endpoint {
    /// Every endpoint, in protocol order.
    pub const ALL: [Endpoint; 15] = [
        Endpoint::Directory,
        Endpoint::NewNonce,
        Endpoint::NewAccount,
        Endpoint::Account,
        Endpoint::NewOrder,
        Endpoint::Authz,
        Endpoint::Challenge,
        Endpoint::Finalize,
        Endpoint::Order,
        Endpoint::Certificate,
        Endpoint::RevokeCert,
        Endpoint::RenewalInfo,
        Endpoint::KeyChange,
        Endpoint::NewAuthz,
        Endpoint::StarCertificate,
    ];

    /// The name RFC 8555 uses (directory keys; resources by their kind).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Directory => "directory",
            Endpoint::NewNonce => "newNonce",
            Endpoint::NewAccount => "newAccount",
            Endpoint::Account => "account",
            Endpoint::NewOrder => "newOrder",
            Endpoint::Authz => "authz",
            Endpoint::Challenge => "challenge",
            Endpoint::Finalize => "finalize",
            Endpoint::Order => "order",
            Endpoint::Certificate => "certificate",
            Endpoint::RevokeCert => "revokeCert",
            Endpoint::RenewalInfo => "renewalInfo",
            Endpoint::KeyChange => "keyChange",
            Endpoint::NewAuthz => "newAuthz",
            Endpoint::StarCertificate => "starCertificate",
        }
    }
}

/// Told about every HTTP exchange a [`crate::acme::Client`] makes, once the answer's body is read or
/// the exchange failed. Knows nothing of who listens: the caller implements it.
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    /// One exchange: `method` is the HTTP method, `status` the HTTP status (`None`: no
    /// answer, e.g. connection refused or timeout), `took` the time to the whole body.
    fn observe(
        &self,
        endpoint: Endpoint,
        method: &'static str,
        status: Option<u16>,
        took: Duration,
    );
}

/// Sends one request and reads the whole body, inside an `acme.request` span: a CLIENT
/// span after the OpenTelemetry HTTP conventions (`http.request.method`, `url.full` without
/// credentials, `http.response.status_code`; error status and `error.type` for a transport
/// failure or a status of 400 and above, as the conventions ask of HTTP clients).
pub(crate) async fn send(
    url: &str,
    method: &str,
    req: reqwest::RequestBuilder,
) -> Result<Response, AcmeError> {
    let span = tracing::debug_span!(
        "acme.request",
        otel.kind = "client",
        http.request.method = method,
        url.full = %redacted_url(url),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    async {
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let span = tracing::Span::current();
                span.record("error.type", "transport");
                span.record("otel.status_code", "ERROR");
                return Err(AcmeError::Http(e));
            }
        };
        let status = resp.status();
        let span = tracing::Span::current();
        // An i64: tracing-opentelemetry exports unsigned values as strings.
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.as_u16() >= 400 {
            span.record("error.type", status.as_str());
            span.record("otel.status_code", "ERROR");
        }
        tracing::debug!(status = status.as_u16(), "acme response");
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(AcmeError::Http)?;
        Ok(Response {
            url: url.to_owned(),
            status,
            headers,
            body,
        })
    }
    .instrument(span)
    .await
}

/// Runs one exchange and tells `observer` its endpoint, status and duration.
pub(crate) async fn observed(
    observer: Option<&dyn RequestObserver>,
    endpoint: Endpoint,
    method: &'static str,
    exchange: impl Future<Output = Result<Response, AcmeError>>,
) -> Result<Response, AcmeError> {
    let started = std::time::Instant::now();
    let result = exchange.await;
    if let Some(observer) = observer {
        let status = result.as_ref().ok().map(|r| r.status.as_u16());
        observer.observe(endpoint, method, status, started.elapsed());
    }
    result
}

/// `url` as the `url.full` attribute: user name and password replaced by `REDACTED`, and the
/// values of query parameters that commonly carry signatures or tokens too.
fn redacted_url(url: &str) -> String {
    const SECRET_PARAMS: &[&str] = &[
        "awsaccesskeyid",
        "signature",
        "sig",
        "x-goog-signature",
        "token",
        "access_token",
        "key",
        "password",
    ];
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(unparsable)".to_owned();
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username("REDACTED");
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("REDACTED"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                let v = if secret {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_full_has_no_credentials() {
        assert_eq!(
            redacted_url("https://ca.test/acme/order/1"),
            "https://ca.test/acme/order/1"
        );
        assert_eq!(
            redacted_url("https://user:pw@ca.test/dir?token=abc&x=1&Signature=s"),
            "https://REDACTED:REDACTED@ca.test/dir?token=REDACTED&x=1&Signature=REDACTED"
        );
        assert_eq!(redacted_url("not a url"), "(unparsable)");
    }
}
