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
    pb::{self, CacheStatus},
};
use certbroker_pebble::{Pebble, PebbleOptions};

/// Scenario 4: median of several misses (new DNS name each) through the broker's gRPC API vs
/// `lego run` on the same Pebble; both with an account registered beforehand.
pub(super) async fn cold(cfg: &Config) -> anyhow::Result<Report> {
    let runs = cfg.cold_runs.max(1);
    let mut report = Report::new(
        "cold",
        "broker miss (GetCertificate for a new DNS name → ISSUED) vs `lego run` for a new \
         domain, same Pebble (always valid, no sleep), accounts registered beforehand",
        cfg.quick,
    );
    report.parameters.insert("runs".into(), runs as f64);
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

    let mut broker_times = vec![];
    // Run 0 is unmeasured for both: it warms connections, nonces and (for lego) registers.
    for i in 0..=runs {
        let req = pb::GetCertificateRequest {
            dns_names: vec![format!("b{i}.example.test")],
            ..Default::default()
        };
        let t = Instant::now();
        let r = client.get_certificate(req).await?.into_inner();
        let took = t.elapsed();
        anyhow::ensure!(r.cache_status() == CacheStatus::Issued, "miss not ISSUED");
        if i > 0 {
            broker_times.push(took);
        }
    }
    let lego_path = pebble.scratch().join("lego");
    let mut lego_times = vec![];
    for i in 0..=runs {
        let (directory, root, path) = (
            pebble.directory_url.clone(),
            root.clone(),
            lego_path.clone(),
        );
        let took = tokio::task::spawn_blocking(move || {
            procs::lego_run(&directory, &root, &path, &format!("l{i}.example.test"))
        })
        .await?
        .context("lego")?;
        if i > 0 {
            lego_times.push(took);
        }
    }
    let broker_median = median(&mut broker_times);
    let lego_median = median(&mut lego_times);
    report.rows.push(row("broker miss (gRPC)", &broker_times)?);
    report.rows.push(row("lego run (process)", &lego_times)?);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    report
        .metrics
        .insert("broker_median_ms".into(), ms(broker_median));
    report
        .metrics
        .insert("lego_median_ms".into(), ms(lego_median));
    let ratio = broker_median.as_secs_f64() / lego_median.as_secs_f64().max(1e-9);
    report.metrics.insert("median_ratio".into(), ratio);
    report.target("cold issuance <= lego (median ratio)", ratio, 1.0, false);
    report.finish(&cfg.out)
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
}
