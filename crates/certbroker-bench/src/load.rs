//! The load generator: `concurrency` tonic callers spread over a few HTTP/2 connections,
//! each timing its own GetCertificate calls into an HDR histogram, for a duration or for a
//! fixed number of requests.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use certbroker::pb::{
    CacheStatus, GetCertificateRequest,
    certificate_broker_service_client::CertificateBrokerServiceClient,
};

/// When a load run stops.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stop {
    /// After this long (plus the warm-up, which is not recorded).
    After(Duration),
    /// After exactly this many requests, each request of the mix once per lap.
    Count(u64),
}

/// How to drive one load run.
#[derive(Debug, Clone)]
pub(super) struct LoadSpec {
    /// Requests in flight at any time.
    pub(super) concurrency: usize,
    /// HTTP/2 connections the callers share.
    pub(super) connections: usize,
    /// Unrecorded warm-up before a timed run.
    pub(super) warmup: Duration,
    /// When to stop.
    pub(super) stop: Stop,
}

/// What a load run measured. Latencies are in microseconds.
#[derive(Debug)]
pub(super) struct LoadResult {
    /// Latency of every successful recorded request.
    pub(super) hist: Histogram<u64>,
    /// Recorded requests that failed.
    pub(super) errors: u64,
    /// Wall time of the recorded part.
    pub(super) elapsed: Duration,
    /// Successful answers by `cache_status` (index = the enum's value).
    pub(super) statuses: [u64; 5],
    /// First error message seen, if any.
    pub(super) first_error: Option<String>,
    /// Busy CPU seconds of the whole machine during the recorded part
    /// ([`crate::procs::busy_cpu_s`]).
    pub(super) cpu_s: f64,
}

impl LoadResult {
    /// Successful requests per second.
    pub(super) fn throughput(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful answers with this cache status.
    pub(super) fn count(&self, status: CacheStatus) -> u64 {
        self.statuses[status as usize]
    }
}

/// Opens `n` HTTP/2 connections to `addr`.
pub(super) async fn connect(
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<CertificateBrokerServiceClient<Channel>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        out.push(CertificateBrokerServiceClient::new(channel));
    }
    Ok(out)
}

/// Runs `spec` against `addr`, cycling through `mix`.
pub(super) async fn run(
    addr: SocketAddr,
    mix: Arc<Vec<GetCertificateRequest>>,
    spec: &LoadSpec,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!mix.is_empty(), "empty request mix");
    let clients = connect(addr, spec.connections).await?;
    if let Stop::After(_) = spec.stop {
        if !spec.warmup.is_zero() {
            drive(
                &clients,
                mix.clone(),
                spec.concurrency,
                Stop::After(spec.warmup),
            )
            .await?;
        }
    }
    drive(&clients, mix, spec.concurrency, spec.stop).await
}

async fn drive(
    clients: &[CertificateBrokerServiceClient<Channel>],
    mix: Arc<Vec<GetCertificateRequest>>,
    concurrency: usize,
    stop: Stop,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicU64::new(0));
    let cpu = crate::procs::busy_cpu_s();
    let start = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency.max(1) {
        let mut client = clients[w % clients.len()].clone();
        let (mix, next) = (mix.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            let mut statuses = [0u64; 5];
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let more = match stop {
                    Stop::After(d) => start.elapsed() < d,
                    Stop::Count(n) => i < n,
                };
                if !more {
                    break;
                }
                // Indices below the mix length fit in usize by construction.
                let req = mix[(i % mix.len() as u64) as usize].clone();
                let t = Instant::now();
                match client.get_certificate(req).await {
                    Ok(resp) => {
                        let us = t.elapsed().as_micros() as u64;
                        hist.saturating_record(us.max(1));
                        let s = resp.into_inner().cache_status as usize;
                        statuses[s.min(4)] += 1;
                    }
                    Err(status) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| status.to_string());
                    }
                }
            }
            (hist, errors, statuses, first_error)
        }));
    }
    let mut result = LoadResult {
        hist: new_histogram(),
        errors: 0,
        elapsed: Duration::ZERO,
        statuses: [0; 5],
        first_error: None,
        cpu_s: 0.0,
    };
    for w in workers {
        let (hist, errors, statuses, first_error) = w.await.context("load worker")?;
        result.hist.add(&hist).context("merging histograms")?;
        result.errors += errors;
        for (a, b) in result.statuses.iter_mut().zip(statuses) {
            *a += b;
        }
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = start.elapsed();
    result.cpu_s = crate::procs::busy_cpu_s() - cpu;
    Ok(result)
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub(super) fn new_histogram() -> Histogram<u64> {
    // Invariant: the bounds are constants that hdrhistogram accepts (low >= 1,
    // high >= 2 * low, sigfig <= 5).
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process, in KiB, from
/// `/proc/self/status`; zeros where that file does not exist.
pub(super) fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
