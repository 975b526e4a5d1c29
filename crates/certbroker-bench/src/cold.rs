//! Scenario 4: cold issuance against Pebble, the broker's miss against `lego run`.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{
    Config,
    fixture::Served,
    load, procs,
    report::{Report, Row},
};
use certbroker::{
    app::App,
    config::Settings,
    pb::{self, CacheStatus, certificate_broker_service_client::CertificateBrokerServiceClient},
    telemetry::Metrics,
};
use certbroker_pebble::{Pebble, PebbleOptions};
use tonic::transport::Channel;

/// The histogram the broker records every HTTP exchange with an ACME server in.
const ACME_HISTOGRAM: &str = "certbroker_acme_client_request_duration_seconds";

/// Scenario 4: misses (new DNS name each) through the broker's gRPC API, each with the sum
/// of its own ACME round trips from the broker's metrics, and `lego run` on the same Pebble
/// for context; both with an account registered beforehand. Rounds alternate the two sides
/// (the broker's misses then lego's runs; lego's then the broker's; ...).
pub(super) async fn cold(cfg: &Config) -> anyhow::Result<Report> {
    let runs = cfg.cold_runs.max(1);
    let rounds = cfg.rounds.max(1);
    let mut report = Report::new(
        "cold",
        "broker miss (GetCertificate for a new DNS name → ISSUED) vs the sum of its own ACME \
         round trips (the broker's certbroker_acme_client_request_duration_seconds, scraped \
         before and after each miss), and `lego run` for a new domain for context; same \
         Pebble (always valid, no sleep), accounts registered beforehand, alternating rounds",
        cfg.quick,
    );
    report
        .parameters
        .insert("runs_per_round".into(), runs as f64);
    report.parameters.insert("rounds".into(), rounds as f64);
    procs::require("lego", "lego")?;
    let pebble = Pebble::start(PebbleOptions::default()).await?;
    let root = pebble.tls_root_path();
    let settings = Settings::from_toml(&format!(
        "[store]\nbackend = \"memory\"\n[[ca]]\nname = \"pebble\"\ndirectory = \"{dir}\"\n\
         trust_roots = \"{root}\"\naccount_key = \"{key}\"\n\
         accept_terms_of_service = true\n",
        dir = pebble.directory_url,
        root = root.display(),
        key = pebble.scratch().join("broker-account.pem").display(),
    ))?;
    let app = App::build(&settings).await?;
    let served = Served::broker(app.broker().clone()).await?;
    let mut client = load::connect(served.addr, 1).await?.remove(0);
    let lego_path = pebble.scratch().join("lego");

    // Unmeasured, both sides: warms connections and nonces, and registers lego's account.
    let metrics = app.metrics();
    miss(&mut client, metrics, "b0.example.test".into()).await?;
    lego(&pebble, &root, &lego_path, "l0.example.test").await?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut totals, mut trips, mut counts, mut lego_all) = (vec![], vec![], vec![], vec![]);
    let (mut round_totals, mut round_trips, mut round_ratios, mut round_lego) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let r = round + 1;
        let (mut b_times, mut b_trips, mut l_times) = (vec![], vec![], vec![]);
        for lego_side in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            for i in 0..runs {
                if lego_side {
                    let name = format!("l{r}-{i}.example.test");
                    l_times.push(lego(&pebble, &root, &lego_path, &name).await?);
                } else {
                    let name = format!("b{r}-{i}.example.test");
                    let m = miss(&mut client, metrics, name).await?;
                    report.details.push(format!(
                        "r{r} miss {}: total {:.3} ms, ACME round trips {:.3} ms ({} requests)",
                        i + 1,
                        ms(m.total),
                        m.round_trips_s * 1000.0,
                        m.requests
                    ));
                    b_times.push(m.total);
                    b_trips.push(Duration::from_secs_f64(m.round_trips_s));
                    counts.push(m.requests as f64);
                }
            }
        }
        report
            .rows
            .push(row(&format!("broker miss (gRPC), r{r}"), &b_times)?);
        report
            .rows
            .push(row(&format!("its ACME round trips (sum), r{r}"), &b_trips)?);
        report
            .rows
            .push(row(&format!("lego run (process), r{r}"), &l_times)?);
        totals.extend_from_slice(&b_times);
        trips.extend_from_slice(&b_trips);
        lego_all.extend_from_slice(&l_times);
        let (t, rt, l) = (
            ms(median(&mut b_times)),
            ms(median(&mut b_trips)),
            ms(median(&mut l_times)),
        );
        round_totals.push(t);
        round_trips.push(rt);
        round_ratios.push(t / rt.max(1e-9));
        round_lego.push(l);
    }
    let total_median = ms(median(&mut totals));
    let trips_median = ms(median(&mut trips));
    let lego_median = ms(median(&mut lego_all));
    let m = &mut report.metrics;
    m.insert("broker_median_ms".into(), total_median);
    m.insert("acme_round_trips_median_ms".into(), trips_median);
    m.insert("lego_median_ms".into(), lego_median);
    let ratio = total_median / trips_median.max(1e-9);
    m.insert("median_vs_round_trips_ratio".into(), ratio);
    report.spread("acme_requests_per_miss", &counts);
    report.spread("round_median_ms", &round_totals);
    report.spread("round_acme_round_trips_median_ms", &round_trips);
    report.spread("round_ratio", &round_ratios);
    report.spread("round_lego_median_ms", &round_lego);
    let (min, _, max) = super::report::spread(&round_totals);
    report
        .metrics
        .insert("round_median_max_over_min".into(), max / min.max(1e-9));
    report.target(
        "14.3 cold issuance: median <= 2 x median of its ACME round-trip sums",
        ratio,
        2.0,
        false,
    );
    let vs_lego = total_median / lego_median.max(1e-9);
    report
        .metrics
        .insert("median_vs_lego_ratio".into(), vs_lego);
    report.target(
        "8: cold issuance <= lego run (median ratio, context)",
        vs_lego,
        1.0,
        false,
    );
    report.finish(&cfg.out)
}

/// What one broker miss took, and what the broker's own histogram says its exchanges with
/// the CA took.
struct Miss {
    total: Duration,
    /// Sum of the durations of the ACME requests recorded during the miss, in seconds.
    round_trips_s: f64,
    /// How many there were.
    requests: u64,
}

/// One GetCertificate for the new DNS name `name`, with the delta of the broker's ACME
/// request histogram (sum and count over every series) around it.
async fn miss(
    client: &mut CertificateBrokerServiceClient<Channel>,
    metrics: &Metrics,
    name: String,
) -> anyhow::Result<Miss> {
    let req = pb::GetCertificateRequest {
        dns_names: vec![name.clone()],
        ..Default::default()
    };
    let before = acme_totals(&metrics.render(0, 0));
    let t = Instant::now();
    let r = client.get_certificate(req).await?.into_inner();
    let total = t.elapsed();
    let after = acme_totals(&metrics.render(0, 0));
    anyhow::ensure!(
        r.cache_status() == CacheStatus::Issued,
        "miss for {name} not ISSUED"
    );
    Ok(Miss {
        total,
        round_trips_s: after.0 - before.0,
        requests: after.1.saturating_sub(before.1),
    })
}

/// `_sum` (seconds) and `_count` of [`ACME_HISTOGRAM`] summed over its series, from a
/// Prometheus text exposition.
fn acme_totals(text: &str) -> (f64, u64) {
    let (mut sum, mut count) = (0.0, 0u64);
    let (sum_name, count_name) = (
        format!("{ACME_HISTOGRAM}_sum"),
        format!("{ACME_HISTOGRAM}_count"),
    );
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if name == sum_name {
            sum += value.parse::<f64>().unwrap_or(0.0);
        } else if name == count_name {
            count += value.parse::<u64>().unwrap_or(0);
        }
    }
    (sum, count)
}

/// One `lego run` for `domain`, timed as a process.
async fn lego(
    pebble: &Pebble,
    root: &std::path::Path,
    path: &std::path::Path,
    domain: &str,
) -> anyhow::Result<Duration> {
    let (directory, root, path, domain) = (
        pebble.directory_url.clone(),
        root.to_path_buf(),
        path.to_path_buf(),
        domain.to_owned(),
    );
    tokio::task::spawn_blocking(move || procs::lego_run(&directory, &root, &path, &domain))
        .await?
        .context("lego")
}

/// The median of `times` (sorted in place); zero for none.
pub(super) fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    match times.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => times[n / 2],
        n => (times[n / 2 - 1] + times[n / 2]) / 2,
    }
}

/// A report row of single-request timings.
pub(super) fn row(name: &str, times: &[Duration]) -> anyhow::Result<Row> {
    let mut hist = load::new_histogram();
    for t in times {
        hist.record(t.as_micros() as u64)?;
    }
    let total: Duration = times.iter().sum();
    Ok(Row::from_load(
        name,
        &load::LoadResult {
            hist,
            errors: 0,
            elapsed: total,
            statuses: [0; 5],
            first_error: None,
            cpu_s: 0.0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(
            median(&mut [ms(4), ms(1), ms(3), ms(2)]),
            Duration::from_micros(2500)
        );
        assert_eq!(median(&mut []), Duration::ZERO);
    }

    #[test]
    fn acme_totals_sum_every_series_of_the_histogram_only() {
        let text = "\
# TYPE certbroker_acme_client_request_duration_seconds histogram
certbroker_acme_client_request_duration_seconds_bucket{ca=\"p\",endpoint=\"new_order\",method=\"POST\",status=\"201\",le=\"0.005\"} 1
certbroker_acme_client_request_duration_seconds_sum{ca=\"p\",endpoint=\"new_order\",method=\"POST\",status=\"201\"} 0.0015
certbroker_acme_client_request_duration_seconds_count{ca=\"p\",endpoint=\"new_order\",method=\"POST\",status=\"201\"} 1
certbroker_acme_client_request_duration_seconds_sum{ca=\"p\",endpoint=\"order\",method=\"POST\",status=\"200\"} 0.0025
certbroker_acme_client_request_duration_seconds_count{ca=\"p\",endpoint=\"order\",method=\"POST\",status=\"200\"} 2
certbroker_request_duration_seconds_sum{method=\"GetCertificate\"} 9
certbroker_request_duration_seconds_count{method=\"GetCertificate\"} 9
";
        let (sum, count) = acme_totals(text);
        assert!((sum - 0.004).abs() < 1e-12, "{sum}");
        assert_eq!(count, 3);
        assert_eq!(acme_totals(""), (0.0, 0));
    }
}
