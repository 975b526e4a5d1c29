//! Scenario 5: many cached keys in L1: memory per cached certificate and hit latency at
//! that size against a small cache.

use std::sync::Arc;

use super::{
    Config,
    fixture::{self, DevEnv, Served},
    load::{self, rss_kib},
    procs::RedisServer,
    report::{Report, Row},
    scenarios::{check_all, fill, spc},
};
use certbroker::pb::CacheStatus;

/// Scenario 5: for each size, a fresh broker (Redis store, so the process holds only L1), filled
/// through its own miss path with copies of one real certificate; RSS delta per entry, then
/// hit load over all its keys.
pub(super) async fn scale(cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "scale",
        "L1 filled with N certificates (copies of one devca certificate through the broker's \
         miss path, Redis store so the process holds only L1); RSS delta per certificate and \
         hit latency over all N keys vs a small cache",
        cfg.quick,
    );
    let redis = RedisServer::start()?;
    let env = DevEnv::start().await?;
    let template = fixture::template_record(&env).await?;
    let own = fixture::record_bytes(&template) as f64;
    report.metrics.insert("certificate_own_bytes".into(), own);
    let spec = cfg.timed_spec();
    cfg.parameters(&mut report, &spec);

    let small = cfg.keys;
    let mut small_p50 = 0.0;
    let mut sizes = vec![small];
    sizes.extend(cfg.scale_sizes.iter().copied());
    // Fill every cache first, keeping every broker alive, so that no RSS delta is
    // flattered by memory an earlier phase freed.
    let mut filled = vec![];
    for (n, &size) in sizes.iter().enumerate() {
        let base = 1_000_000 * (n + 1);
        let store = fixture::redis_store(&redis.url()).await?;
        let broker = fixture::template_broker(store, template.clone()).await?;
        let rss0 = rss_kib().1;
        fill(&broker, base, size).await?;
        let rss1 = rss_kib().1;
        filled.push((broker, base, size, rss1.saturating_sub(rss0)));
    }
    let mut resident = vec![];
    for (n, (broker, base, size, delta_kib)) in filled.into_iter().enumerate() {
        let mix = Arc::new(
            (base..base + size)
                .map(|i| fixture::spc_request(&spc(i)))
                .collect::<Vec<_>>(),
        );
        let served = Served::broker(broker).await?;
        let r = load::run(served.addr, mix, &spec).await?;
        check_all(&r, CacheStatus::HitLocal)?;
        let p50 = r.hist.value_at_quantile(0.5) as f64;
        report
            .rows
            .push(Row::from_load(&format!("L1 hit, {size} keys cached"), &r));
        // Keep the cache resident until the end of the scenario.
        resident.push(served);
        if n == 0 {
            small_p50 = p50;
            continue;
        }
        let per_cert = (delta_kib * 1024) as f64 / size as f64;
        let overhead = per_cert - own;
        report
            .metrics
            .insert(format!("rss_per_certificate_bytes_{size}"), per_cert);
        report
            .metrics
            .insert(format!("overhead_per_certificate_bytes_{size}"), overhead);
        let ratio = p50 / small_p50.max(1.0);
        report
            .metrics
            .insert(format!("hit_p50_ratio_{size}"), ratio);
        report.target(
            &format!("{size} keys: overhead <= 8 KiB per certificate"),
            overhead,
            8192.0,
            false,
        );
        report.target(
            &format!("{size} keys: hit p50 <= 1.25 x small cache"),
            ratio,
            1.25,
            false,
        );
    }
    report.finish(&cfg.out)
}
