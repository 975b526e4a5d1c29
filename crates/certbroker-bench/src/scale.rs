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
/// hit load over all its keys, in alternating rounds against the small cache.
pub(super) async fn scale(cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "scale",
        "L1 filled with N certificates (copies of one devca certificate through the broker's \
         miss path, Redis store so the process holds only L1); RSS delta per certificate and \
         hit latency over all N keys vs a small cache, alternating rounds",
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
    // Serve every cache (each kept resident until the end), then alternating rounds of hit
    // load: the small cache, then each large one; odd rounds in the reverse order.
    let mut served = vec![];
    for (broker, base, size, delta_kib) in filled {
        let mix = Arc::new(
            (base..base + size)
                .map(|i| fixture::spc_request(&spc(i)))
                .collect::<Vec<_>>(),
        );
        served.push((Served::broker(broker).await?, mix, size, delta_kib));
    }
    report.parameters.insert("rounds".into(), cfg.rounds as f64);
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; served.len()];
    for round in 0..cfg.rounds {
        let mut order: Vec<usize> = (0..served.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut p50 = vec![0.0; served.len()];
        for n in order {
            let (s, mix, size, _) = &served[n];
            let r = load::run(s.addr, mix.clone(), &spec).await?;
            check_all(&r, CacheStatus::HitLocal)?;
            p50[n] = r.hist.value_at_quantile(0.5) as f64;
            report.rows.push(Row::from_load(
                &format!("L1 hit, {size} keys cached, r{}", round + 1),
                &r,
            ));
        }
        for n in 1..served.len() {
            ratios[n].push(p50[n] / p50[0].max(1.0));
        }
    }
    // The bounds are for 100,000 certificates: the targets are on the largest size
    // measured (the others are context).
    let largest = served.len() - 1;
    for (n, (_, _, size, delta_kib)) in served.iter().enumerate().skip(1) {
        let per_cert = (delta_kib * 1024) as f64 / *size as f64;
        let overhead = per_cert - own;
        report
            .metrics
            .insert(format!("rss_per_certificate_bytes_{size}"), per_cert);
        report
            .metrics
            .insert(format!("overhead_per_certificate_bytes_{size}"), overhead);
        let ratio = report.spread(&format!("hit_p50_ratio_{size}"), &ratios[n]);
        if n == largest {
            report.target(
                &format!(
                    "14.5 {size} keys: memory beyond the certificate's own bytes <= 1 KiB per \
                     certificate"
                ),
                overhead,
                1024.0,
                false,
            );
            report.target(
                &format!("14.5 {size} keys: hit p50 <= 1.1 x {small}-key cache (median of rounds)"),
                ratio,
                1.1,
                false,
            );
        }
    }
    report.finish(&cfg.out)
}
