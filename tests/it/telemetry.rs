//! Metrics, black-box: the Prometheus exposition on the admin listener after some traffic,
//! checked by promtool (`check metrics`); the shipped alert rules (the rules file and the
//! PrometheusRule carry the same ones) under `promtool check rules` and `promtool test
//! rules`; and the Grafana dashboard and the rules naming only metrics the broker exports.

use crate::support::common;

use std::{collections::BTreeSet, io::Write, path::Path, process::Command};

use certbroker::pb::{self, RevokeRequest, revoke_request::Target};
use common::{DevEnv, TestBroker, spc_request};
use tokio::net::TcpListener;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `/metrics` of `broker`, through a real admin listener.
async fn scrape(broker: &TestBroker) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        broker
            .app
            .clone()
            .serve_admin(listener, std::future::pending()),
    );
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(resp.status().is_success());
    resp.text().await.unwrap()
}

/// `promtool check metrics` (the exposition format and Prometheus' naming lint) on `text`.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sample names a scrape offers: every `# TYPE` family, with `_bucket`, `_sum` and
/// `_count` for histograms.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The `certbroker_*` metric names a PromQL expression reads (label values and strings
/// are skipped).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_string = false;
    let mut token = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
            token.clear();
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            if token.starts_with("certbroker_") {
                out.insert(std::mem::take(&mut token));
            }
            token.clear();
        }
    }
    out
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/grafana/certbroker.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dash["uid"], "certbroker");
    let mut exprs = vec![];
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs
}

/// The groups of the rules file and of the kustomize PrometheusRule (as YAML values).
fn rule_groups() -> (serde_yaml_ng::Value, serde_yaml_ng::Value) {
    let read = |p: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo(p)).unwrap()).unwrap()
    };
    let file = read("deploy/prometheus/certbroker-rules.yaml");
    let crd = read("deploy/k8s/base/prometheusrule.yaml");
    (file["groups"].clone(), crd["spec"]["groups"].clone())
}

fn rule_exprs() -> Vec<String> {
    let (groups, _) = rule_groups();
    let mut out = vec![];
    for g in groups.as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(r["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("promtool (Debian prometheus)");
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules file and the PrometheusRule carry the same rules; promtool accepts them and
/// their unit tests (each alert not firing, then firing, on series named as the broker
/// exports them) pass.
#[test]
fn alert_rules_agree_and_pass_promtool_tests() {
    let (file, crd) = rule_groups();
    assert!(file.as_sequence().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        file, crd,
        "deploy/prometheus/certbroker-rules.yaml and deploy/k8s/base/prometheusrule.yaml differ"
    );
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo("deploy/prometheus/certbroker-rules.yaml")),
    );
    run_ok(
        Command::new("promtool")
            .current_dir(repo("deploy/prometheus/tests"))
            .args(["test", "rules", "certbroker-rules.test.yaml"]),
    );
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(repo("deploy/prometheus/tests/certbroker-rules.test.yaml"))
        .unwrap();
    let (groups, _) = rule_groups();
    for g in groups.as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap();
            let tested = tests.contains(&format!("alertname: {name}\n"));
            // Latency and load alerts are plain thresholds over one series; the others
            // combine series and are where label mistakes hide.
            let untested_ok = [
                "CertbrokerIssuanceFailures",
                "CertbrokerCaSlow",
                "CertbrokerOverloaded",
            ];
            assert!(
                tested || untested_ok.contains(&name),
                "no promtool test for {name}"
            );
        }
    }
}

/// The dashboard parses, promtool parses each of its queries (as recording rules), and
/// it and the alert rules read only metrics a real broker exports: the union of two
/// scrapes, one after issuances and every RPC, one of a broker whose CA is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_rules_use_only_exported_metrics() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$job", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    std::fs::write(dir.path().join("dashboard.yaml"), rules).unwrap();
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.path().join("dashboard.yaml")),
    );

    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    client.get_certificate(spc_request("4321")).await.unwrap();
    let mut exported = exported_names(&scrape(&broker).await);

    // A CA that refuses connections: issuance failures and ACME requests without answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut dead = env.ca_settings("dead");
    dead.directory = format!("https://127.0.0.1:{port}/directory")
        .parse()
        .unwrap();
    let down = TestBroker::start(vec![dead]).await;
    let err = down
        .client()
        .await
        .get_certificate(spc_request("4321"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let text = scrape(&down).await;
    assert!(
        text.contains("certbroker_acme_client_requests_total{ca=\"dead\",endpoint=\"directory\",method=\"GET\",status=\"none\"}"),
        "{text}"
    );
    exported.extend(exported_names(&text));

    for (what, exprs) in [("dashboard", exprs), ("alert rules", rule_exprs())] {
        for e in exprs {
            let names = metric_names(&e);
            assert!(
                !names.is_empty(),
                "{what}: {e:?} reads no certbroker metric"
            );
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{what}: {e:?} reads {n}, which the broker does not export; it exports {exported:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_shows_traffic() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let first = client
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    client.get_certificate(spc_request("1234")).await.unwrap();
    let bad = client.get_certificate(spc_request("")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex(first.serial_hex.clone())),
            reason: 0,
        })
        .await
        .unwrap();
    client.get_certificate(spc_request("5678")).await.unwrap();
    client
        .list_renewals(pb::ListRenewalsRequest {})
        .await
        .unwrap();
    // A watch is counted when its stream opens (with the code of its first answer).
    let mut watch = client
        .watch_certificate(pb::WatchCertificateRequest::from(spc_request("5678")))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("first answer");
    let bad_watch = client
        .watch_certificate(pb::WatchCertificateRequest::from(spc_request("")))
        .await
        .unwrap_err();
    assert_eq!(bad_watch.code(), tonic::Code::InvalidArgument);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(broker.app.clone().serve_admin(listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "certbroker_requests_total{cache_status=\"issued\",code=\"OK\",method=\"GetCertificate\"} 2",
        "certbroker_requests_total{cache_status=\"hit_local\",code=\"OK\",method=\"GetCertificate\"} 1",
        "certbroker_requests_total{cache_status=\"\",code=\"InvalidArgument\",method=\"GetCertificate\"} 1",
        "certbroker_requests_total{cache_status=\"\",code=\"OK\",method=\"Revoke\"} 1",
        "certbroker_issuance_duration_seconds_count{ca=\"devca\"} 2",
        "certbroker_request_duration_seconds_count{method=\"GetCertificate\"} 4",
        "certbroker_store_fallbacks_total 0",
        // 1234 was revoked; 5678 is the one certificate out there.
        "certbroker_certificates{expires_within=\"+Inf\"} 1",
        "# TYPE certbroker_certificate_min_expiry_seconds gauge",
        "certbroker_requests_rejected_total{method=\"GetCertificate\",reason=\"overloaded\"} 0",
        // Every RPC counted, codes written as grpc-prometheus does.
        "certbroker_requests_total{cache_status=\"\",code=\"OK\",method=\"ListRenewals\"} 1",
        "certbroker_requests_total{cache_status=\"\",code=\"OK\",method=\"WatchCertificate\"} 1",
        "certbroker_requests_total{cache_status=\"\",code=\"InvalidArgument\",method=\"WatchCertificate\"} 1",
        // ACME requests by CA, endpoint, method and HTTP status.
        "certbroker_acme_client_requests_total{ca=\"devca\",endpoint=\"newOrder\",method=\"POST\",status=\"201\"} 2",
        "certbroker_acme_client_requests_total{ca=\"devca\",endpoint=\"revokeCert\",method=\"POST\",status=\"200\"} 1",
        "certbroker_acme_client_request_duration_seconds_count{ca=\"devca\",endpoint=\"finalize\",method=\"POST\",status=\"200\"} 2",
        "# TYPE certbroker_build_info gauge",
        // The certificate for 5678, tracked for renewal: ready, with its notAfter and
        // next renewal.
        "certbroker_certificate_ready_status{ca=\"devca\",condition=\"True\",identifiers=\"spc 5678\",",
        "certbroker_certificate_ready_status{ca=\"devca\",condition=\"False\",identifiers=\"spc 5678\",",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    promtool_check_metrics(&text);
    // version from Cargo.toml, rustc as `rustc --version` says; git as the build
    // environment's CERTBROKER_GIT_COMMIT names it (empty without).
    let build = text
        .lines()
        .find(|l| l.starts_with("certbroker_build_info{"))
        .expect("build info");
    assert!(
        build.ends_with(&format!(
            ",rustc=\"{}\",version=\"{}\"}} 1",
            rustc_version(),
            env!("CARGO_PKG_VERSION")
        )),
        "{build}"
    );
    let sample = |prefix: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let cert = |family: &str| format!("{family}{{ca=\"devca\",identifiers=\"spc 5678\",key=\"");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let not_after = sample(&cert("certbroker_certificate_expiration_timestamp_seconds"));
    assert_eq!(not_after.len(), 1, "{text}");
    assert!(
        not_after[0] > now && not_after[0] < now + 400.0 * 86_400.0,
        "{not_after:?}"
    );
    let renewal = sample(&cert("certbroker_certificate_renewal_timestamp_seconds"));
    assert_eq!(renewal.len(), 1, "{text}");
    assert!(
        renewal[0] > now - 60.0 && renewal[0] < not_after[0],
        "{renewal:?} {not_after:?}"
    );
    let ready = |condition: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("certbroker_certificate_ready_status{{ca=\"devca\",condition=\"{condition}\",identifiers=\"spc 5678\","))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(ready("True").as_deref(), Some("1"));
    assert_eq!(ready("False").as_deref(), Some("0"));
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success());
    let _ = stop.send(());
}

fn rustc_version() -> String {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}
