//! Scenarios 1–3: L1 hit against a plain tonic service, L2 hit against `redis-benchmark`,
//! and fan-in of many callers over three replicas onto one issuance.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use tonic::transport::Channel;

use super::{
    Config,
    fixture::{self, DevEnv, Served},
    load::{self, LoadSpec, Stop},
    procs::{self, RedisServer},
    report::{Report, Row},
};
use certbroker::{
    app::App,
    pb::{self, CacheStatus, certificate_broker_service_client::CertificateBrokerServiceClient},
};

/// Scenario 1: GetCertificate for warm keys, against the same service answering a
/// prepared response.
pub(super) async fn l1(cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "l1",
        "GetCertificate for warm keys (HIT_LOCAL) vs a tonic service with the same proto, \
         server options and transport returning the same response bytes",
        cfg.quick,
    );
    let env = DevEnv::start().await?;
    let app = env.memory_app().await?;
    let served = Served::broker(app.broker().clone()).await?;
    let mix: Vec<pb::GetCertificateRequest> = (0..cfg.keys)
        .map(|i| fixture::spc_request(&format!("{}", 2000 + i)))
        .collect();
    let mut client = load::connect(served.addr, 1).await?.remove(0);
    let mut sample = None;
    for req in &mix {
        sample = Some(client.get_certificate(req.clone()).await?.into_inner());
    }
    let mut response = sample.context("no keys to warm")?;
    response.cache_status = CacheStatus::HitLocal as i32;
    report.metrics.insert(
        "response_bytes".into(),
        prost::Message::encoded_len(&response) as f64,
    );
    let baseline = Served::baseline(response).await?;
    let mix = Arc::new(mix);
    let spec = cfg.timed_spec();
    cfg.parameters(&mut report, &spec);

    let base = load::run(baseline.addr, mix.clone(), &spec).await?;
    let hit = load::run(served.addr, mix, &spec).await?;
    check_all(&hit, CacheStatus::HitLocal)?;
    report
        .rows
        .push(Row::from_load("tonic baseline (same response)", &base));
    report.rows.push(Row::from_load("broker L1 hit", &hit));
    let tput = hit.throughput() / base.throughput();
    let p99 = hit.hist.value_at_quantile(0.99) as f64 / base.hist.value_at_quantile(0.99) as f64;
    report.metrics.insert("throughput_ratio".into(), tput);
    report.metrics.insert("p99_ratio".into(), p99);
    report.target("L1 throughput >= 0.8 x baseline", tput, 0.8, true);
    report.target("L1 p99 <= 2 x baseline p99", p99, 2.0, false);
    report.finish(&cfg.out)
}

/// Scenario 2: each key once on a fresh replica (HIT_SHARED), against `redis-benchmark` GET.
pub(super) async fn l2(cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "l2",
        "fresh replicas (empty L1) each asking for every seeded key once (HIT_SHARED from \
         Redis), vs redis-benchmark GET of a value the size of a stored entry, same concurrency",
        cfg.quick,
    );
    procs::require("redis-benchmark", "redis-tools")?;
    let redis = RedisServer::start()?;
    let env = DevEnv::start().await?;
    let template = fixture::template_record(&env).await?;
    let seeds = if cfg.quick { 200 } else { 2000 };
    let seeder =
        fixture::template_broker(fixture::redis_store(&redis.url()).await?, template.clone())
            .await?;
    fill(&seeder, 0, seeds).await?;
    let entry = largest_value(&redis.url()).await?;
    report.metrics.insert("entry_bytes".into(), entry as f64);
    report.parameters.insert("keys".into(), seeds as f64);

    let mix: Arc<Vec<_>> = Arc::new((0..seeds).map(|i| fixture::spc_request(&spc(i))).collect());
    let spec = LoadSpec {
        stop: Stop::Count(seeds as u64),
        ..cfg.timed_spec()
    };
    cfg.parameters(&mut report, &spec);
    // The transport's own ceiling for this response, for context: a fresh replica's answer
    // served by the plain tonic service.
    let probe = Served::broker(
        fixture::template_broker(fixture::redis_store(&redis.url()).await?, template.clone())
            .await?,
    )
    .await?;
    let mut response = load::connect(probe.addr, 1)
        .await?
        .remove(0)
        .get_certificate(mix[0].clone())
        .await?
        .into_inner();
    drop(probe);
    response.cache_status = CacheStatus::HitShared as i32;
    let baseline = Served::baseline(response).await?;
    let base = load::run(
        baseline.addr,
        mix.clone(),
        &LoadSpec {
            stop: Stop::After(cfg.duration),
            ..spec.clone()
        },
    )
    .await?;
    drop(baseline);

    let mut hist = load::new_histogram();
    let (mut elapsed, mut errors, mut rounds) = (Duration::ZERO, 0, 0u32);
    let budget = Instant::now();
    while rounds == 0 || budget.elapsed() < cfg.duration {
        let replica =
            fixture::template_broker(fixture::redis_store(&redis.url()).await?, template.clone())
                .await?;
        let served = Served::broker(replica).await?;
        let r = load::run(served.addr, mix.clone(), &spec).await?;
        check_all(&r, CacheStatus::HitShared)?;
        hist.add(&r.hist)?;
        elapsed += r.elapsed;
        errors += r.errors;
        rounds += 1;
    }
    report.parameters.insert("rounds".into(), f64::from(rounds));
    let combined = load::LoadResult {
        hist,
        errors,
        elapsed,
        statuses: [0; 5],
        first_error: None,
    };
    let redis_requests = if cfg.quick { 20_000 } else { 200_000 };
    let rb = tokio::task::spawn_blocking({
        let (port, c) = (redis.port, cfg.concurrency);
        move || procs::redis_benchmark(port, entry, c, redis_requests)
    })
    .await??;
    report.rows.push(Row {
        name: "redis-benchmark GET".into(),
        requests: rb.requests,
        errors: 0,
        throughput_rps: rb.rps,
        p50_us: Some(rb.p50_us),
        p90_us: None,
        p99_us: Some(rb.p99_us),
        p999_us: None,
        max_us: Some(rb.max_us),
    });
    report
        .rows
        .push(Row::from_load("tonic baseline (same response)", &base));
    report
        .rows
        .push(Row::from_load("broker L2 hit (fresh replica)", &combined));
    let ratio = combined.throughput() / rb.rps;
    report.metrics.insert("throughput_ratio".into(), ratio);
    report.metrics.insert(
        "tonic_baseline_vs_redis_ratio".into(),
        base.throughput() / rb.rps,
    );
    report.metrics.insert(
        "l2_vs_tonic_baseline_ratio".into(),
        combined.throughput() / base.throughput(),
    );
    report.target(
        "L2 throughput >= 0.5 x redis-benchmark GET",
        ratio,
        0.5,
        true,
    );
    // Issue 14: one gRPC round trip plus one Redis GET of the entry, each at the rate this
    // run measured for it alone: 1 / (1/tonic + 1/redis).
    let composed = 1.0 / (1.0 / base.throughput() + 1.0 / rb.rps);
    let vs_composed = combined.throughput() / composed;
    report.metrics.insert("composed_limit_rps".into(), composed);
    report
        .metrics
        .insert("l2_vs_composed_limit_ratio".into(), vs_composed);
    report.target(
        "L2 throughput >= 0.9 x composed limit (tonic + GET)",
        vs_composed,
        0.9,
        true,
    );
    report.finish(&cfg.out)
}

/// Scenario 3: many concurrent callers over three replicas for one new key: one order, and how much
/// later than one issuance the last caller is answered.
pub(super) async fn fanin(cfg: &Config) -> anyhow::Result<Report> {
    let callers = cfg.fanin_callers;
    let mut report = Report::new(
        "fanin",
        "concurrent callers, spread over 3 replicas sharing Redis, ask for one new key at once \
         (devca upstream); orders placed and last answer minus one issuance",
        cfg.quick,
    );
    report.parameters.insert("callers".into(), callers as f64);
    report.parameters.insert("replicas".into(), 3.0);
    let redis = RedisServer::start()?;
    let env = DevEnv::start().await?;
    let settings = env.settings(&fixture::redis_store_toml(&redis.url()))?;
    let mut replicas = vec![];
    for _ in 0..3 {
        let app = App::build(&settings).await?;
        replicas.push(Served::broker(app.broker().clone()).await?);
    }
    let mut clients = vec![];
    for r in &replicas {
        clients.push(load::connect(r.addr, 1).await?.remove(0));
    }
    // Unmeasured: first issuance fetches the SPC token and warms connections.
    clients[0]
        .get_certificate(fixture::spc_request("3000"))
        .await?;
    let t = Instant::now();
    let one = clients[0]
        .get_certificate(fixture::spc_request("3001"))
        .await?
        .into_inner();
    let issuance = t.elapsed();
    anyhow::ensure!(one.cache_status() == CacheStatus::Issued, "3001 not issued");

    // The transport's own burst, same run: the same callers, spread over three baseline
    // servers (the broker's service and server options, answering `one`'s bytes without any
    // work), released together. What the broker adds to a burst is its window minus this.
    let mut baselines = vec![];
    let mut base_clients = vec![];
    for _ in 0..3 {
        let b = Served::baseline(one.clone()).await?;
        base_clients.push(load::connect(b.addr, 1).await?.remove(0));
        baselines.push(b);
    }
    let transport = burst(&base_clients, callers, "3002").await?;
    drop(baselines);

    let orders_before = env.ca.stats().new_orders;
    let fan = burst(&clients, callers, "3002").await?;
    let mut serials = fan.serials;
    serials.sort();
    serials.dedup();
    let orders = env.ca.stats().new_orders - orders_before;
    let window = fan.window;
    let extra_ms = (window.as_secs_f64() - issuance.as_secs_f64()) * 1000.0;
    let transport_ms = transport.window.as_secs_f64() * 1000.0;
    let row = |hist, elapsed| load::LoadResult {
        hist,
        errors: 0,
        elapsed,
        statuses: [0; 5],
        first_error: None,
    };
    report.rows.push(Row::from_load(
        "transport burst (tonic baseline)",
        &row(transport.hist, transport.window),
    ));
    report
        .rows
        .push(Row::from_load("fan-in callers", &row(fan.hist, window)));
    report.metrics.insert("orders".into(), orders as f64);
    report
        .metrics
        .insert("distinct_certificates".into(), serials.len() as f64);
    report
        .metrics
        .insert("one_issuance_ms".into(), issuance.as_secs_f64() * 1000.0);
    report
        .metrics
        .insert("last_answer_ms".into(), window.as_secs_f64() * 1000.0);
    report.metrics.insert("extra_ms".into(), extra_ms);
    report
        .metrics
        .insert("transport_burst_ms".into(), transport_ms);
    report
        .metrics
        .insert("extra_beyond_transport_ms".into(), extra_ms - transport_ms);
    report.target("fan-in orders placed == 1", orders as f64, 1.0, false);
    report.target("fan-in extra latency <= 50 ms", extra_ms, 50.0, false);
    if let Some(t) = report.targets.first_mut() {
        t.pass = orders == 1 && serials.len() == 1;
    }
    drop(replicas);
    report.finish(&cfg.out)
}

/// What one burst of callers saw.
struct Burst {
    hist: hdrhistogram::Histogram<u64>,
    /// First caller's start to last caller's answer.
    window: Duration,
    serials: Vec<String>,
}

/// `callers` tasks, spread round-robin over `clients`, released together by a barrier, each
/// asking once for `spc`.
async fn burst(
    clients: &[CertificateBrokerServiceClient<Channel>],
    callers: usize,
    spc: &str,
) -> anyhow::Result<Burst> {
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = Vec::with_capacity(callers);
    for i in 0..callers {
        let mut c = clients[i % clients.len()].clone();
        let barrier = barrier.clone();
        let req = fixture::spc_request(spc);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let r = c.get_certificate(req).await;
            (start, Instant::now(), r.map(|r| r.into_inner().serial_hex))
        }));
    }
    let mut hist = load::new_histogram();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut serials = vec![];
    for t in tasks {
        let (start, end, r) = t.await?;
        serials.push(r.context("a fan-in caller failed")?);
        hist.saturating_record((end - start).as_micros() as u64);
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    let window = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    };
    Ok(Burst {
        hist,
        window,
        serials,
    })
}

/// The SPC of the `i`th synthetic key.
pub(super) fn spc(i: usize) -> String {
    format!("S{i:07}")
}

/// Asks `broker` (in process) for keys `from..from + n`, 64 at a time.
pub(super) async fn fill(
    broker: &certbroker::broker::Broker,
    from: usize,
    n: usize,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = stream::iter(from..from + n)
        .map(|i| async move {
            broker
                .get_certificate(fixture::spc_cert_request(&spc(i))?)
                .await?;
            Ok(())
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Fails unless every answer of `r` succeeded with `status`.
pub(super) fn check_all(r: &load::LoadResult, status: CacheStatus) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.errors == 0,
        "{} requests failed, first: {}",
        r.errors,
        r.first_error.as_deref().unwrap_or("?")
    );
    anyhow::ensure!(
        r.count(status) == r.hist.len(),
        "expected every answer {status:?}, got {:?}",
        r.statuses
    );
    Ok(())
}

/// The largest string value in the Redis at `url` (the stored certificate entries).
async fn largest_value(url: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut con).await?;
    let mut largest = 0usize;
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut con).await?;
        if kind == "string" {
            let n: usize = redis::cmd("STRLEN").arg(&k).query_async(&mut con).await?;
            largest = largest.max(n);
        }
    }
    anyhow::ensure!(largest > 0, "no string values in Redis after seeding");
    Ok(largest)
}
