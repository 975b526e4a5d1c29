//! Test harness: runs the real `pebble` ACME test server (Debian package `pebble`) on free
//! loopback ports with a TLS certificate made here, and kills it on drop.
//!
//! A missing binary fails the test with instructions; it never skips.

#![allow(dead_code)]

use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use certbroker::acme::ClientSettings;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

/// What to vary per test.
#[derive(Clone, Debug, Default)]
pub(crate) struct PebbleOptions {
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of good nonces rejected as `badNonce`.
    pub(crate) nonce_reject_percent: u8,
    /// `PEBBLE_ALTERNATE_ROOTS`: number of alternate chains.
    pub(crate) alternate_roots: u8,
    /// `externalAccountMACKeys` (key id → base64url MAC key); non-empty turns on
    /// `externalAccountBindingRequired`.
    pub(crate) eab_keys: Vec<(String, String)>,
    /// Really validate challenges instead of `PEBBLE_VA_ALWAYS_VALID=1`.
    pub(crate) real_validation: bool,
}

/// A running pebble.
pub(crate) struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>/dir`.
    pub(crate) directory_url: url::Url,
    /// `https://127.0.0.1:<port>` of the management interface.
    pub(crate) management_url: String,
    /// The root that signed pebble's TLS certificate.
    pub(crate) tls_root: CertificateDer<'static>,
    http: reqwest::Client,
}

impl Pebble {
    /// Starts pebble and waits until its directory answers.
    pub(crate) async fn start(opts: PebbleOptions) -> Self {
        init_tracing();
        let bin = std::env::var("PEBBLE_BIN").unwrap_or_else(|_| "pebble".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_root = write_tls_files(dir.path());
        let [acme, mgmt, http01, tlsalpn] = free_ports();

        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http01,
            "tlsPort": tlsalpn,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": !opts.eab_keys.is_empty(),
        }});
        if !opts.eab_keys.is_empty() {
            let keys: serde_json::Map<_, _> = opts
                .eab_keys
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect();
            config["pebble"]["externalAccountMACKeys"] = keys.into();
        }
        let config_path = dir.path().join("pebble-config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log_path = dir.path().join("pebble.log");
        let log = fs::File::create(&log_path).unwrap();

        let child = Command::new(&bin)
            .arg("-config")
            .arg(&config_path)
            .arg("-strict")
            .env(
                "PEBBLE_VA_ALWAYS_VALID",
                if opts.real_validation { "0" } else { "1" },
            )
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                opts.nonce_reject_percent.to_string(),
            )
            .env("PEBBLE_ALTERNATE_ROOTS", opts.alternate_roots.to_string())
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the `{bin}` binary was not found on PATH; these tests need the real Pebble ACME \
                 test server: install it with `apt-get install pebble` (or set PEBBLE_BIN)"
            ),
            Err(e) => panic!("starting `{bin}`: {e}"),
        };

        let http = certbroker::tls::http_client(
            Some(std::slice::from_ref(&tls_root)),
            Duration::from_secs(5),
        )
        .expect("http client");
        let mut pebble = Self {
            child,
            dir,
            directory_url: format!("https://127.0.0.1:{acme}/dir").parse().unwrap(),
            management_url: format!("https://127.0.0.1:{mgmt}"),
            tls_root,
            http,
        };
        pebble.wait_ready().await;
        pebble
    }

    /// Client settings that trust this pebble, with fast test timeouts.
    pub(crate) fn settings(&self) -> ClientSettings {
        let mut settings = ClientSettings::new(self.directory_url.clone());
        settings.trust_roots = Some(vec![self.tls_root.clone()]);
        settings.request_timeout = Duration::from_secs(10);
        settings
    }

    /// GET on the management interface; returns status and body.
    pub(crate) async fn management(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.management_url))
            .send()
            .await
            .expect("management request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("management body"))
    }

    /// `/cert-status-by-serial/<hex>` as JSON.
    pub(crate) async fn cert_status(&self, serial_hex: &str) -> serde_json::Value {
        let (status, body) = self
            .management(&format!("/cert-status-by-serial/{serial_hex}"))
            .await;
        assert_eq!(status, 200, "cert-status for {serial_hex}: {body}");
        serde_json::from_str(&body).expect("cert-status JSON")
    }

    /// Pebble's log so far, for assertion messages.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pebble exited with {status} before answering:\n{}",
                    self.log()
                );
            }
            if let Ok(resp) = self.http.get(self.directory_url.clone()).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not answer in 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hex serial as pebble prints it: lowercase, no leading zeros.
pub(crate) fn serial_hex(raw_serial: &[u8]) -> String {
    let hex = hex::encode(raw_serial);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// Writes a CA-issued TLS certificate for 127.0.0.1/localhost and its key; returns the CA.
fn write_tls_files(dir: &Path) -> CertificateDer<'static> {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test TLS root");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    ca_cert.der().clone()
}

/// Four distinct free loopback ports (bound to port 0, then released).
fn free_ports() -> [u16; 4] {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    [ports[0], ports[1], ports[2], ports[3]]
}

/// Tracing to the test output when `TEST_LOG` is set.
fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("certbroker=debug")
                .with_test_writer()
                .try_init();
        }
    });
}
