//! External programs the benchmark starts or compares against: `redis-server`,
//! `redis-benchmark` and `lego`, on free loopback ports, killed on drop (`pebble` comes from
//! the certbroker-pebble crate, the launcher the tests use).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Fails with how to install `binary` when it is not on PATH.
pub(super) fn require(binary: &str, package: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "`{binary}` is not installed; the benchmark needs it: \
             `apt-get install {package}` (Debian/Ubuntu), or run ./scripts/test which installs it"
        );
    }
    Ok(())
}

/// A free loopback port (bound to port 0, then released).
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// === impl RedisServer ===

/// One `redis-server` on 127.0.0.1 without persistence.
#[derive(Debug)]
pub(super) struct RedisServer {
    child: Child,
    /// Its port.
    pub(super) port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub(super) fn start() -> anyhow::Result<Self> {
        require("redis-server", "redis-server")?;
        let dir = tempfile::tempdir()?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning redis-server")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if ping(port) {
                    return Ok(Self {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("exited with {status} on port {port}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("no PONG on port {port}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("redis-server did not start: {last}")
    }

    /// `redis://127.0.0.1:<port>`.
    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// What `redis-benchmark` reported for GET.
#[derive(Debug)]
pub(super) struct RedisBenchmark {
    /// Requests per second.
    pub(super) rps: f64,
    /// Percentiles in microseconds: p50, p99 (it reports no p90/p99.9 in CSV).
    pub(super) p50_us: f64,
    /// 99th percentile.
    pub(super) p99_us: f64,
    /// Slowest.
    pub(super) max_us: f64,
    /// Requests made.
    pub(super) requests: u64,
    /// Busy CPU seconds of the machine during the GET run ([`busy_cpu_s`]).
    pub(super) cpu_s: f64,
}

/// `redis-benchmark -t get -d <size> -c <clients> -n <requests> --csv` after an unmeasured
/// `-t set` that leaves a value of that size under the key GET reads. `cpu_s` is the
/// machine's busy CPU time during the GET run alone (client and server).
pub(super) fn redis_benchmark(
    port: u16,
    size: usize,
    clients: usize,
    requests: u64,
) -> anyhow::Result<RedisBenchmark> {
    require("redis-benchmark", "redis-tools")?;
    let run = |test: &str, n: u64| -> anyhow::Result<String> {
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", test, "--csv"])
            .args(["-d", &size.to_string()])
            .args(["-c", &clients.to_string()])
            .args(["-n", &n.to_string()])
            .output()
            .context("running redis-benchmark")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "redis-benchmark failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    };
    run("set", clients as u64)?;
    let before = busy_cpu_s();
    let text = run("get", requests)?;
    let cpu_s = busy_cpu_s() - before;
    let mut rb = parse_redis_benchmark_csv(&text, requests)?;
    rb.cpu_s = cpu_s;
    Ok(rb)
}

/// Clock ticks per second in `/proc` (`USER_HZ`): 100 on Linux, whatever the kernel's HZ.
const USER_HZ: f64 = 100.0;

/// Busy CPU seconds of the whole machine so far, all cores (`/proc/stat`: user, nice,
/// system, irq, softirq, steal; not idle or iowait); 0 where that file does not exist.
/// The difference over a run, divided by its requests, is what one request costs the
/// machine: load generator, server and Redis together.
pub(super) fn busy_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy as f64 / USER_HZ
}

/// Busy CPU seconds (user + system) of process `pid` so far, from `/proc/<pid>/stat`; 0
/// where that cannot be read.
pub(super) fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses: state is
    // field 3, utime 14 and stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3, so utime (14) is at index 11.
    (tick(11) + tick(12)) as f64 / USER_HZ
}

/// Parses the GET line of `redis-benchmark --csv` (Redis 7 columns: test, rps,
/// avg, min, p50, p95, p99, max latency in ms).
fn parse_redis_benchmark_csv(text: &str, requests: u64) -> anyhow::Result<RedisBenchmark> {
    let line = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .with_context(|| format!("no GET line in redis-benchmark output: {text}"))?;
    let cols: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected redis-benchmark line: {line}"))?;
    anyhow::ensure!(cols.len() >= 7, "unexpected redis-benchmark line: {line}");
    Ok(RedisBenchmark {
        rps: cols[0],
        p50_us: cols[3] * 1000.0,
        p99_us: cols[5] * 1000.0,
        max_us: cols[6] * 1000.0,
        requests,
        cpu_s: 0.0,
    })
}

/// One `lego run` for `domain` against `directory`, keeping its account under `path`;
/// returns the wall time of the process.
pub(super) fn lego_run(
    directory: &url::Url,
    root_pem: &Path,
    path: &Path,
    domain: &str,
) -> anyhow::Result<Duration> {
    require("lego", "lego")?;
    let port = free_port()?;
    let start = Instant::now();
    let out = Command::new("lego")
        .env("LEGO_CA_CERTIFICATES", root_pem)
        .args(["--server", directory.as_str()])
        .args(["--accept-tos", "--email", "bench@example.test"])
        .args(["--domains", domain])
        .args(["--http", "--http.port", &format!("127.0.0.1:{port}")])
        .arg("--path")
        .arg(path)
        .arg("run")
        .output()
        .context("running lego")?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "lego run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_get_line_of_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"1000.00\",\"0.1\",\"0.1\",\"0.1\",\"0.1\",\"0.1\",\"0.1\"\n\
                    \"GET\",\"84033.61\",\"0.330\",\"0.080\",\"0.311\",\"0.503\",\"0.719\",\"2.087\"\n";
        let r = parse_redis_benchmark_csv(text, 10).unwrap();
        assert_eq!(r.rps, 84033.61);
        assert!((r.p50_us - 311.0).abs() < 1e-6);
        assert!((r.p99_us - 719.0).abs() < 1e-6);
        assert!((r.max_us - 2087.0).abs() < 1e-6);
    }

    #[test]
    fn rejects_output_without_a_get_line() {
        assert!(parse_redis_benchmark_csv("\"SET\",\"1\"\n", 1).is_err());
    }

    #[test]
    fn process_and_machine_cpu_count_work_done() {
        let (own, machine) = (process_cpu_s(std::process::id()), busy_cpu_s());
        // Work until this process has used at least two clock ticks of CPU.
        let mut x = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while process_cpu_s(std::process::id()) - own < 0.02 {
            assert!(
                Instant::now() < deadline,
                "no CPU time counted in /proc/self/stat"
            );
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(busy_cpu_s() - machine >= 0.01);
        assert_eq!(process_cpu_s(u32::MAX), 0.0, "no such process");
    }
}
