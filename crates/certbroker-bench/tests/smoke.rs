//! Smoke test of `certbroker-bench`: every scenario runs once, briefly, through the real
//! binary, and prints and writes sane results. No performance is asserted here.
//!
//! The `external` scenario runs the `certbroker` binary, which cargo builds for this test
//! only under `cargo test --workspace` (./scripts/test): it is another package's binary, so
//! `CARGO_BIN_EXE_certbroker` is not set here. The test looks for it next to the bench binary.

use std::{path::Path, process::Command};

use serde_json::Value;

fn require(binary: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{binary}` is not installed; the benchmark smoke test needs it: \
         `apt-get install {package}` (./scripts/test installs it)"
    );
}

#[test]
fn every_scenario_runs_and_reports() {
    for (binary, package) in [
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("pebble", "pebble"),
        ("lego", "lego"),
        ("h2load", "nghttp2-client"),
    ] {
        require(binary, package);
    }
    let bench = Path::new(env!("CARGO_BIN_EXE_certbroker-bench"));
    let broker = bench.with_file_name(format!("certbroker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        broker.is_file(),
        "{} is missing: run this test with `cargo test --workspace` (./scripts/test), which \
         builds the broker binary too, or `cargo build --bin certbroker` first",
        broker.display()
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(bench)
        .args(["--scenario", "all", "--quick", "--duration", "0.5"])
        .args(["--concurrency", "8", "--scale-sizes", "300", "--out"])
        .arg(out_dir.path())
        .arg("--broker-bin")
        .arg(&broker)
        .output()
        .expect("run certbroker-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for scenario in ["l1", "l2", "fanin", "cold", "scale", "external", "preauth"] {
        assert!(
            stdout.contains(&format!("== {scenario} (quick")),
            "no {scenario} table:\n{stdout}"
        );
        let json: Value = serde_json::from_slice(
            &std::fs::read(out_dir.path().join(format!("{scenario}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(json["scenario"], scenario);
        assert_eq!(json["quick"], true);
        assert!(json["peak_rss_kib"].as_u64().unwrap() > 0, "{json}");
        let rows = json["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{json}");
        for row in rows {
            assert!(row["requests"].as_u64().unwrap() > 0, "{row}");
            assert_eq!(row["errors"], 0, "{row}");
            assert!(row["throughput_rps"].as_f64().unwrap() > 0.0, "{row}");
            let p50 = row["p50_us"].as_f64().unwrap();
            let p99 = row["p99_us"].as_f64().unwrap();
            assert!(p50 > 0.0 && p50 <= p99, "{row}");
        }
        let targets = json["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{json}");
        for t in targets {
            assert!(t["pass"].is_boolean() && t["measured"].is_number(), "{t}");
            let verdict = if t["pass"] == true { "PASS" } else { "MISS" };
            let name = t["name"].as_str().unwrap();
            assert!(
                stdout
                    .lines()
                    .any(|l| l.contains(name) && l.ends_with(verdict)),
                "target {name} not printed as {verdict}:\n{stdout}"
            );
        }
        let svg = std::fs::read_to_string(out_dir.path().join(format!("{scenario}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
    }

    let read = |s: &str| -> Value {
        serde_json::from_slice(&std::fs::read(out_dir.path().join(format!("{s}.json"))).unwrap())
            .unwrap()
    };
    // Every issue-14 target, numbered, in the scenario that measures it, and in the summary.
    for (number, scenario, count) in [
        ("14.1", "external", 1),
        ("14.2", "l2", 1),
        ("14.3", "cold", 1),
        ("14.4", "fanin", 2),
        ("14.5", "scale", 2),
    ] {
        let json = read(scenario);
        let names: Vec<&str> = json["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .filter(|n| n.starts_with(&format!("{number} ")))
            .collect();
        assert_eq!(names.len(), count, "{scenario}: {json}");
        let summary = stdout.split("== targets ==").last().unwrap();
        for name in names {
            assert!(
                summary.lines().any(|l| l.starts_with(scenario)
                    && l.contains(name)
                    && (l.ends_with("PASS") || l.ends_with("MISS"))),
                "{name} not in the summary:\n{summary}"
            );
        }
    }
    assert!(!stdout.contains("not measured"), "{stdout}");
    // The summary of the written files alone (what ./scripts/bench prints at the end).
    let summary = Command::new(bench)
        .arg("--summary")
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("run certbroker-bench --summary");
    let summary = String::from_utf8_lossy(&summary.stdout);
    for number in ["14.1", "14.2", "14.3", "14.4", "14.5"] {
        assert!(
            summary.lines().any(|l| l.contains(&format!(" {number} "))),
            "{number} missing from the summary:\n{summary}"
        );
    }
    // Every ratio with its spread (one round in a smoke run: min = median = max).
    for (scenario, metric) in [
        ("l1", "throughput_ratio"),
        ("l2", "l2_vs_composed_limit_ratio"),
        ("fanin", "extra_vs_transport_ratio"),
        ("cold", "round_ratio"),
        ("scale", "hit_p50_ratio_300"),
        ("external", "ratio"),
    ] {
        let m = &read(scenario)["metrics"];
        let (min, median, max) = (
            m[format!("{metric}_min")].as_f64(),
            m[format!("{metric}_median")].as_f64(),
            m[format!("{metric}_max")].as_f64(),
        );
        assert!(
            matches!((min, median, max), (Some(a), Some(b), Some(c)) if a <= b && b <= c && a > 0.0),
            "{scenario} {metric}: {m}"
        );
    }

    let fanin = read("fanin");
    assert_eq!(
        fanin["metrics"]["orders_max"], 1.0,
        "one order for all callers"
    );
    assert_eq!(
        fanin["metrics"]["orders_min"], 1.0,
        "one order for all callers"
    );
    assert_eq!(fanin["metrics"]["distinct_certificates_max"], 1.0);
    assert_eq!(fanin["rows"][0]["requests"], 200);
    assert_eq!(fanin["rows"][1]["requests"], 200);
    let l2 = read("l2");
    assert!(
        l2["metrics"]["entry_bytes"].as_f64().unwrap() > 1000.0,
        "{l2}"
    );
    let l2_rows: Vec<&str> = l2["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        l2_rows,
        [
            "tonic baseline (same response), r1",
            "redis-benchmark GET, r1",
            "broker L2 hit (fresh replicas), r1"
        ]
    );
    let cold = read("cold");
    for row in 0..3 {
        assert_eq!(cold["rows"][row]["requests"], 2, "{cold}");
    }
    // Each miss talked to the CA, and the broker's histogram saw it.
    assert!(
        cold["metrics"]["acme_requests_per_miss_min"]
            .as_f64()
            .unwrap()
            >= 3.0,
        "{cold}"
    );
    assert!(
        cold["metrics"]["acme_round_trips_median_ms"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{cold}"
    );
    let preauth = read("preauth");
    assert_eq!(
        preauth["metrics"]["challenges_with_preauth"], 0.0,
        "{preauth}"
    );
    assert_eq!(preauth["rows"][0]["requests"], 2);
    assert_eq!(preauth["rows"][1]["requests"], 2);
    let scale = read("scale");
    assert!(scale["metrics"]["overhead_per_certificate_bytes_300"].is_number());
}
