//! The tower stack in front of the gRPC services, outermost first:
//!
//! 1. `rpc` span with W3C trace context ([`rpc_span`], installed as tonic's `trace_fn`),
//!    and ([`RpcLayer`]) the caller's identity, worked out once per request (the client
//!    certificate's names, or the peer IP) and recorded on the span and in the request's
//!    extensions, and the gRPC status,
//! 2. per-caller rate limit ([`RateLimitLayer`]) → `RESOURCE_EXHAUSTED` with `RetryInfo`,
//! 3. concurrency limit with load shedding ([`ShedLayer`]) → `UNAVAILABLE`,
//! 4. request timeout ([`TimeoutLayer`]) → `DEADLINE_EXCEEDED`,
//!
//! and, per service, the request size limit (tonic's `max_decoding_message_size`) →
//! `OUT_OF_RANGE`. Rejections are answered as gRPC statuses built in `status.rs`, never as
//! transport errors. Health checks (`grpc.health.v1`) bypass the rate and concurrency
//! limits, so an overloaded replica still answers its probes.
//!
//! One file of about 490 lines (tests aside) on purpose: the whole stack reads in its order,
//! one `=== impl ===` section per layer, each small.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{policy::Caller, status};

type HttpRequest = http::Request<Body>;
type HttpResponse = http::Response<Body>;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

fn exempt(req: &HttpRequest) -> bool {
    req.uri().path().starts_with(HEALTH_PREFIX)
}

pub use crate::telemetry::RejectionObserver;

// === rpc span ===

/// The `rpc` span of one request (tonic's `trace_fn`), a SERVER span after the
/// OpenTelemetry RPC conventions: named `{rpc.service}/{rpc.method}` when exported, with
/// `rpc.system`, `rpc.service`, `rpc.method` and, by [`RpcLayer`], the caller's identity
/// and `rpc.grpc.status_code`; and the caller's W3C trace context
/// (`traceparent`, `tracestate`, read by OpenTelemetry's propagator) as its parent.
///
/// A debug-level span: exported whenever spans are (the exporter gets the project's own
/// spans at debug), in log lines with `RUST_LOG=info,certbroker::api::layers=debug` (or
/// `debug`). At the default `info` log filter without export it is disabled, and the
/// request pays nothing for it: an L1 hit logs no line but its `audit` line (which names
/// the caller), and what a miss logs runs in the broker's info-level span.
pub fn rpc_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    // `/package.Service/Method`; anything else is reported whole as the method.
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", path));
    let span = tracing::debug_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.method = %method,
        caller = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    // Attributes only the exporter needs, kept out of every log line.
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service.to_owned());
    if let Some(trace_id) = crate::telemetry::set_remote_parent(&span, req.headers()) {
        span.record("trace_id", trace_id);
    }
    span
}

/// Works out who is calling ([`Caller`]: the client certificate's names, or the peer IP),
/// once per request, for the rate limit, the policy and the audit (in the request's
/// extensions) and for the logs (the `rpc` span's `caller`); and records the gRPC status of
/// each response on the span: the numeric
/// `rpc.grpc.status_code`, and, for the codes the OpenTelemetry conventions count as
/// server errors (`UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`,
/// `UNAVAILABLE`, `DATA_LOSS`), an error status with the `grpc-message`. The status is in
/// the response headers (trailers-only responses: every error tonic or a layer answers)
/// or in the trailers at the end of the body; the span stays open until then, so it
/// covers the whole exchange, streaming responses included. Install it outermost, under
/// the span.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rpc { inner }
    }
}

/// See [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct Rpc<S> {
    inner: S,
}

impl<S> Service<HttpRequest> for Rpc<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        let caller = Caller::from_extensions(req.extensions());
        // The label only if the `rpc` span can be enabled at all; tonic enters it while
        // polling the future below, not during `call`.
        let label = tracing::enabled!(kind: tracing::metadata::Kind::SPAN, tracing::Level::DEBUG)
            .then(|| caller.label());
        req.extensions_mut().insert(caller);
        // `self.inner` was polled ready; calling it here, not in the future, spares
        // cloning (and dropping) the whole stack below on every request.
        let response = self.inner.call(req);
        Box::pin(async move {
            let span = label.and_then(|label| {
                let span = tracing::Span::current();
                let rpc = span.metadata().is_some_and(|m| m.name() == "rpc");
                rpc.then(|| {
                    span.record("caller", tracing::field::display(label));
                    span
                })
            });
            let res = response.await?;
            let Some(span) = span else {
                return Ok(res);
            };
            if record_grpc_status(&span, res.headers()) {
                return Ok(res);
            }
            Ok(res.map(|body| {
                Body::new(StatusBody {
                    inner: body,
                    span: Some(span),
                })
            }))
        })
    }
}

/// Records `grpc-status` (and `grpc-message`) from `headers` on `span`; false if absent.
fn record_grpc_status(span: &tracing::Span, headers: &http::HeaderMap) -> bool {
    let Some(code) = headers.get("grpc-status") else {
        return false;
    };
    let code = tonic::Code::from_bytes(code.as_bytes());
    span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
    use tonic::Code::{DataLoss, DeadlineExceeded, Internal, Unavailable, Unimplemented, Unknown};
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        // grpc-message is percent-encoded on the wire.
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        let description = if message.is_empty() {
            code.description().to_owned()
        } else {
            message
        };
        span.set_status(opentelemetry::trace::Status::error(description));
    }
    true
}

/// Undoes gRPC's percent-encoding of `grpc-message` (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response body that records the status from its trailers on the `rpc` span, and
/// holds the span open until the body is done.
struct StatusBody {
    inner: Body,
    span: Option<tracing::Span>,
}

impl http_body::Body for StatusBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(span)) = (frame.trailers_ref(), &self.span) {
                    record_grpc_status(span, trailers);
                    self.span = None;
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.span = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// === impl RateLimitLayer ===

/// Token bucket per caller: `per_sec` sustained, `burst` at once.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    /// `None` when the limit is off: then a request clones nothing of it.
    limiter: Option<Arc<Limiter>>,
}

#[derive(Debug)]
struct Limiter {
    observer: Option<Arc<dyn RejectionObserver>>,
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most callers tracked at once before idle (full) buckets are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl RateLimitLayer {
    /// `per_sec == 0` turns the limit off.
    pub fn new(per_sec: u32, burst: u32, observer: Option<Arc<dyn RejectionObserver>>) -> Self {
        let limiter = (per_sec > 0).then(|| {
            Arc::new(Limiter {
                observer,
                per_sec: f64::from(per_sec),
                burst: f64::from(burst.max(1)),
                buckets: Mutex::new(HashMap::new()),
            })
        });
        Self { limiter }
    }
}

impl Limiter {
    /// Takes a token for `key` at `now`, or says how long until one is available.
    fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update; the map is
        // still a valid map of buckets.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> Service<HttpRequest> for RateLimit<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if let (Some(limiter), false) = (&self.layer.limiter, exempt(&req)) {
            let key = req
                .extensions()
                .get::<Caller>()
                .map_or_else(|| "anonymous".to_owned(), Caller::rate_key);
            if let Err(wait) = limiter.take(&key, Instant::now()) {
                if let Some(o) = &limiter.observer {
                    o.rejected(req.uri().path(), "rate_limited");
                }
                tracing::debug!(caller = %key, "rate limited");
                return Box::pin(async move { Ok(status::rate_limited(wait).into_http()) });
            }
        }
        // `self.inner` was polled ready, and is called here rather than in a future.
        Box::pin(self.inner.call(req))
    }
}

// === impl ShedLayer ===

/// At most `max` requests in the services at once; more are answered `UNAVAILABLE` at
/// once instead of queueing (load shedding), so a saturated replica fails fast and the
/// client's retry can reach another.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shared: Arc<ShedShared>,
}

/// A count, not a semaphore: nothing ever waits for a slot, so there is no waiter list
/// (and no lock) to take when a request ends.
#[derive(Debug)]
struct ShedShared {
    in_flight: AtomicUsize,
    max: usize,
    observer: Option<Arc<dyn RejectionObserver>>,
}

/// One request's slot; given back on drop.
struct InFlight(Arc<ShedShared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl ShedLayer {
    /// Allows `max` concurrent requests.
    pub fn new(max: usize, observer: Option<Arc<dyn RejectionObserver>>) -> Self {
        Self {
            shared: Arc::new(ShedShared {
                in_flight: AtomicUsize::new(0),
                max,
                observer,
            }),
        }
    }

    /// A slot, unless `max` requests hold one.
    fn enter(&self) -> Option<InFlight> {
        let shared = &self.shared;
        let mut n = shared.in_flight.load(Ordering::Relaxed);
        loop {
            if n >= shared.max {
                return None;
            }
            match shared.in_flight.compare_exchange_weak(
                n,
                n + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(InFlight(Arc::clone(shared))),
                Err(now) => n = now,
            }
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

impl<S> Service<HttpRequest> for Shed<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let slot = if exempt(&req) {
            None
        } else {
            match self.layer.enter() {
                Some(slot) => Some(slot),
                None => {
                    if let Some(o) = &self.layer.shared.observer {
                        o.rejected(req.uri().path(), "overloaded");
                    }
                    return Box::pin(async { Ok(status::overloaded().into_http()) });
                }
            }
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let res = response.await;
            drop(slot);
            res
        })
    }
}

// === impl TimeoutLayer ===

/// Bounds each request; on expiry the handler is dropped (cancelling its broker work for
/// this caller; an issuance other callers share goes on) and the caller gets
/// `DEADLINE_EXCEEDED`.
///
/// The timer starts when the request first waits: a request answered by its first poll
/// (an L1 hit) never registers one, and one that waits is bounded from then on.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    shared: Arc<TimeoutShared>,
}

#[derive(Debug)]
struct TimeoutShared {
    after: Duration,
    observer: Option<Arc<dyn RejectionObserver>>,
}

impl TimeoutLayer {
    /// Times requests out after `after`.
    pub fn new(after: Duration, observer: Option<Arc<dyn RejectionObserver>>) -> Self {
        Self {
            shared: Arc::new(TimeoutShared { after, observer }),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S> Service<HttpRequest> for Timeout<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let shared = Arc::clone(&self.layer.shared);
        let uri = req.uri().clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = std::pin::pin!(response);
            if let Poll::Ready(res) = futures::poll!(response.as_mut()) {
                return res;
            }
            match tokio::time::timeout(shared.after, response).await {
                Ok(res) => res,
                Err(_) => {
                    if let Some(o) = &shared.observer {
                        o.rejected(uri.path(), "timeout");
                    }
                    Ok(status::request_timed_out(shared.after).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::Notify;
    use tonic::Code;
    use tower::ServiceExt;

    use super::*;

    fn request(path: &str) -> HttpRequest {
        http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(Body::empty())
            .unwrap()
    }

    fn code(res: &HttpResponse) -> Option<Code> {
        res.headers()
            .get("grpc-status")
            .map(|v| Code::from_bytes(v.as_bytes()))
    }

    /// A service that holds every request until `release` is notified.
    fn blocking(
        release: Arc<Notify>,
    ) -> impl Service<
        HttpRequest,
        Response = HttpResponse,
        Error = Infallible,
        Future = BoxFuture<'static, Result<HttpResponse, Infallible>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_req: HttpRequest| {
            let release = release.clone();
            let fut: BoxFuture<'static, _> = Box::pin(async move {
                release.notified().await;
                Ok(http::Response::new(Body::empty()))
            });
            fut
        })
    }

    #[derive(Debug, Default)]
    struct Count(Mutex<Vec<&'static str>>);
    impl RejectionObserver for Count {
        fn rejected(&self, _method: &str, reason: &'static str) {
            self.0.lock().unwrap().push(reason);
        }
    }

    #[test]
    fn grpc_message_percent_decoding() {
        assert_eq!(percent_decode("no%20CA%3A%20down"), "no CA: down");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn token_bucket() {
        let limiter = RateLimitLayer::new(2, 3, None).limiter.unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("a", t0).is_ok());
        }
        let wait = limiter.take("a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limiter.take("b", t0).is_ok(), "buckets are per caller");
        assert!(
            limiter.take("a", t0 + Duration::from_millis(500)).is_ok(),
            "refilled"
        );
        assert!(limiter.take("a", t0 + Duration::from_millis(500)).is_err());
        assert!(RateLimitLayer::new(0, 0, None).limiter.is_none());
    }

    #[tokio::test]
    async fn rate_limit_answers_resource_exhausted_and_spares_health() {
        let observer = Arc::new(Count::default());
        let svc = RateLimitLayer::new(1, 1, Some(observer.clone())).layer(tower::service_fn(
            |_req: HttpRequest| async { Ok::<_, Infallible>(http::Response::new(Body::empty())) },
        ));
        let first = svc
            .clone()
            .oneshot(request(
                "/certbroker.v1.CertificateBrokerService/GetCertificate",
            ))
            .await
            .unwrap();
        assert_eq!(code(&first), None, "passes through");
        let second = svc
            .clone()
            .oneshot(request(
                "/certbroker.v1.CertificateBrokerService/GetCertificate",
            ))
            .await
            .unwrap();
        assert_eq!(code(&second), Some(Code::ResourceExhausted));
        let health = svc
            .clone()
            .oneshot(request("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert_eq!(code(&health), None);
        assert_eq!(*observer.0.lock().unwrap(), vec!["rate_limited"]);
    }

    #[tokio::test]
    async fn shedding_beyond_the_concurrency_limit() {
        let release = Arc::new(Notify::new());
        let observer = Arc::new(Count::default());
        let svc = ShedLayer::new(2, Some(observer.clone())).layer(blocking(release.clone()));
        let path = "/certbroker.v1.CertificateBrokerService/GetCertificate";
        let a = tokio::spawn(svc.clone().oneshot(request(path)));
        let b = tokio::spawn(svc.clone().oneshot(request(path)));
        // Wait until both hold a permit.
        while svc.layer.shared.in_flight.load(Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
        let shed = svc.clone().oneshot(request(path)).await.unwrap();
        assert_eq!(code(&shed), Some(Code::Unavailable));
        let health = tokio::spawn(svc.clone().oneshot(request("/grpc.health.v1.Health/Check")));
        release.notify_waiters();
        // Whichever requests were already waiting are released; later ones need a permit.
        loop {
            if a.is_finished() && b.is_finished() && health.is_finished() {
                break;
            }
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(code(&a.await.unwrap().unwrap()), None);
        assert_eq!(code(&b.await.unwrap().unwrap()), None);
        assert_eq!(
            code(&health.await.unwrap().unwrap()),
            None,
            "health is not shed"
        );
        assert_eq!(
            svc.layer.shared.in_flight.load(Ordering::Relaxed),
            0,
            "slots come back"
        );
        let again = tokio::spawn(svc.clone().oneshot(request(path)));
        while !again.is_finished() {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(code(&again.await.unwrap().unwrap()), None, "allowed again");
        assert_eq!(*observer.0.lock().unwrap(), vec!["overloaded"]);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_answers_deadline_exceeded() {
        let release = Arc::new(Notify::new());
        let svc = TimeoutLayer::new(Duration::from_secs(5), None).layer(blocking(release));
        let res = svc.oneshot(request("/x/Y")).await.unwrap();
        assert_eq!(code(&res), Some(Code::DeadlineExceeded));
    }
}
