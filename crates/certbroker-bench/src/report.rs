//! One scenario's results: printed as a table, written as JSON and as an SVG plot of the
//! latency percentiles.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::Serialize;

use super::load::{LoadResult, rss_kib};

/// One measured configuration (the broker, or a baseline).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Row {
    /// What was measured.
    pub(super) name: String,
    /// Successful requests.
    pub(super) requests: u64,
    /// Failed requests.
    pub(super) errors: u64,
    /// Successful requests per second.
    pub(super) throughput_rps: f64,
    /// Latency percentiles in microseconds; `None` where the tool does not report one.
    pub(super) p50_us: Option<f64>,
    /// 90th percentile.
    pub(super) p90_us: Option<f64>,
    /// 99th percentile.
    pub(super) p99_us: Option<f64>,
    /// 99.9th percentile.
    pub(super) p999_us: Option<f64>,
    /// Slowest request.
    pub(super) max_us: Option<f64>,
}

impl Row {
    /// A row from a load run.
    pub(super) fn from_load(name: &str, r: &LoadResult) -> Self {
        let q = |p: f64| Some(r.hist.value_at_quantile(p) as f64);
        Self {
            name: name.into(),
            requests: r.hist.len(),
            errors: r.errors,
            throughput_rps: r.throughput(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: Some(r.hist.max() as f64),
        }
    }
}

/// A target from the issue, with what was measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Target {
    /// The target, as the issue states it.
    pub(super) name: String,
    /// The measured value the target is about.
    pub(super) measured: f64,
    /// The bound.
    pub(super) bound: f64,
    /// Whether `measured` meets `bound`.
    pub(super) pass: bool,
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    /// Scenario id (`l1`, `l2`, `fanin`, `cold`, `scale`).
    pub(super) scenario: String,
    /// What was done, in one sentence.
    pub(super) method: String,
    /// Whether this was a `--quick` smoke run (numbers not meaningful).
    pub(super) quick: bool,
    /// Load-generator settings and sizes.
    pub(super) parameters: BTreeMap<String, f64>,
    /// Measured configurations.
    pub(super) rows: Vec<Row>,
    /// Scalar results (orders, ratios, bytes, milliseconds).
    pub(super) metrics: BTreeMap<String, f64>,
    /// Targets, pass or miss.
    pub(super) targets: Vec<Target>,
    /// Peak RSS (`VmHWM`) of the bench process, which hosts the broker(s), in KiB.
    pub(super) peak_rss_kib: u64,
}

impl Report {
    /// An empty report for `scenario`.
    pub(super) fn new(scenario: &str, method: &str, quick: bool) -> Self {
        Self {
            scenario: scenario.into(),
            method: method.into(),
            quick,
            parameters: BTreeMap::new(),
            rows: vec![],
            metrics: BTreeMap::new(),
            targets: vec![],
            peak_rss_kib: 0,
        }
    }

    /// Records a target: `measured >= bound` when `at_least`, else `measured <= bound`.
    pub(super) fn target(&mut self, name: &str, measured: f64, bound: f64, at_least: bool) {
        let pass = if at_least {
            measured >= bound
        } else {
            measured <= bound
        };
        self.targets.push(Target {
            name: name.into(),
            measured,
            bound,
            pass,
        });
    }

    /// Prints the table, writes `<dir>/<scenario>.json` and `<dir>/<scenario>.svg`.
    pub(super) fn finish(mut self, dir: &Path) -> anyhow::Result<Self> {
        self.peak_rss_kib = rss_kib().0;
        println!("{}", self.table());
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&json, serde_json::to_vec_pretty(&self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let svg = dir.join(format!("{}.svg", self.scenario));
        std::fs::write(&svg, super::plot::percentiles_svg(&self))
            .with_context(|| format!("writing {}", svg.display()))?;
        println!("wrote {} and {}\n", json.display(), svg.display());
        Ok(self)
    }

    /// The human-readable table.
    pub(super) fn table(&self) -> String {
        let mut t = String::new();
        let quick = if self.quick {
            " (quick: smoke run)"
        } else {
            ""
        };
        let _ = writeln!(t, "== {}{quick} ==\n{}", self.scenario, self.method);
        if !self.parameters.is_empty() {
            let params: Vec<String> = self
                .parameters
                .iter()
                .map(|(k, v)| format!("{k}={}", num(*v)))
                .collect();
            let _ = writeln!(t, "parameters: {}", params.join(" "));
        }
        if !self.rows.is_empty() {
            let _ = writeln!(
                t,
                "{:<34} {:>9} {:>6} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "",
                "requests",
                "errors",
                "req/s",
                "p50 µs",
                "p90 µs",
                "p99 µs",
                "p999 µs",
                "max µs"
            );
            for r in &self.rows {
                let o = |v: Option<f64>| v.map_or_else(|| "-".into(), num);
                let _ = writeln!(
                    t,
                    "{:<34} {:>9} {:>6} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    r.name,
                    r.requests,
                    r.errors,
                    r.throughput_rps,
                    o(r.p50_us),
                    o(r.p90_us),
                    o(r.p99_us),
                    o(r.p999_us),
                    o(r.max_us)
                );
            }
        }
        for (k, v) in &self.metrics {
            let _ = writeln!(t, "{k:<34} {}", num(*v));
        }
        for target in &self.targets {
            let _ = writeln!(
                t,
                "target {:<45} measured {:>10} bound {:>10}  {}",
                target.name,
                num(target.measured),
                num(target.bound),
                if target.pass { "PASS" } else { "MISS" }
            );
        }
        let _ = write!(
            t,
            "peak RSS of the bench process: {} KiB",
            self.peak_rss_kib
        );
        t
    }
}

/// A number without noise: integers as integers, others with 3 decimals.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
