//! `certbroker-bench`: the broker measured against its baselines in the same run. Each
//! scenario prints a table and writes `<out>/<scenario>.json` and `<out>/<scenario>.svg`
//! (latency percentiles). The brokers run inside this process, so the reported peak RSS
//! (`VmHWM`) is this process's: brokers, load generator and (for fan-in) the devca together.
//! The `external` scenario runs the `certbroker` binary (`--broker-bin`) as a process of its
//! own. See docs/benchmarks.md for the method and the latest figures.

mod cold;
mod external;
mod fixture;
mod load;
mod plot;
mod preauth;
mod procs;
mod report;
mod scale;
mod scenarios;

use std::{path::PathBuf, time::Duration};

/// The broker binary's allocator (src/main.rs), so that the brokers measured in this
/// process allocate as the release binary does; the baselines in this process use it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use self::{
    load::{LoadSpec, Stop},
    report::Report,
};

/// Measures the certbroker broker against its baselines (see docs/benchmarks.md).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct BenchArgs {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Smoke run: tiny sizes, about a second per measurement; the numbers mean nothing.
    #[arg(long)]
    quick: bool,
    /// Requests in flight at once (also `redis-benchmark -c`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the load generator spreads its requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per measured load run [default: 10, --quick 1].
    #[arg(long)]
    duration: Option<f64>,
    /// Request mix: number of distinct warm keys the L1 load cycles through (and the size
    /// of the "small cache" in the scale scenario).
    #[arg(long, default_value_t = 16)]
    keys: usize,
    /// L2: seeded keys, each asked for once per fresh replica; enough that a replica's
    /// set-up and its ramp up and down are a small part of its run [default: 20000,
    /// --quick 200].
    #[arg(long)]
    l2_keys: Option<usize>,
    /// Fan-in: concurrent callers for one new key [default: 1000, --quick 200].
    #[arg(long)]
    fanin_callers: Option<usize>,
    /// Fan-in: consecutive runs, each a new key with its own one-issuance and transport
    /// burst measured right before it [default: 5, --quick 1].
    #[arg(long)]
    fanin_runs: Option<usize>,
    /// Cold issuance: measured misses of each side per round; pre-authorization: measured
    /// runs of each side [default: 7, --quick 2].
    #[arg(long)]
    cold_runs: Option<usize>,
    /// Scale: cache sizes [default: 10000,100000; --quick 1000].
    #[arg(long, value_delimiter = ',')]
    scale_sizes: Vec<usize>,
    /// Alternating rounds of each side in l1, l2, cold, scale and external; every ratio is
    /// reported per round and as min/median/max [default: 3, --quick 1].
    #[arg(long, alias = "external-rounds")]
    rounds: Option<usize>,
    /// Print the `== targets ==` summary of the scenario JSON files in `--out` (as written
    /// by earlier runs) and whether each issue-14 target is among them; runs nothing.
    #[arg(long)]
    summary: bool,
    /// Directory for the JSON and SVG files.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// External: the broker binary to run as `serve --dev` [default: `certbroker` next to
    /// this binary, i.e. in the same target directory].
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Serve the bare tonic baseline answering the GetCertificateResponse (protobuf) in this
    /// file, print its address, run until SIGTERM (the `external` scenario starts it).
    #[arg(long, hide = true)]
    serve_baseline: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario, in order.
    All,
    /// 1. L1 hit vs a plain tonic service.
    L1,
    /// 2. L2 hit on fresh replicas vs the composed limit of tonic and redis-benchmark GET.
    L2,
    /// 3. Fan-in of concurrent callers over 3 replicas.
    Fanin,
    /// 4. Cold issuance against Pebble vs its own ACME round trips (and lego).
    Cold,
    /// 5. 10k/100k cached keys: memory and hit latency.
    Scale,
    /// 6. L1 hit of the release binary as a separate process, loaded by h2load, vs a bare
    ///    tonic service process.
    External,
    /// 7. Miss latency with SPCs pre-authorized (newAuthz) vs without, against the devca.
    Preauth,
}

/// Resolved settings shared by the scenarios.
#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    keys: usize,
    l2_keys: usize,
    fanin_callers: usize,
    fanin_runs: usize,
    cold_runs: usize,
    scale_sizes: Vec<usize>,
    rounds: usize,
    out: PathBuf,
    broker_bin: PathBuf,
}

impl Config {
    fn from_args(a: BenchArgs) -> anyhow::Result<Self> {
        let q = a.quick;
        let duration = a.duration.unwrap_or(if q { 1.0 } else { 10.0 });
        anyhow::ensure!(
            duration.is_finite() && duration > 0.0,
            "--duration must be positive"
        );
        anyhow::ensure!(a.concurrency > 0, "--concurrency must be positive");
        anyhow::ensure!(a.keys > 0, "--keys must be positive");
        Ok(Self {
            quick: q,
            concurrency: a.concurrency,
            connections: a.connections.max(1),
            duration: Duration::from_secs_f64(duration),
            keys: a.keys,
            l2_keys: a.l2_keys.unwrap_or(if q { 200 } else { 20_000 }).max(1),
            fanin_callers: a.fanin_callers.unwrap_or(if q { 200 } else { 1000 }).max(1),
            fanin_runs: a.fanin_runs.unwrap_or(if q { 1 } else { 5 }).max(1),
            cold_runs: a.cold_runs.unwrap_or(if q { 2 } else { 7 }),
            scale_sizes: if a.scale_sizes.is_empty() {
                if q { vec![1000] } else { vec![10_000, 100_000] }
            } else {
                a.scale_sizes
            },
            rounds: a.rounds.unwrap_or(if q { 1 } else { 3 }).max(1),
            out: a.out,
            broker_bin: match a.broker_bin {
                Some(bin) => bin,
                None => sibling_broker_bin()?,
            },
        })
    }

    /// A timed load run with a warm-up of a fifth of its duration.
    fn timed_spec(&self) -> LoadSpec {
        LoadSpec {
            concurrency: self.concurrency,
            connections: self.connections,
            warmup: self.duration / 5,
            stop: Stop::After(self.duration),
        }
    }

    fn parameters(&self, report: &mut Report, spec: &LoadSpec) {
        let p = &mut report.parameters;
        p.insert("concurrency".into(), spec.concurrency as f64);
        p.insert("connections".into(), spec.connections as f64);
        if let Stop::After(d) = spec.stop {
            p.insert("duration_s".into(), d.as_secs_f64());
        }
        p.insert("mix_keys".into(), self.keys as f64);
    }
}

/// `certbroker` in the directory of this binary: where cargo puts both.
fn sibling_broker_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("this binary has no directory")?;
    Ok(dir.join(format!("certbroker{}", std::env::consts::EXE_SUFFIX)))
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", certbroker::cli::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenarios; fails if one could not run (a missed target is not a
/// failure: it is reported).
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    if let Some(file) = &args.serve_baseline {
        return external::serve_baseline(file).await;
    }
    if args.summary {
        let reports = report::read_reports(&args.out)?;
        return summary(
            reports
                .iter()
                .map(|(scenario, targets)| (scenario.as_str(), targets)),
        );
    }
    let scenario = args.scenario;
    let cfg = Config::from_args(args)?;
    let wanted = |s: Scenario| scenario == Scenario::All || scenario == s;
    let mut reports = vec![];
    if wanted(Scenario::L1) {
        reports.push(scenarios::l1(&cfg).await?);
    }
    if wanted(Scenario::L2) {
        reports.push(scenarios::l2(&cfg).await?);
    }
    if wanted(Scenario::Fanin) {
        reports.push(scenarios::fanin(&cfg).await?);
    }
    if wanted(Scenario::Cold) {
        reports.push(cold::cold(&cfg).await?);
    }
    if wanted(Scenario::Scale) {
        reports.push(scale::scale(&cfg).await?);
    }
    if wanted(Scenario::External) {
        reports.push(external::external(&cfg).await?);
    }
    if wanted(Scenario::Preauth) {
        reports.push(preauth::preauth(&cfg).await?);
    }
    summary(reports.iter().map(|r| (r.scenario.as_str(), &r.targets)))
}

/// The issue-14 targets, by number: each scenario names its targets `14.<n> ...`.
const ISSUE_14: [(&str, &str); 5] = [
    ("14.1", "external"),
    ("14.2", "l2"),
    ("14.3", "cold"),
    ("14.4", "fanin"),
    ("14.5", "scale"),
];

/// Prints `== targets ==`: every target of `reports` with PASS or MISS, then, when more than
/// one scenario ran, a MISS line for each issue-14 target none of them reported (a single
/// scenario's run lists only its own targets).
fn summary<'a>(
    reports: impl Iterator<Item = (&'a str, &'a Vec<report::Target>)>,
) -> anyhow::Result<()> {
    let rows: Vec<(&str, &report::Target)> = reports
        .flat_map(|(scenario, targets)| targets.iter().map(move |t| (scenario, t)))
        .collect();
    let w = rows
        .iter()
        .map(|(_, t)| t.name.chars().count())
        .max()
        .unwrap_or(0);
    println!("== targets ==");
    for (scenario, t) in &rows {
        println!(
            "{scenario:<8} {:<w$} {}",
            t.name,
            if t.pass { "PASS" } else { "MISS" }
        );
    }
    let mut scenarios: Vec<&str> = rows.iter().map(|(s, _)| *s).collect();
    scenarios.dedup();
    if scenarios.len() > 1 {
        for (n, scenario) in ISSUE_14 {
            if !rows
                .iter()
                .any(|(_, t)| t.name.starts_with(&format!("{n} ")))
            {
                let name = format!("{n} not measured in this run");
                println!("{scenario:<8} {name:<w$} MISS");
            }
        }
    }
    Ok(())
}
