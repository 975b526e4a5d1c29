//! Scenario `external`: the broker as users run it, measured from outside. The broker binary
//! (`--broker-bin`) is started as a separate process, `certbroker serve --dev` with its
//! default config and default logging (audit on; only the per-caller rate limit off, since
//! the load generator is one caller), and loaded by `h2load` (nghttp2) with a gRPC
//! GetCertificate frame, against a bare tonic unary service in a process of its own (this
//! binary, `certbroker-bench --serve-baseline`) returning the same response bytes. Rounds
//! alternate the two (A B, B A, A B, …) so drift on a shared machine hits both sides alike;
//! min/median/max over the rounds are reported.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use prost::Message;

use super::{Config, fixture, procs, procs::require, report::Report, report::Row};
use certbroker::pb::{self, CacheStatus, certificate_broker_service_server::SERVICE_NAME};

/// h2load connections and streams per connection (the 8 x 16).
const CLIENTS: usize = 8;
const STREAMS: usize = 16;

/// Issue 14 target 1, measured here (and only here: the broker as users run it, loaded from
/// outside).
pub(super) const TARGET_14_1: &str =
    "14.1 L1 hit (release process, h2load) >= 0.9 x bare tonic (median of rounds)";

/// The one request the load repeats: a warm SPC.
const SPC: &str = "1234";

/// `:path` of GetCertificate (follows the generated service name).
fn get_certificate_path() -> String {
    format!("/{SERVICE_NAME}/GetCertificate")
}

/// A gRPC message frame: uncompressed flag, 4-byte big-endian length, the message.
fn grpc_frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Runs the scenario.
pub(super) async fn external(cfg: &Config) -> anyhow::Result<Report> {
    require("h2load", "nghttp2-client")?;
    let mut report = Report::new(
        "external",
        "the release binary as a separate process (`serve --dev`, default config and \
         logging, audit on, rate limit off) vs a bare tonic unary service process returning \
         the same bytes, both loaded by h2load with one GetCertificate frame (L1 hits), \
         alternating rounds",
        cfg.quick,
    );
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let broker_bin = &cfg.broker_bin;
    anyhow::ensure!(
        broker_bin.is_file(),
        "the broker binary {} does not exist: build it (`cargo build --release --locked`, or \
         `cargo build --workspace` for debug) or pass --broker-bin",
        broker_bin.display()
    );
    std::fs::create_dir_all(&cfg.out)?;
    let broker_log = cfg.out.join("external-broker.log");
    let mut broker = Proc::start(
        Command::new(broker_bin)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .env("CERTBROKER_SERVER__RATE_LIMIT_PER_SEC", "0"),
        "certbroker (dev mode) listening on ",
        &broker_log,
    )?;
    // Warm the key; the second answer (HIT_LOCAL) is what every loaded request gets.
    let mut client = super::load::connect(broker.addr, 1).await?.remove(0);
    let req = fixture::spc_request(SPC);
    client.get_certificate(req.clone()).await?;
    let hit = client.get_certificate(req.clone()).await?.into_inner();
    anyhow::ensure!(
        hit.cache_status == CacheStatus::HitLocal as i32,
        "the second answer is not HIT_LOCAL"
    );
    let response_bytes = hit.encoded_len();
    let response_file = dir.path().join("response.pb");
    std::fs::write(&response_file, hit.encode_to_vec())?;
    let request_file = dir.path().join("request.grpc");
    std::fs::write(&request_file, grpc_frame(&req))?;
    let mut baseline = Proc::start(
        Command::new(&exe)
            .arg("--serve-baseline")
            .arg(&response_file),
        BASELINE_BANNER,
        &dir.path().join("baseline.log"),
    )?;

    let rounds = cfg.rounds.max(1);
    let warmup = cfg.duration / 5;
    let p = &mut report.parameters;
    p.insert("h2load_clients".into(), CLIENTS as f64);
    p.insert("h2load_streams_per_client".into(), STREAMS as f64);
    p.insert("duration_s".into(), cfg.duration.as_secs_f64());
    p.insert("rounds".into(), rounds as f64);
    report
        .metrics
        .insert("response_bytes".into(), response_bytes as f64);

    let (mut broker_rps, mut base_rps, mut ratios) = (vec![], vec![], vec![]);
    // [bare, broker] CPU microseconds per request, per round.
    let (mut server_cpu, mut machine_cpu) = ([vec![], vec![]], [vec![], vec![]]);
    for round in 0..rounds {
        let mut order = [
            (false, baseline.addr, baseline.pid()),
            (true, broker.addr, broker.pid()),
        ];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this_round = [0.0f64; 2];
        let mut cpu_round = [CpuPerRequest::default(); 2];
        for (is_broker, addr, pid) in order {
            let run = h2load(addr, pid, &request_file, cfg.duration, warmup)?;
            run.check(response_bytes)?;
            let name = if is_broker {
                format!("broker L1 hit (process), r{}", round + 1)
            } else {
                format!("bare tonic (process), r{}", round + 1)
            };
            report.rows.push(run.row(&name));
            this_round[usize::from(is_broker)] = run.rps;
            cpu_round[usize::from(is_broker)] = run.cpu;
        }
        let [base, brk] = cpu_round;
        report.details.push(format!(
            "r{}: CPU per request, server process: bare {:.1} us, broker {:.1} us ({:.3}x); \
             whole machine (h2load included): bare {:.1} us, broker {:.1} us; bare / broker \
             {:.3}",
            round + 1,
            base.server_us,
            brk.server_us,
            brk.server_us / base.server_us.max(1e-9),
            base.machine_us,
            brk.machine_us,
            base.machine_us / brk.machine_us.max(1e-9),
        ));
        server_cpu[0].push(base.server_us);
        server_cpu[1].push(brk.server_us);
        machine_cpu[0].push(base.machine_us);
        machine_cpu[1].push(brk.machine_us);
        base_rps.push(this_round[0]);
        broker_rps.push(this_round[1]);
        ratios.push(this_round[1] / this_round[0]);
    }
    // Still answering as before the load.
    let after = client.get_certificate(req).await?.into_inner();
    anyhow::ensure!(
        after.serial_hex == hit.serial_hex,
        "the broker's answer changed"
    );
    drop(client);
    baseline.stop();
    broker.stop();

    report.spread("broker_rps", &broker_rps);
    report.spread("baseline_rps", &base_rps);
    let median_ratio = report.spread("ratio", &ratios);
    report.spread("server_cpu_us_per_request_bare", &server_cpu[0]);
    report.spread("server_cpu_us_per_request_broker", &server_cpu[1]);
    report.spread("machine_cpu_us_per_request_bare", &machine_cpu[0]);
    report.spread("machine_cpu_us_per_request_broker", &machine_cpu[1]);
    let m = &mut report.metrics;
    // What default logging wrote during the whole run (every hit included).
    let log = std::fs::read_to_string(&broker_log).unwrap_or_default();
    let served: f64 = broker_rps.iter().sum::<f64>() * cfg.duration.as_secs_f64();
    m.insert("broker_log_lines".into(), log.lines().count() as f64);
    m.insert(
        "broker_audit_lines".into(),
        log.lines()
            .filter(|l| l.contains("certificate delivered"))
            .count() as f64,
    );
    m.insert("broker_hits_served_approx".into(), served.round());
    report.target(TARGET_14_1, median_ratio, 0.9, true);
    report.finish(&cfg.out)
}

/// First stdout line of `certbroker-bench --serve-baseline`, before its address.
pub(super) const BASELINE_BANNER: &str = "bench baseline listening on ";

/// `certbroker-bench --serve-baseline <file>`: serves the bare tonic service answering every
/// GetCertificate with the response in `file` (protobuf), until SIGTERM or Ctrl-C.
pub(super) async fn serve_baseline(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let response = pb::GetCertificateResponse::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a GetCertificateResponse", file.display()))?;
    let served = fixture::Served::baseline(response).await?;
    println!("{BASELINE_BANNER}{}", served.addr);
    certbroker::cli::shutdown_signal().await;
    drop(served);
    Ok(())
}

// === impl Proc ===

/// A child server process that printed its address; stopped (SIGTERM, then kill) on drop.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Proc {
    /// Starts `cmd` with stderr to `log`, waits for the stdout line `banner<addr>`.
    fn start(cmd: &mut Command, banner: &str, log: &Path) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("starting a server process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix(banner) {
                        break rest.trim().parse::<SocketAddr>()?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "server process exited before printing {banner:?}; its log: {}",
                        log.display()
                    );
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child: Some(child),
            addr,
        })
    }

    /// The process id (0 once stopped).
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then up to 10 s for a clean exit (logs drained), then kill.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

// === h2load ===

/// One h2load run, as parsed from its output, with the latencies of its measured requests
/// (from `--log-file`).
#[derive(Debug, Clone, PartialEq)]
struct H2load {
    rps: f64,
    done: u64,
    succeeded: u64,
    failed: u64,
    data_bytes: u64,
    max_us: Option<f64>,
    latency: Option<Histogram<u64>>,
    cpu: CpuPerRequest,
}

impl H2load {
    /// Every request answered 2xx with a whole response message (a gRPC error answers 200
    /// with no message, so the data bytes tell them apart).
    fn check(&self, response_bytes: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.succeeded > 0, "h2load: no request succeeded: {self:?}");
        anyhow::ensure!(self.failed == 0, "h2load: failed requests: {self:?}");
        let per_answer = self.data_bytes as f64 / self.done.max(1) as f64;
        anyhow::ensure!(
            per_answer >= response_bytes as f64,
            "h2load: {per_answer:.0} data bytes per answer, expected at least \
             {response_bytes} (errors instead of certificates?): {self:?}"
        );
        Ok(())
    }

    fn row(&self, name: &str) -> Row {
        let q = |p: f64| {
            self.latency
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(p) as f64)
        };
        Row {
            name: name.into(),
            requests: self.succeeded,
            errors: self.failed,
            throughput_rps: self.rps,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: q(1.0).or(self.max_us),
        }
    }
}

/// CPU per measured request of one h2load run: the server process alone and the whole
/// machine (server, h2load and whatever else runs), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuPerRequest {
    server_us: f64,
    machine_us: f64,
}

fn h2load(
    addr: SocketAddr,
    server_pid: u32,
    request: &PathBuf,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<H2load> {
    let url = format!("http://{addr}{}", get_certificate_path());
    let log = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("h2load");
    cmd.arg(format!("--log-file={}", log.path().display()))
        .args(["-c", &CLIENTS.to_string(), "-m", &STREAMS.to_string()])
        .args([
            "-t",
            "1",
            "-D",
            &format!("{}ms", duration.as_millis().max(1)),
        ]);
    if !warmup.is_zero() {
        cmd.args(["--warm-up-time", &format!("{}ms", warmup.as_millis())]);
    }
    let child = cmd
        .arg("-d")
        .arg(request)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running h2load")?;
    // CPU is counted over the measured part: from the end of the warm-up (h2load's clock
    // starts as it connects, a few ms after this) to its exit.
    std::thread::sleep(warmup);
    let (server0, machine0) = (procs::process_cpu_s(server_pid), procs::busy_cpu_s());
    let out = child.wait_with_output().context("running h2load")?;
    let (server_s, machine_s) = (
        procs::process_cpu_s(server_pid) - server0,
        procs::busy_cpu_s() - machine0,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "h2load failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run =
        parse_h2load(&stdout).with_context(|| format!("parsing h2load output:\n{stdout}"))?;
    let log = std::fs::read_to_string(log.path()).context("reading h2load's request log")?;
    let (latency, not_ok) = request_log(&log, warmup);
    anyhow::ensure!(
        not_ok == 0,
        "h2load: {not_ok} measured requests not answered 200"
    );
    run.latency = Some(latency);
    let n = run.done.max(1) as f64;
    run.cpu = CpuPerRequest {
        server_us: server_s * 1e6 / n,
        machine_us: machine_s * 1e6 / n,
    };
    Ok(run)
}

/// Latencies (µs) of the requests in an h2load `--log-file` that started after the warm-up
/// (its first `warmup` from the earliest start), and how many of those were not 200.
fn request_log(log: &str, warmup: Duration) -> (Histogram<u64>, u64) {
    let rows: Vec<(u64, i64, u64)> = log
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let start = cols.next()?.trim().parse().ok()?;
            let status = cols.next()?.trim().parse().ok()?;
            let us = cols.next()?.trim().parse().ok()?;
            Some((start, status, us))
        })
        .collect();
    let first = rows.iter().map(|r| r.0).min().unwrap_or(0);
    let from = first + u64::try_from(warmup.as_micros()).unwrap_or(u64::MAX);
    let mut hist = super::load::new_histogram();
    let mut not_ok = 0;
    for (start, status, us) in rows {
        if start < from {
            continue;
        }
        if status == 200 {
            hist.saturating_record(us.max(1));
        } else {
            not_ok += 1;
        }
    }
    (hist, not_ok)
}

fn parse_h2load(out: &str) -> anyhow::Result<H2load> {
    let line = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no {prefix:?} line"))
    };
    // "finished in 10.00s, 34567.80 req/s, 100.50MB/s"
    let finished = line("finished in")?;
    let rps = finished
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))
        .context("no req/s")?
        .parse::<f64>()?;
    // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout"
    let requests = line("requests:")?;
    let count = |what: &str| -> anyhow::Result<u64> {
        requests
            .trim_start_matches("requests:")
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_suffix(what).map(str::trim))
            .with_context(|| format!("no {what:?} count"))?
            .parse::<u64>()
            .map_err(Into::into)
    };
    let (done, succeeded) = (count(" done")?, count(" succeeded")?);
    let failed = count(" failed")? + count(" errored")? + count(" timeout")?;
    // "traffic: 1.02GB (1092000000) total, 3.18MB (3333333) headers (...), 1.01GB (1083333333) data"
    let traffic = line("traffic:")?;
    let data_bytes = traffic
        .rsplit_once(" data")
        .and_then(|(head, _)| {
            head.rsplit_once('(')?
                .1
                .strip_suffix(')')
                .map(str::to_owned)
        })
        .context("no data bytes")?
        .parse::<u64>()?;
    // "time for request:      224us     16.53ms      3.72ms      1.20ms    68.67%"
    let max_us = line("time for request:")
        .ok()
        .and_then(|l| l.split_whitespace().nth(4).and_then(duration_us));
    Ok(H2load {
        rps,
        done,
        succeeded,
        failed,
        data_bytes,
        max_us,
        latency: None,
        cpu: CpuPerRequest::default(),
    })
}

/// `224us`, `16.53ms`, `1.2s` in microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frame_is_flag_length_message() {
        let req = fixture::spc_request(SPC);
        let frame = grpc_frame(&req);
        let body = req.encode_to_vec();
        assert_eq!(frame[0], 0);
        assert_eq!(frame[1..5], (body.len() as u32).to_be_bytes());
        assert_eq!(&frame[5..], body.as_slice());
        assert_eq!(
            get_certificate_path(),
            "/certbroker.v1.CertificateBrokerService/GetCertificate"
        );
    }

    #[test]
    fn parses_h2load_output() {
        // nghttp2 1.52 with -D.
        let out = "\
starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Main benchmark duration is started for thread #0.

finished in 1.00s, 31507.00 req/s, 96.16MB/s
requests: 31507 total, 31635 started, 31507 done, 31507 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 31507 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 96.16MB (100830112) total, 1.14MB (1191240) headers (space savings 96.36%), 94.56MB (99154435) data
                     min         max         mean         sd        +/- sd
time for request:      466us     16.53ms      4.03ms      1.10ms    73.44%
time for connect:      118us       461us       330us       127us    62.50%
time to 1st byte:     1.26ms      5.18ms      3.04ms      1.39ms    62.50%
req/s           :    3933.57     3943.04     3938.17        3.24    62.50%
";
        let r = parse_h2load(out).unwrap();
        assert_eq!(
            r,
            H2load {
                rps: 31507.0,
                done: 31507,
                succeeded: 31507,
                failed: 0,
                data_bytes: 99_154_435,
                max_us: Some(16530.0),
                latency: None,
                cpu: CpuPerRequest::default(),
            }
        );
        assert!(r.check(3052).is_ok());
        assert!(r.check(4000).is_err(), "too few bytes per answer");
        let log = "1000000\t200\t900\n1000100\t200\t800\n1600000\t200\t300\n\
                   1700000\t200\t500\n1800000\t-1\t100\n";
        let (hist, not_ok) = request_log(log, Duration::from_millis(500));
        assert_eq!(
            (hist.len(), hist.max(), hist.min(), not_ok),
            (2, 500, 300, 1)
        );
    }
}
