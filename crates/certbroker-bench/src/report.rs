//! One scenario's results: printed as a table, written as JSON and as an SVG plot of the
//! latency percentiles.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Per-run figures that are not a latency distribution (one line each, printed as is).
    pub(super) details: Vec<String>,
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
            details: vec![],
            targets: vec![],
            peak_rss_kib: 0,
        }
    }

    /// Inserts `<name>_min`, `<name>_median` and `<name>_max` of `values` into the metrics
    /// and returns the median.
    pub(super) fn spread(&mut self, name: &str, values: &[f64]) -> f64 {
        let (min, median, max) = spread(values);
        self.metrics.insert(format!("{name}_min"), min);
        self.metrics.insert(format!("{name}_median"), median);
        self.metrics.insert(format!("{name}_max"), max);
        median
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
            let w = self
                .rows
                .iter()
                .map(|r| r.name.chars().count())
                .max()
                .unwrap_or(0)
                .max(34);
            let _ = writeln!(
                t,
                "{:<w$} {:>9} {:>6} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
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
                    "{:<w$} {:>9} {:>6} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>9}",
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
        let w = self
            .metrics
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(34);
        for (k, v) in &self.metrics {
            let _ = writeln!(t, "{k:<w$} {}", num(*v));
        }
        for line in &self.details {
            let _ = writeln!(t, "{line}");
        }
        let w = self
            .targets
            .iter()
            .map(|t| t.name.chars().count())
            .max()
            .unwrap_or(0);
        for target in &self.targets {
            let _ = writeln!(
                t,
                "target {:<w$} measured {:>10} bound {:>10}  {}",
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

/// The scenarios whose `<scenario>.json` [`read_reports`] looks for, in the order
/// `./scripts/bench` runs them.
const SCENARIOS: [&str; 7] = ["l1", "l2", "fanin", "cold", "scale", "external", "preauth"];

/// The scenario and targets of every `<dir>/<scenario>.json` there is.
pub(super) fn read_reports(dir: &Path) -> anyhow::Result<Vec<(String, Vec<Target>)>> {
    #[derive(Deserialize)]
    struct Stored {
        scenario: String,
        targets: Vec<Target>,
    }
    let mut out = vec![];
    for scenario in SCENARIOS {
        let path = dir.join(format!("{scenario}.json"));
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        out.push((stored.scenario, stored.targets));
    }
    anyhow::ensure!(!out.is_empty(), "no scenario results in {}", dir.display());
    Ok(out)
}

/// min, median, max of `values` (zeros for none).
pub(super) fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (v[0], median, v[v.len() - 1])
}

/// A number without noise: integers as integers, others with 3 decimals.
pub(super) fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_median_max_and_lands_in_the_metrics() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(spread(&[]), (0.0, 0.0, 0.0));
        let mut r = Report::new("l1", "m", true);
        assert_eq!(r.spread("ratio", &[0.9, 1.1, 1.0]), 1.0);
        assert_eq!(r.metrics["ratio_min"], 0.9);
        assert_eq!(r.metrics["ratio_median"], 1.0);
        assert_eq!(r.metrics["ratio_max"], 1.1);
    }

    #[test]
    fn targets_are_printed_whole() {
        let mut r = Report::new("l1", "m", true);
        let long = "14.1 a target name much longer than the forty-five characters of old";
        r.target(long, 0.95, 0.9, true);
        r.target("short", 2.0, 1.0, false);
        let table = r.table();
        assert!(
            table.contains(&format!("target {long} measured")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("target short") && l.ends_with("MISS"))
        );
    }
}
