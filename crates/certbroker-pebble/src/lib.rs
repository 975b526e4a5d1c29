//! Runs the real `pebble` ACME test server (Debian package `pebble`) on free loopback ports
//! with a TLS certificate made here, and kills it on drop. The one launcher of certbroker's
//! integration tests (tests/it/support/pebble.rs wraps it) and of the `certbroker-bench`
//! cold-issuance scenario.
//!
//! A missing binary is an error with instructions, never a skip.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

/// What to vary per run. The default: challenges always valid, no nonce rejection, no
/// alternate roots, no external account binding, not `-strict`.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of good nonces rejected as `badNonce`.
    pub nonce_reject_percent: u8,
    /// `PEBBLE_ALTERNATE_ROOTS`: number of alternate chains.
    pub alternate_roots: u8,
    /// `externalAccountMACKeys` (key id → base64url MAC key); non-empty turns on
    /// `externalAccountBindingRequired`.
    pub eab_keys: Vec<(String, String)>,
    /// Really validate challenges instead of `PEBBLE_VA_ALWAYS_VALID=1`.
    pub real_validation: bool,
    /// Run with `-strict` (upcoming API-breaking changes of RFC 8555 enforced).
    pub strict: bool,
}

/// A running pebble; killed on drop.
#[derive(Debug)]
pub struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>/dir`.
    pub directory_url: url::Url,
    /// `https://127.0.0.1:<port>` of the management interface.
    pub management_url: String,
    /// The root that signed pebble's TLS certificate (also in [`Pebble::tls_root_path`]).
    pub tls_root: CertificateDer<'static>,
    http: reqwest::Client,
}

impl Pebble {
    /// Starts pebble (the `PEBBLE_BIN` environment variable, else `pebble` on PATH) and
    /// waits until its directory answers, for at most 30 s.
    pub async fn start(opts: PebbleOptions) -> anyhow::Result<Self> {
        let bin = std::env::var("PEBBLE_BIN").unwrap_or_else(|_| "pebble".into());
        let dir = tempfile::tempdir().context("pebble scratch directory")?;
        let tls_root = write_tls_files(dir.path())?;
        let [acme, mgmt, http01, tlsalpn] = free_ports()?;

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
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log = fs::File::create(dir.path().join("pebble.log"))?;

        let mut cmd = Command::new(&bin);
        cmd.arg("-config").arg(&config_path);
        if opts.strict {
            cmd.arg("-strict");
        }
        let child = cmd
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
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "the `{bin}` binary was not found on PATH; this needs the real Pebble ACME \
                 test server: install it with `apt-get install pebble` (or set PEBBLE_BIN; \
                 ./scripts/test installs it)"
            ),
            Err(e) => return Err(e).with_context(|| format!("starting `{bin}`")),
        };

        let http = http_client(&tls_root)?;
        let mut pebble = Self {
            child,
            dir,
            directory_url: format!("https://127.0.0.1:{acme}/dir").parse()?,
            management_url: format!("https://127.0.0.1:{mgmt}"),
            tls_root,
            http,
        };
        pebble.wait_ready().await?;
        Ok(pebble)
    }

    /// An HTTPS client that trusts pebble's TLS root (5 s timeouts).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// PEM file of the root that signed pebble's TLS certificate.
    pub fn tls_root_path(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// A scratch directory that lives as long as pebble.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Pebble's log so far, for error messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "pebble exited with {status} before answering:\n{}",
                    self.log()
                );
            }
            if let Ok(resp) = self.http.get(self.directory_url.clone()).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("pebble did not answer in 30 s:\n{}", self.log());
            }
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

/// Hex serial as pebble's management interface prints it: lowercase, no leading zeros.
pub fn serial_hex(raw_serial: &[u8]) -> String {
    let hex: String = raw_serial.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// Writes pebble's TLS certificate and key (for 127.0.0.1 and localhost) and the root that
/// signed them (`root.pem`) into `dir`; returns the root.
fn write_tls_files(dir: &Path) -> anyhow::Result<CertificateDer<'static>> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test TLS root");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&leaf_key, &issuer)?;
    fs::write(dir.join("cert.pem"), leaf.pem())?;
    fs::write(dir.join("key.pem"), leaf_key.serialize_pem())?;
    fs::write(dir.join("root.pem"), ca_cert.pem())?;
    Ok(ca_cert.der().clone())
}

/// Four distinct free loopback ports (all bound to port 0 at once, then released).
fn free_ports() -> anyhow::Result<[u16; 4]> {
    let listeners = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding port 0")?;
    let mut ports = [0; 4];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// A reqwest client trusting only `root`, on rustls with the ring provider.
fn http_client(root: &CertificateDer<'static>) -> anyhow::Result<reqwest::Client> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .tls_certs_only([reqwest::Certificate::from_der(root)?])
        .build()
        .context("pebble HTTPS client")
}

#[cfg(test)]
mod tests {
    use super::serial_hex;

    #[test]
    fn serial_hex_drops_leading_zeros_like_pebble() {
        assert_eq!(serial_hex(&[0x00, 0x0a, 0xbc]), "abc");
        assert_eq!(serial_hex(&[0x10, 0x00]), "1000");
        assert_eq!(serial_hex(&[0, 0]), "0");
    }
}
