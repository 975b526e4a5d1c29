//! Scenarios 1–3: L1 hit against a plain tonic service, L2 hit against the composed limit of
//! a plain tonic service and `redis-benchmark`, and fan-in of many callers over three
//! replicas onto one issuance.

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
        "GetCertificate for warm keys (HIT_LOCAL), in-process client, vs a tonic service with \
         the same proto, server options and transport returning the same response bytes; \
         alternating rounds",
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

    report.parameters.insert("rounds".into(), cfg.rounds as f64);

    // Alternating rounds (baseline, broker; broker, baseline; ...) so that drift on a
    // shared machine hits both sides alike.
    let (mut tputs, mut p99s) = (vec![], vec![]);
    for round in 0..cfg.rounds {
        let mut order = [false, true];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this = [None, None];
        for is_broker in order {
            let (addr, name) = if is_broker {
                (served.addr, "broker L1 hit")
            } else {
                (baseline.addr, "tonic baseline (same response)")
            };
            let r = load::run(addr, mix.clone(), &spec).await?;
            if is_broker {
                check_all(&r, CacheStatus::HitLocal)?;
            }
            report
                .rows
                .push(Row::from_load(&format!("{name}, r{}", round + 1), &r));
            this[usize::from(is_broker)] = Some(r);
        }
        if let [Some(base), Some(hit)] = this {
            tputs.push(hit.throughput() / base.throughput());
            p99s.push(
                hit.hist.value_at_quantile(0.99) as f64
                    / base.hist.value_at_quantile(0.99).max(1) as f64,
            );
        }
    }
    let tput = report.spread("throughput_ratio", &tputs);
    let p99 = report.spread("p99_ratio", &p99s);
    // Issue 14's target 1 is about the broker as users run it, loaded from outside: the
    // `external` scenario. These are issue 8's in-process bounds, for comparison.
    report.target(
        "8: L1 in-process throughput >= 0.8 x baseline (median of rounds)",
        tput,
        0.8,
        true,
    );
    report.target(
        "8: L1 in-process p99 <= 2 x baseline p99 (median of rounds)",
        p99,
        2.0,
        false,
    );
    report.finish(&cfg.out)
}

/// Scenario 2: each key once on fresh replicas (HIT_SHARED), against the composed limit of the
/// tonic baseline and `redis-benchmark` GET, round by round.
pub(super) async fn l2(cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "l2",
        "fresh replicas (empty L1) each asking for every seeded key once (HIT_SHARED from \
         Redis) vs the composed limit of a tonic service returning the same bytes and \
         redis-benchmark GET of a value the size of a stored entry, same concurrency; \
         rounds of the three, alternating order",
        cfg.quick,
    );
    procs::require("redis-benchmark", "redis-tools")?;
    let redis = RedisServer::start()?;
    let env = DevEnv::start().await?;
    let template = fixture::template_record(&env).await?;
    let seeds = cfg.l2_keys;
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
    let redis_requests = if cfg.quick { 20_000 } else { 200_000 };
    report.parameters.insert("rounds".into(), cfg.rounds as f64);
    report
        .parameters
        .insert("redis_benchmark_requests".into(), redis_requests as f64);

    // Each round measures the three sides (tonic baseline, redis-benchmark GET, broker L2);
    // odd rounds in the reverse order, so that drift hits every side alike.
    let (mut vs_composed, mut vs_redis, mut vs_tonic, mut composed_rps) =
        (vec![], vec![], vec![], vec![]);
    // Busy CPU of the whole machine per request, each side: what the composed limit adds
    // up when the sides are CPU-bound (they share the two cores).
    let (mut tonic_cpu, mut redis_cpu, mut broker_cpu) = (vec![], vec![], vec![]);
    let cpu_us = |cpu_s: f64, requests: u64| cpu_s * 1e6 / (requests as f64).max(1.0);
    for round in 0..cfg.rounds {
        let mut order = [L2Side::Tonic, L2Side::Redis, L2Side::Broker];
        if round % 2 == 1 {
            order.reverse();
        }
        let r = round + 1;
        let (mut tonic, mut redis_rps, mut broker) = (0.0, 0.0, 0.0);
        for side in order {
            match side {
                L2Side::Tonic => {
                    let base = load::run(
                        baseline.addr,
                        mix.clone(),
                        &LoadSpec {
                            stop: Stop::After(cfg.duration),
                            ..spec.clone()
                        },
                    )
                    .await?;
                    tonic_cpu.push(cpu_us(base.cpu_s, base.hist.len()));
                    tonic = base.throughput();
                    report.rows.push(Row::from_load(
                        &format!("tonic baseline (same response), r{r}"),
                        &base,
                    ));
                }
                L2Side::Redis => {
                    let rb = tokio::task::spawn_blocking({
                        let (port, c) = (redis.port, cfg.concurrency);
                        move || procs::redis_benchmark(port, entry, c, redis_requests)
                    })
                    .await??;
                    redis_rps = rb.rps;
                    redis_cpu.push(cpu_us(rb.cpu_s, rb.requests));
                    report.rows.push(Row {
                        name: format!("redis-benchmark GET, r{r}"),
                        requests: rb.requests,
                        errors: 0,
                        throughput_rps: rb.rps,
                        p50_us: Some(rb.p50_us.round()),
                        p90_us: None,
                        p99_us: Some(rb.p99_us.round()),
                        p999_us: None,
                        max_us: Some(rb.max_us.round()),
                    });
                }
                L2Side::Broker => {
                    let (combined, replicas) =
                        l2_fresh_replicas(&redis, &template, &mix, &spec, cfg.duration).await?;
                    broker_cpu.push(cpu_us(combined.cpu_s, combined.hist.len()));
                    broker = combined.throughput();
                    report.rows.push(Row::from_load(
                        &format!("broker L2 hit (fresh replicas), r{r}"),
                        &combined,
                    ));
                    report.details.push(format!(
                        "r{r}: {replicas} fresh replicas, each asked for all {seeds} keys once"
                    ));
                }
            }
        }
        // Issue 14: one gRPC round trip plus one Redis GET of the entry, each at the rate
        // this round measured for it alone: 1 / (1/tonic + 1/redis).
        let composed = 1.0 / (1.0 / tonic.max(1e-9) + 1.0 / redis_rps.max(1e-9));
        composed_rps.push(composed);
        vs_composed.push(broker / composed);
        vs_redis.push(broker / redis_rps.max(1e-9));
        vs_tonic.push(broker / tonic.max(1e-9));
        report.details.push(format!(
            "r{r}: composed limit {composed:.0} req/s, broker L2 {broker:.0} req/s, ratio {:.3}",
            broker / composed
        ));
        let (t, rd, b) = (tonic_cpu[round], redis_cpu[round], broker_cpu[round]);
        report.details.push(format!(
            "r{r}: machine CPU per request: tonic {t:.1} us + redis GET {rd:.1} us = {:.1} us; \
             broker L2 {b:.1} us; (tonic + redis) / broker {:.3}",
            t + rd,
            (t + rd) / b.max(1e-9)
        ));
    }
    report.spread("cpu_us_per_request_tonic", &tonic_cpu);
    report.spread("cpu_us_per_request_redis_get", &redis_cpu);
    report.spread("cpu_us_per_request_broker_l2", &broker_cpu);
    drop(baseline);
    report.spread("composed_limit_rps", &composed_rps);
    let median = report.spread("l2_vs_composed_limit_ratio", &vs_composed);
    report.spread("l2_vs_redis_get_ratio", &vs_redis);
    report.spread("l2_vs_tonic_baseline_ratio", &vs_tonic);
    report.target(
        "14.2 L2 hit >= 0.9 x composed limit 1/(1/tonic + 1/redis GET) (median of rounds)",
        median,
        0.9,
        true,
    );
    report.finish(&cfg.out)
}

/// The three sides of an `l2` round.
#[derive(Debug, Clone, Copy)]
enum L2Side {
    Tonic,
    Redis,
    Broker,
}

/// Fresh replicas (new broker, empty L1, new Redis connection), one after the other until
/// `budget` has passed (at least one), each asked for every key of `mix` once; every answer
/// must be HIT_SHARED. Returns the merged result (its `cpu_s` the machine's busy CPU over
/// the replicas' load runs) and how many replicas ran.
async fn l2_fresh_replicas(
    redis: &RedisServer,
    template: &certbroker::cert::CertRecord,
    mix: &Arc<Vec<pb::GetCertificateRequest>>,
    spec: &LoadSpec,
    budget: Duration,
) -> anyhow::Result<(load::LoadResult, u32)> {
    let mut hist = load::new_histogram();
    let (mut elapsed, mut errors, mut replicas, mut cpu_s) = (Duration::ZERO, 0, 0u32, 0.0);
    let start = Instant::now();
    while replicas == 0 || start.elapsed() < budget {
        let replica =
            fixture::template_broker(fixture::redis_store(&redis.url()).await?, template.clone())
                .await?;
        let served = Served::broker(replica).await?;
        let r = load::run(served.addr, mix.clone(), spec).await?;
        cpu_s += r.cpu_s;
        check_all(&r, CacheStatus::HitShared)?;
        hist.add(&r.hist)?;
        elapsed += r.elapsed;
        errors += r.errors;
        replicas += 1;
    }
    Ok((
        load::LoadResult {
            hist,
            errors,
            elapsed,
            statuses: [0; 5],
            first_error: None,
            cpu_s,
        },
        replicas,
    ))
}

/// Scenario 3: many concurrent callers over three replicas for one new key: one order, and how much
/// later than one issuance the last caller is answered.
pub(super) async fn fanin(cfg: &Config) -> anyhow::Result<Report> {
    let callers = cfg.fanin_callers;
    let mut report = Report::new(
        "fanin",
        "concurrent callers, spread over 3 replicas sharing Redis, ask for one new key at once \
         (devca upstream); per run: orders placed, last answer minus one issuance (measured \
         in the run), and that against the same burst over 3 bare tonic servers",
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
    let warm = clients[0]
        .get_certificate(fixture::spc_request("3000"))
        .await?
        .into_inner();

    // The transport's own burst: the same callers, spread over three baseline servers (the
    // broker's service and server options, answering an issued certificate's bytes without
    // any work), released together. What the broker adds to a burst is its window minus
    // this.
    let mut baselines = vec![];
    let mut base_clients = vec![];
    for _ in 0..3 {
        let b = Served::baseline(warm.clone()).await?;
        base_clients.push(load::connect(b.addr, 1).await?.remove(0));
        baselines.push(b);
    }
    // Unmeasured: one burst of each kind first, so that every measured run finds the
    // connections' HTTP/2 stream tables, flow-control windows and buffers grown to a burst
    // of this size on both sides (the first burst ran up to 2.4x slower than the rest).
    burst(&base_clients, callers, "3002").await?;
    burst(&clients, callers, "3050").await?;
    let runs = cfg.fanin_runs;
    report.parameters.insert("runs".into(), runs as f64);
    let row = |hist, elapsed| load::LoadResult {
        hist,
        errors: 0,
        elapsed,
        statuses: [0; 5],
        first_error: None,
        cpu_s: 0.0,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut orders_per_run, mut certs_per_run) = (vec![], vec![]);
    let (mut issuances, mut extras, mut transports, mut ratios) = (vec![], vec![], vec![], vec![]);
    let (mut loaded_issuances, mut deliveries) = (vec![], vec![]);
    for run in 0..runs {
        let r = run + 1;
        // This run's own "one issuance": a new key of the same pattern, one caller.
        let key = 3100 + 2 * run;
        let t = Instant::now();
        let one = clients[0]
            .get_certificate(fixture::spc_request(&key.to_string()))
            .await?
            .into_inner();
        let issuance = t.elapsed();
        anyhow::ensure!(
            one.cache_status() == CacheStatus::Issued,
            "{key} not issued"
        );
        // Its own transport burst, right before the fan-in.
        let transport = burst(&base_clients, callers, "3002").await?;
        let orders_before = env.ca.stats().new_orders;
        let fan = burst(&clients, callers, &(key + 1).to_string()).await?;
        let orders = env.ca.stats().new_orders - orders_before;
        let mut serials = fan.serials;
        serials.sort();
        serials.dedup();
        let extra = fan.window.saturating_sub(issuance);
        let ratio = extra.as_secs_f64() / transport.window.as_secs_f64().max(1e-9);
        report.rows.push(Row::from_load(
            &format!("transport burst (tonic baseline), r{r}"),
            &row(transport.hist, transport.window),
        ));
        report.rows.push(Row::from_load(
            &format!("fan-in callers, r{r}"),
            &row(fan.hist, fan.window),
        ));
        report.details.push(format!(
            "r{r}: orders {orders}, certificates {}, one issuance {:.3} ms, last answer {:.3} \
             ms, extra {:.3} ms, transport burst {:.3} ms, extra / transport {ratio:.3}; \
             first answer (the issuance under the burst) {:.3} ms, first to last answer {:.3} \
             ms (transport: first answer {:.3} ms, first to last {:.3} ms)",
            serials.len(),
            ms(issuance),
            ms(fan.window),
            ms(extra),
            ms(transport.window),
            ms(fan.first_answer),
            ms(fan.window - fan.first_answer),
            ms(transport.first_answer),
            ms(transport.window - transport.first_answer),
        ));
        loaded_issuances.push(ms(fan.first_answer));
        deliveries.push(ms(fan.window - fan.first_answer));
        orders_per_run.push(orders as f64);
        certs_per_run.push(serials.len() as f64);
        issuances.push(ms(issuance));
        extras.push(ms(extra));
        transports.push(ms(transport.window));
        ratios.push(ratio);
    }
    drop(baselines);
    report.spread("orders", &orders_per_run);
    report.spread("distinct_certificates", &certs_per_run);
    report.spread("one_issuance_ms", &issuances);
    report.spread("extra_ms", &extras);
    report.spread("transport_burst_ms", &transports);
    report.spread("issuance_under_burst_ms", &loaded_issuances);
    report.spread("first_to_last_answer_ms", &deliveries);
    report.spread("extra_vs_transport_ratio", &ratios);
    let max_orders = orders_per_run.iter().copied().fold(0.0, f64::max);
    report.target(
        &format!("14.4 fan-in: 1 order and 1 certificate in each of {runs} runs (max orders)"),
        max_orders,
        1.0,
        false,
    );
    if let Some(t) = report.targets.last_mut() {
        t.pass =
            orders_per_run.iter().all(|o| *o == 1.0) && certs_per_run.iter().all(|c| *c == 1.0);
    }
    let max_ratio = ratios.iter().copied().fold(0.0, f64::max);
    report.target(
        &format!("14.4 fan-in: extra <= 1.1 x transport burst in each of {runs} runs (max ratio)"),
        max_ratio,
        1.1,
        false,
    );
    drop(replicas);
    report.finish(&cfg.out)
}

/// What one burst of callers saw.
struct Burst {
    hist: hdrhistogram::Histogram<u64>,
    /// First caller's start to last caller's answer.
    window: Duration,
    /// First caller's start to the first answer: for the fan-in, the issuance as it ran
    /// under the burst (every answer waits for it).
    first_answer: Duration,
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
    let (mut first, mut last, mut first_end) = (None::<Instant>, None::<Instant>, None::<Instant>);
    let mut serials = vec![];
    for t in tasks {
        let (start, end, r) = t.await?;
        serials.push(r.context("a fan-in caller failed")?);
        hist.saturating_record((end - start).as_micros() as u64);
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        first_end = Some(first_end.map_or(end, |l| l.min(end)));
    }
    let since_first = |t: Option<Instant>| match (first, t) {
        (Some(f), Some(t)) => t - f,
        _ => Duration::ZERO,
    };
    Ok(Burst {
        hist,
        window: since_first(last),
        first_answer: since_first(first_end),
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
