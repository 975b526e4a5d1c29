//! Scenario 7: the miss latency with and without pre-authorization (newAuthz), against the
//! embedded devca in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{
    Config,
    cold::{median, row},
    fixture::{self, DevEnv, Served},
    load,
    report::Report,
};
use certbroker::{
    app::App,
    pb::{CacheStatus, certificate_broker_service_client::CertificateBrokerServiceClient},
};

/// How long the pre-authorizations at start-up may take before the scenario gives up.
const PREAUTH_DEADLINE: Duration = Duration::from_secs(120);

/// Scenario 7: misses (GetCertificate for a new SPC each) through two brokers on one devca,
/// each with its own account: one that pre-authorized every SPC at start-up (a miss is
/// newOrder, finalize, download) and one with pre-authorization off (a miss also fetches the
/// SPC token and answers tkauth-01). Runs alternate between the two.
pub(super) async fn preauth(cfg: &Config) -> anyhow::Result<Report> {
    let runs = cfg.cold_runs.max(1);
    let mut report = Report::new(
        "preauth",
        "broker miss (GetCertificate for a new SPC → ISSUED) with every SPC pre-authorized \
         at start-up (newAuthz) vs with pre-authorization off, same devca, alternating runs, \
         accounts and connections warmed beforehand",
        cfg.quick,
    );
    report.parameters.insert("runs".into(), runs as f64);
    let env = DevEnv::start().await?;
    // Run 0 of each side is unmeasured (account, connections, nonces).
    let spcs =
        |base: u32| -> Vec<String> { (0..=runs as u32).map(|i| (base + i).to_string()).collect() };
    let (with_spcs, without_spcs) = (spcs(4000), spcs(5000));

    let mut with = env.settings("backend = \"memory\"")?;
    let ca = &mut with.ca[0];
    ca.account_key = ca.account_key.with_file_name("bench-preauth-on.pem");
    ca.preauthorization.spcs = with_spcs.clone();
    let mut without = env.settings("backend = \"memory\"")?;
    let ca = &mut without.ca[0];
    ca.account_key = ca.account_key.with_file_name("bench-preauth-off.pem");
    ca.preauthorization.enabled = false;

    let with_app = App::build(&with).await?;
    let without_app = App::build(&without).await?;
    wait_for_preauthorizations(&env, with_spcs.len() as u64).await?;
    let with_served = Served::broker(with_app.broker().clone()).await?;
    let without_served = Served::broker(without_app.broker().clone()).await?;
    let mut with_client = load::connect(with_served.addr, 1).await?.remove(0);
    let mut without_client = load::connect(without_served.addr, 1).await?.remove(0);

    let (mut with_times, mut without_times) = (vec![], vec![]);
    let mut challenges_with = 0;
    for i in 0..=runs {
        let before = env.ca.stats().challenges_validated;
        let took = miss(&mut with_client, &with_spcs[i]).await?;
        challenges_with += env.ca.stats().challenges_validated - before;
        let without_took = miss(&mut without_client, &without_spcs[i]).await?;
        if i > 0 {
            with_times.push(took);
            without_times.push(without_took);
        }
    }
    anyhow::ensure!(
        challenges_with == 0,
        "{challenges_with} challenges validated for pre-authorized SPCs"
    );
    report
        .rows
        .push(row("miss, SPC pre-authorized", &with_times)?);
    report
        .rows
        .push(row("miss, no pre-authorization", &without_times)?);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (side, times) in [("with", &mut with_times), ("without", &mut without_times)] {
        let min = times.iter().min().copied().unwrap_or_default();
        let max = times.iter().max().copied().unwrap_or_default();
        report
            .metrics
            .insert(format!("{side}_preauth_median_ms"), ms(median(times)));
        report
            .metrics
            .insert(format!("{side}_preauth_min_ms"), ms(min));
        report
            .metrics
            .insert(format!("{side}_preauth_max_ms"), ms(max));
    }
    report
        .metrics
        .insert("challenges_with_preauth".into(), challenges_with as f64);
    let ratio =
        median(&mut with_times).as_secs_f64() / median(&mut without_times).as_secs_f64().max(1e-9);
    report.metrics.insert("median_ratio".into(), ratio);
    report.target(
        "pre-authorized miss < miss without (median ratio)",
        ratio,
        1.0,
        false,
    );
    report.finish(&cfg.out)
}

/// One miss for `spc`; fails unless it was issued.
async fn miss(
    client: &mut CertificateBrokerServiceClient<tonic::transport::Channel>,
    spc: &str,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = client
        .get_certificate(fixture::spc_request(spc))
        .await
        .with_context(|| format!("GetCertificate for SPC {spc}"))?
        .into_inner();
    let took = t.elapsed();
    anyhow::ensure!(
        r.cache_status() == CacheStatus::Issued,
        "miss for {spc} not ISSUED"
    );
    Ok(took)
}

/// Waits until the devca has validated `n` pre-authorizations.
async fn wait_for_preauthorizations(env: &DevEnv, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + PREAUTH_DEADLINE;
    loop {
        let s = env.ca.stats();
        if s.new_authz >= n && s.challenges_validated >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} pre-authorizations after {PREAUTH_DEADLINE:?}",
            s.new_authz
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
