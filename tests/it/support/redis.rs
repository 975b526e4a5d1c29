//! Real `redis-server` processes for tests: free ports picked at run time, killed on drop.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One `redis-server` on 127.0.0.1, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// TLS only (`--port 0 --tls-port <port>`), trusting this CA for the readiness PING.
    tls_ca: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Starts a standalone server on a free port (retrying on a new port if one is taken).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra arguments; `{dir}` in them becomes its working directory.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_inner(extra, None)
    }

    /// Starts a TLS-only server (no plaintext port) with this certificate and key (PEM
    /// files), `ca` being the CA that signed it; `rediss://127.0.0.1:<port>` reaches it.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Self {
        let (cert, key, ca_s) = (
            cert.display().to_string(),
            key.display().to_string(),
            ca.display().to_string(),
        );
        Self::start_inner(
            &[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca_s,
                "--tls-auth-clients",
                "no",
            ],
            Some(ca.to_path_buf()),
        )
    }

    fn start_inner(extra: &[&str], tls_ca: Option<std::path::PathBuf>) -> Self {
        require_binary("redis-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{dir}", &dir.path().display().to_string()))
            .collect();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, dir.path(), &extra, tls_ca.as_deref()) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                        tls_ca,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// A server on a port where nothing listens yet; [`RedisServer::restart`] starts it.
    pub fn reserved() -> Self {
        require_binary("redis-server");
        Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: Vec::new(),
            tls_ca: None,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (SIGSTOP): connections stay open and nothing answers, as with a
    /// hung server or a network that drops packets.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server runs");
        // The shell's builtin `kill`: no procps needed.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill {signal} {}", child.id()))
            .status()
            .expect("run sh");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the server again on the same port (empty, as there is no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn(
                self.port,
                self.dir.path(),
                &self.extra,
                self.tls_ca.as_deref(),
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends one command (inline protocol) and returns the raw reply.
    pub fn raw(&self, command: &str) -> String {
        raw(self.port, command).expect("raw command")
    }

    /// One command through `redis-cli` (over TLS for a TLS server); its output, empty
    /// when the server does not answer.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cli = Command::new("redis-cli");
        if let Some(ca) = &self.tls_ca {
            cli.args(["--tls", "--cacert"]).arg(ca);
        }
        cli.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three primaries forming a Redis Cluster (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        Self::start_inner(0, "2000")
    }

    /// Three primaries with one replica each (`cluster-node-timeout` 1000 ms), every
    /// replica in sync: killing a primary promotes its replica.
    pub fn start_with_replicas() -> Self {
        let cluster = Self::start_inner(1, "1000");
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            loop {
                let info = node.raw("INFO replication");
                if info.contains("role:master") && info.contains("connected_slaves:1")
                    || info.contains("role:slave") && info.contains("master_link_status:up")
                {
                    break;
                }
                assert!(Instant::now() < deadline, "replicas never synced: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Index of a node that is a primary now.
    pub fn a_primary(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && n.raw("INFO replication").contains("role:master"))
            .expect("a primary")
    }

    /// Three TLS-only primaries (client, cluster bus and replication over TLS) with this
    /// certificate and key, signed by `ca`; reached with `rediss://`.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Self {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let tls = [
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ]
        .map(str::to_owned);
        Self::start_nodes(0, "2000", &tls, Some(ca))
    }

    fn start_inner(replicas: usize, node_timeout: &str) -> Self {
        Self::start_nodes(replicas, node_timeout, &[], None)
    }

    fn start_nodes(
        replicas: usize,
        node_timeout: &str,
        extra: &[String],
        tls_ca: Option<&Path>,
    ) -> Self {
        require_binary("redis-cli");
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "{dir}/nodes.conf",
                    "--cluster-node-timeout",
                    node_timeout,
                ];
                args.extend(extra.iter().map(String::as_str));
                RedisServer::start_inner(&args, tls_ca.map(Path::to_path_buf))
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        // `--cluster create` waits for the nodes to join with no deadline of its own.
        let mut cli = Command::new("timeout");
        cli.args(["60", "redis-cli"]);
        if let Some(ca) = tls_ca {
            cli.args(["--tls", "--cacert"]).arg(ca);
        }
        let out = cli
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "cluster never reached cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { nodes }
    }

    /// One `redis://` URL per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

fn require_binary(name: &str) {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{name}` is not installed; these tests need a real Redis: \
         `apt-get install redis-server` (Debian/Ubuntu) provides redis-server and redis-cli"
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Spawns redis-server on `port` (TLS only when `tls_ca` is given) and waits until it
/// answers PING.
fn spawn(port: u16, dir: &Path, extra: &[String], tls_ca: Option<&Path>) -> Result<Child, String> {
    let ports = match tls_ca {
        Some(_) => [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
        ],
        None => [
            "--port".to_owned(),
            port.to_string(),
            String::new(),
            String::new(),
        ],
    };
    let mut child = Command::new("redis-server")
        .args(ports.iter().filter(|a| !a.is_empty()))
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = match tls_ca {
            Some(ca) => tls_ping(port, ca),
            None => raw(port, "PING"),
        };
        if let Ok(reply) = reply {
            if reply.starts_with("+PONG") || reply.starts_with("-NOAUTH") {
                return Ok(child);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server on port {port} never answered PING"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn raw(port: u16, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// PING over TLS with `redis-cli --tls`, verifying the server against `ca`.
fn tls_ping(port: u16, ca: &Path) -> std::io::Result<String> {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .output()?;
    // redis-cli prints the simple string without its `+`.
    Ok(format!("+{}", String::from_utf8_lossy(&out.stdout).trim()))
}

/// One `redis-sentinel` (`redis-server <conf> --sentinel`) on a free port, watching
/// `master_name` at `master_port` with `down-after-milliseconds` 1000.
pub struct Sentinel {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(master_name: &str, master_port: u16) -> Self {
        Self::start_inner(master_name, master_port, None)
    }

    /// A TLS-only sentinel (no plaintext port) that also reaches the master over TLS;
    /// `cert`/`key` its certificate, `ca` the CA of it and of the master.
    pub fn start_tls(
        master_name: &str,
        master_port: u16,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> Self {
        Self::start_inner(master_name, master_port, Some((cert, key, ca)))
    }

    fn start_inner(
        master_name: &str,
        master_port: u16,
        tls: Option<(&Path, &Path, &Path)>,
    ) -> Self {
        require_binary("redis-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("sentinel.conf");
        // Sentinel rewrites its config file: it must be writable, one per sentinel.
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 10000\n\
                 sentinel parallel-syncs {master_name} 1\n"
            ),
        )
        .expect("write sentinel.conf");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let ports: Vec<String> = match tls {
                None => vec!["--port".into(), port.to_string()],
                Some((cert, key, ca)) => [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    &cert.display().to_string(),
                    "--tls-key-file",
                    &key.display().to_string(),
                    "--tls-ca-cert-file",
                    &ca.display().to_string(),
                    "--tls-auth-clients",
                    "no",
                    "--tls-replication",
                    "yes",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            };
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .args(&ports)
                .args(["--bind", "127.0.0.1"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pong = match tls {
                    None => raw(port, "PING"),
                    Some((_, _, ca)) => tls_ping(port, ca),
                };
                if pong.is_ok_and(|r| r.starts_with("+PONG")) {
                    return Self {
                        child: Some(child),
                        port,
                        _dir: dir,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("sentinel on {port} exited: {status}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("sentinel on {port} never answered PING");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis sentinel did not start: {last}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one command (inline protocol) and returns the raw reply.
    pub fn raw(&self, command: &str) -> String {
        raw(self.port, command).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
