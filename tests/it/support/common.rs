//! Shared test harness: a real devca over HTTPS and a real broker on port 0.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use certbroker::{
    app::App,
    config::{CaSettings, Settings},
    devca::{DevCa, DevCaHandle, DevCaSettings},
    pb::certificate_broker_service_client::CertificateBrokerServiceClient,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Quiet unless TEST_LOG is set.
pub fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("certbroker=debug,info")
            .with_test_writer()
            .try_init();
    }
}

/// A devca and a directory for account keys, removed on drop.
pub struct DevEnv {
    pub ca: DevCaHandle,
    pub dir: tempfile::TempDir,
}

impl DevEnv {
    pub async fn start() -> Self {
        Self::start_with(DevCaSettings::default()).await
    }

    pub async fn start_with(settings: DevCaSettings) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::start(DevCaSettings {
            state_dir: Some(dir.path().join("devca")),
            ..settings
        })
        .await
        .expect("devca starts");
        Self { ca, dir }
    }

    /// A `[[ca]]` entry for this devca, with an account key of its own under `name`.
    pub fn ca_settings(&self, name: &str) -> CaSettings {
        let (user, password) = self.ca.sti_pa_credentials();
        let mut s: CaSettings = toml_ca(&format!(
            r#"
            name = "{name}"
            directory = "{dir}"
            trust_roots = "{roots}"
            account_key = "{key}"
            request_timeout_secs = 10
            attempt_timeout_secs = 20
            [ca.sti_pa]
            base_url = "{pa}"
            user_id = "{user}"
            password = "placeholder"
            "#,
            dir = self.ca.directory_url(),
            roots = self.ca.trust_root_path().display(),
            key = self
                .dir
                .path()
                .join(format!("{name}-account.pem"))
                .display(),
            pa = self.ca.sti_pa_url(),
        ));
        if let Some(pa) = s.sti_pa.as_mut() {
            pa.password = Some(password);
        }
        s
    }
}

/// Parses one `[[ca]]` table.
pub fn toml_ca(table: &str) -> CaSettings {
    let settings = Settings::from_toml(&format!("[[ca]]\n{table}")).expect("valid ca table");
    settings.ca.into_iter().next().expect("one ca")
}

/// A broker serving gRPC on a free loopback port until dropped.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub app: App,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestBroker {
    pub async fn start(cas: Vec<CaSettings>) -> Self {
        let mut settings = Settings::from_toml("").expect("defaults");
        settings.ca = cas;
        Self::start_settings(settings).await
    }

    /// Starts the broker and waits until the background warm-up has reached every CA (so a
    /// test's counters at the CA start after the account requests).
    pub async fn start_settings(settings: Settings) -> Self {
        let broker = Self::start_unwarmed(settings).await;
        broker.warmed().await;
        broker
    }

    /// Waits until no CA is still warming up (its account created, or failed).
    pub async fn warmed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self
            .app
            .broker()
            .ca_readiness()
            .iter()
            .any(|c| c.state == certbroker::broker::ReadyState::WarmingUp)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "warm-up did not end: {:?}",
                self.app.broker().ca_readiness()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the broker without waiting for the CAs (start-up never does).
    pub async fn start_unwarmed(settings: Settings) -> Self {
        let app = App::build(&settings).await.expect("app builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = app.clone();
        tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
        });
        Self {
            addr,
            app,
            stop: Some(tx),
        }
    }

    pub async fn client(&self) -> CertificateBrokerServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connects");
        CertificateBrokerServiceClient::new(channel)
    }

    /// A client of the broker's standard gRPC health service.
    pub async fn health_client(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    /// The renewal state, from the ListRenewals RPC.
    pub async fn renewals(&self) -> certbroker::pb::ListRenewalsResponse {
        self.client()
            .await
            .list_renewals(certbroker::pb::ListRenewalsRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// `openssl verify` of a PEM chain (leaf first) against a root PEM. Returns openssl's output.
pub fn openssl_verify(chain_pem: &str, root_pem: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs: Vec<&str> = split_pem(chain_pem);
    let leaf = dir.path().join("leaf.pem");
    let untrusted = dir.path().join("untrusted.pem");
    let root = dir.path().join("root.pem");
    std::fs::write(&leaf, certs[0]).unwrap();
    std::fs::write(&untrusted, certs[1..].join("\n")).unwrap();
    std::fs::write(&root, root_pem).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&root);
    if certs.len() > 1 {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd
        .arg(&leaf)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn split_pem(pem: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let end = rest[start..].find(end_marker).expect("PEM end") + start + end_marker.len();
        out.push(&rest[start..end]);
        rest = &rest[end..];
    }
    out
}

/// A GetCertificate for one SPC.
pub fn spc_request(spc: &str) -> certbroker::pb::GetCertificateRequest {
    certbroker::pb::GetCertificateRequest {
        tn_auth_list: vec![certbroker::pb::TnAuthEntry {
            entry: Some(certbroker::pb::tn_auth_entry::Entry::Spc(spc.into())),
        }],
        ..Default::default()
    }
}

/// Path of the built `certbroker` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_certbroker"))
}

/// A `certbroker serve --dev` process on a free loopback port; killed when dropped.
pub struct DevServer {
    pub child: Child,
    /// `host:port` the server printed it listens on.
    pub addr: String,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary as `certbroker serve --dev --listen 127.0.0.1:0`, with `configure`
/// applied to the command first (environment, stderr), and waits for the address line it
/// prints on stdout. Stdout is drained afterwards so the server never blocks on a full pipe.
pub fn serve_dev(configure: impl FnOnce(&mut Command)) -> DevServer {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0"]);
    configure(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("certbroker starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve --dev prints its address before exiting")
            .expect("readable stdout");
        if let Some(rest) = line.strip_prefix("certbroker (dev mode) listening on ") {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    DevServer { child, addr }
}

/// A `certbroker devca` process on a free loopback port with its own state directory, and
/// what its banner printed; killed when dropped.
pub struct DevcaProcess {
    pub child: Child,
    /// The banner's lines, up to and including "press Ctrl-C".
    pub banner: Vec<String>,
    /// ACME directory URL.
    pub directory: String,
    /// STI-PA API base URL.
    pub sti_pa: String,
    /// File holding the STI-PA password.
    pub password_file: String,
    /// PEM file of the TLS trust root.
    pub trust_root: String,
    /// stderr lines so far, when started with `capture_stderr`; else always empty.
    pub log: Arc<Mutex<Vec<String>>>,
    pub state_dir: tempfile::TempDir,
}

impl Drop for DevcaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevcaProcess {
    /// Starts `certbroker devca --listen 127.0.0.1:0 --state-dir <tmp> <flags>`, with
    /// `configure` applied to the command first (environment), and reads its banner. With
    /// `capture_stderr`, stderr is collected into `log` from the start; otherwise inherited.
    /// Stdout is drained after the banner so the devca never blocks on a full pipe.
    pub fn start(
        flags: &[&str],
        capture_stderr: bool,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let state_dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["devca", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir.path())
            .args(flags);
        configure(&mut cmd);
        cmd.stdout(Stdio::piped());
        if capture_stderr {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("certbroker devca starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        if capture_stderr {
            let stderr = BufReader::new(child.stderr.take().unwrap());
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in stderr.lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = vec![];
        for line in lines.by_ref() {
            let line = line.unwrap();
            let stop = line.starts_with("press Ctrl-C");
            banner.push(line);
            if stop {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let field = |prefix: &str| banner_field(&banner, prefix);
        let pa = field("STI-PA API:");
        Self {
            directory: field("ACME directory:"),
            sti_pa: pa.split_whitespace().next().unwrap().to_owned(),
            password_file: pa
                .split("password in ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')')
                .to_owned(),
            trust_root: field("trust root:"),
            banner,
            child,
            log,
            state_dir,
        }
    }

    /// The banner's value after `prefix`, trimmed; panics when the banner has no such line.
    pub fn field(&self, prefix: &str) -> String {
        banner_field(&self.banner, prefix)
    }
}

fn banner_field(banner: &[String], prefix: &str) -> String {
    banner
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{prefix} not printed: {banner:#?}"))
}

pub type Shared<T> = Arc<T>;
