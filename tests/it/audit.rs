//! The audit trail as an operator sees it: the binary's own stderr (`certbroker serve --dev`,
//! JSON log lines). The first hand-out of a serial to a caller is a line of its own; repeats
//! are counted and summarized per interval by a background task, and at shutdown.

use crate::support::common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use certbroker::pb::certificate_broker_service_client::CertificateBrokerServiceClient;
use common::spc_request;
use serde_json::Value;

struct Server {
    dev: common::DevServer,
    /// stderr, one JSON log line at a time; closed when the process exits.
    lines: mpsc::Receiver<String>,
}

fn serve_dev(audit_interval_secs: u64) -> Server {
    // The default log filter, as users run it.
    serve_dev_logging(audit_interval_secs, None)
}

/// [`serve_dev`] with `RUST_LOG` set to `filter` (`None`: unset).
fn serve_dev_logging(audit_interval_secs: u64, filter: Option<&str>) -> Server {
    let mut dev = common::serve_dev(|c| {
        match filter {
            Some(f) => c.env("RUST_LOG", f),
            None => c.env_remove("RUST_LOG"),
        }
        .env("CERTBROKER_TELEMETRY__JSON", "true")
        .env(
            "CERTBROKER_TELEMETRY__AUDIT_INTERVAL_SECS",
            audit_interval_secs.to_string(),
        )
        .stderr(Stdio::piped());
    });
    let (tx, lines) = mpsc::channel();
    let stderr = dev.child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Server { dev, lines }
}

/// The `audit` lines among `lines`, as their `fields` objects.
fn audit_fields(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .map(|v| v["fields"].clone())
        .collect()
}

fn firsts<'a>(audit: &'a [Value], serial: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|f| f["message"] == "certificate delivered" && f["serial"] == serial)
        .collect()
}

fn repeats(audit: &[Value], serial: &str) -> u64 {
    audit
        .iter()
        .filter(|f| f["action"] == "get_certificate_repeats" && f["serial"] == serial)
        .map(|f| f["count"].as_u64().expect("count is a number"))
        .sum()
}

async fn get_n(addr: &str, spc: &str, n: usize) -> String {
    let mut client = CertificateBrokerServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    let mut serial = None;
    for _ in 0..n {
        let answer = client
            .get_certificate(spc_request(spc))
            .await
            .expect("GetCertificate")
            .into_inner();
        assert!(
            !answer.private_key_pkcs8_der.is_empty(),
            "dev mode returns the key"
        );
        let s = serial.get_or_insert_with(|| answer.serial_hex.clone());
        assert_eq!(*s, answer.serial_hex, "hits answer the same certificate");
    }
    serial.expect("n > 0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_hand_out_is_a_line_and_repeats_are_counted_per_interval() {
    let server = serve_dev(1);
    let serial = get_n(&server.dev.addr, "1234", 4).await;
    let other = get_n(&server.dev.addr, "5678", 1).await;
    assert_ne!(serial, other);

    // Poll stderr until the summaries account for the three repeats (they may be split
    // over two intervals), with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = vec![];
    while repeats(&audit_fields(&lines), &serial) < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.lines.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("no summary of 3 repeats before the deadline ({e}):\n{lines:#?}"),
        }
    }
    let audit = audit_fields(&lines);
    let first = firsts(&audit, &serial);
    assert_eq!(first.len(), 1, "one first hand-out line: {audit:#?}");
    let first = first[0];
    assert_eq!(first["action"], "get_certificate");
    assert_eq!(first["caller"], "anonymous@127.0.0.1");
    assert_eq!(first["identifiers"], "spc 1234");
    assert_eq!(first["ca"], "devca");
    assert_eq!(first["cache_status"], "issued");
    assert_eq!(first["key_returned"], true);
    assert_eq!(repeats(&audit, &serial), 3);
    let summary = audit
        .iter()
        .find(|f| f["action"] == "get_certificate_repeats")
        .unwrap();
    assert_eq!(summary["caller"], "anonymous@127.0.0.1");
    assert_eq!(summary["interval_secs"], 1.0);
    assert_eq!(summary["key_returned"], true);
    // The other serial was handed out once: a first line, nothing to summarize.
    assert_eq!(firsts(&audit, &other).len(), 1);
    assert_eq!(repeats(&audit, &other), 0);
    // No line per hit: 5 hand-outs, 2 first lines, at most 2 summary lines.
    let hand_out_lines = audit
        .iter()
        .filter(|f| f["action"] == "get_certificate" || f["action"] == "get_certificate_repeats")
        .count();
    assert!(hand_out_lines <= 4, "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counts_are_written_at_shutdown() {
    // An interval far beyond the test: only the shutdown flush can write the summary.
    let mut server = serve_dev(3600);
    let serial = get_n(&server.dev.addr, "1234", 3).await;
    let status = Command::new("kill")
        .args(["-TERM", &server.dev.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(s) = server.dev.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exited.success(), "{exited:?}");
    // stderr is closed once the process is gone: read all of it.
    let lines: Vec<String> = server.lines.iter().collect();
    let audit = audit_fields(&lines);
    assert_eq!(firsts(&audit, &serial).len(), 1, "{audit:#?}");
    assert_eq!(repeats(&audit, &serial), 2, "{audit:#?}");
}

/// Reads `server`'s stderr until a line satisfies `done` (deadline 20 s); every line read.
fn read_until(server: &Server, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = vec![];
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.lines.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("not logged before the deadline ({e}):\n{lines:#?}"),
        }
    }
    lines
}

/// The broker's "certificate issued" lines among `lines` (the devca, in the same process,
/// has a line of that name too).
fn issued_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"] == "certificate issued"
                && v["target"] == "certbroker::broker::fleet"
        })
        .collect()
}

/// The names of the spans a JSON log line was written in, outermost first.
fn span_names(line: &Value) -> Vec<String> {
    line["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_miss_logs_says_what_it_was_for_and_request_spans_are_opt_in() {
    // The default filter: no `rpc` span (it costs every hit), but a miss's lines, its
    // issuance's included, run in the broker's span naming pool and identifiers.
    let server = serve_dev(3600);
    let serial = get_n(&server.dev.addr, "1234", 2).await;
    let lines = read_until(&server, |l| !firsts(&audit_fields(l), &serial).is_empty());
    let issued = issued_lines(&lines);
    assert_eq!(issued.len(), 1, "{lines:#?}");
    assert_eq!(issued[0]["fields"]["serial"], serial.as_str());
    assert_eq!(span_names(&issued[0]), ["broker.get_certificate"]);
    assert_eq!(issued[0]["span"]["identifiers"], "spc 1234");
    assert_eq!(issued[0]["span"]["pool"], "default");
    let audit: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    assert!(
        audit.iter().all(|l| span_names(l).is_empty()),
        "the audit line names its caller itself: {audit:#?}"
    );

    // The README's switch: the `rpc` span (method, caller) on every line of a request.
    let server = serve_dev_logging(3600, Some("info,certbroker::api::layers=debug"));
    let serial = get_n(&server.dev.addr, "1234", 1).await;
    let lines = read_until(&server, |l| !firsts(&audit_fields(l), &serial).is_empty());
    let issued = issued_lines(&lines);
    assert_eq!(issued.len(), 1, "{lines:#?}");
    assert_eq!(
        span_names(&issued[0]),
        ["rpc", "broker.get_certificate"],
        "{issued:#?}"
    );
    let rpc = &issued[0]["spans"][0];
    assert_eq!(rpc["rpc.method"], "GetCertificate");
    assert_eq!(rpc["caller"], "anonymous@127.0.0.1");
}
