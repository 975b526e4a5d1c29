//! The broker's ACME client against an ACME server no one here wrote: acme2certifier
//! (PyPI `acme2certifier` 0.46.x, installed by `./scripts/test`) with its openssl CA handler,
//! served over HTTPS by tests/python/acme2certifier_server.py.
//!
//! - `certbroker issue` over http-01, validated for real: acme2certifier resolves the name
//!   through a DNS stub and fetches the key authorization from port 80 of the answer, as
//!   RFC 8555 §8.3 says, where the broker's own responder (`--http01-listen`) answers.
//! - `certbroker issue` over tkauth-01 with an SPC token from the devca's STI-PA.
//! - `certbroker serve` with `[[ca]]` tables pointing at acme2certifier, and GetCertificate.
//!
//! Port 80 (and 53 for the DNS stub) is why every test here runs in a network namespace of
//! its own: the test binary re-executes itself under `unshare --net` (as root, or with
//! `--map-root-user` where unprivileged user namespaces are allowed), so nothing binds a
//! port of the host and the namespace disappears with the process.
//!
//! Where acme2certifier deviates from RFC 8555 / 9447 / 9448 the broker stays correct and
//! the test expects acme2certifier's behaviour explicitly, naming the deviation:
//! - it refuses an account without a contact (RFC 8555 §7.3: `contact` is optional);
//! - it does not verify authority tokens at all: tkauth-01 fails closed unless the
//!   operator sets `ACME2CERTIFIER_I_KNOW_THE_RISK=1`, and then any token passes
//!   (RFC 9447/9448: the CA validates the token it is given);
//! - it takes the token only from `atc`, not from RFC 9448's `tkauth`;
//! - it compares the TNAuthList identifier as a string with the padded standard base64 of
//!   the CSR extension, so RFC 9448's base64url form fails at finalize;
//! - its stock openssl handler drops the TNAuthList extension (no setting passes it
//!   through), so a TNAuthList order yields a certificate without one, which the broker
//!   refuses. tests/python/a2c_tnauthlist_handler.py subclasses the stock handler to copy
//!   the extension from the CSR; with it, tkauth-01 orders end in a SHAKEN certificate;
//! - its wsgi database handler drops a failed challenge's reason, so an invalid challenge
//!   has no `error` (optional in RFC 8555 §7.1.4) and the broker can only say "invalid".

use crate::support::common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use certbroker::pb::{
    CacheStatus, GetCertificateRequest,
    certificate_broker_service_client::CertificateBrokerServiceClient,
};
use common::DevEnv;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// The name acme2certifier validates over http-01; the DNS stub answers 127.0.0.1 for it.
const NAME: &str = "a2c.test";
/// acme2certifier requires a contact (see the module comment).
const CONTACT: &str = "mailto:noc@a2c.test";
/// TNAuthList DER of SPC 1234.
const SPC_1234_DER_HEX: &str = "3008a006160431323334";
/// acme2certifier's fail-closed tkauth-01 message (its tkauth_validator.py).
const NOT_IMPLEMENTED: &str =
    "tkauth-01 validation is not implemented: the authority token is not verified";

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn issue_over_http01() {
    in_own_netns("issue_over_http01", || {
        let rt = runtime();
        let a2c = rt.block_on(Acme2Certifier::start(A2cOptions {
            dns_stub: true,
            ..A2cOptions::default()
        }));
        let work = tempfile::tempdir().unwrap();
        let roots = work.path().join("roots.pem");
        std::fs::write(&roots, &a2c.tls_root_pem).unwrap();
        let issue_name = |name: &str, out: &Path, contact: bool| {
            let mut cmd = Command::new(common::bin());
            cmd.args(["issue", "--directory", &a2c.directory, "--trust-root"])
                .arg(&roots)
                .args(["--dns", name, "--http01-listen", "127.0.0.1:80", "--out"])
                .arg(out)
                .args(["--timeout", "60"])
                .env("RUST_LOG", "warn")
                .env("RUST_BACKTRACE", "0");
            if contact {
                cmd.args(["--contact", CONTACT]);
            }
            cmd.output().expect("certbroker issue runs")
        };
        let issue = |out: &Path, contact: bool| issue_name(NAME, out, contact);

        // Deviation: RFC 8555 §7.3 makes `contact` optional; acme2certifier refuses a
        // newAccount without one (unless `[Account] contact_check_disable`).
        let refused = issue(&work.path().join("no-contact"), false);
        assert!(!refused.status.success(), "{}", a2c.log());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("urn:ietf:params:acme:error:malformed: Contact information is missing"),
            "an account without contact is refused, naming it: {stderr}"
        );

        let out = work.path().join("out");
        let ok = issue(&out, true);
        assert_success(&ok, &a2c);
        // certbot's file set: cert.pem the leaf alone, fullchain.pem leaf + chain.
        let leaf_only = std::fs::read_to_string(out.join("cert.pem")).unwrap();
        assert_eq!(
            certbroker::shaken::parse_pem_chain(&leaf_only)
                .unwrap()
                .len(),
            1
        );
        let chain = std::fs::read_to_string(out.join("fullchain.pem")).unwrap();
        let der = certbroker::shaken::parse_pem_chain(&chain).unwrap();
        assert_eq!(der.len(), 2, "leaf and acme2certifier's issuing CA");
        let leaf = certbroker::shaken::CertInfo::parse(&der[0]).unwrap();
        assert_eq!(leaf.dns_names, vec![NAME.to_owned()]);
        assert!(leaf.tn_auth_list.is_none());
        common::openssl_verify(&chain, &a2c.ca_pem).expect("chain verifies to the a2c CA");
        assert_key_matches(&out);

        // The validation really fetched from the broker's responder: acme2certifier logs
        // the fetch through the pinned address of the DNS answer.
        let log = a2c.log();
        assert!(
            log.contains("url_get_dns_pinned() connected via 127.0.0.1 status=200"),
            "acme2certifier fetched the key authorization over http-01:\n{log}"
        );

        // And it is not waved through: a name the DNS stub does not know fails
        // validation (acme2certifier's wsgi database handler drops the challenge's
        // `error`, so the broker can say only that the authorization is invalid).
        let unknown = issue_name("unknown.a2c.test", &work.path().join("unknown"), true);
        assert!(!unknown.status.success());
        let stderr = String::from_utf8_lossy(&unknown.stderr);
        assert!(stderr.contains("is Invalid"), "{stderr}");
        assert!(
            a2c.log().contains("DNS resolution failed"),
            "{}",
            tail(&a2c.log(), 80)
        );
    });
}

#[test]
fn issue_over_tkauth01() {
    in_own_netns("issue_over_tkauth01", || {
        let rt = runtime();
        let devca = rt.block_on(DevEnv::start());
        // Three servers, started together (each takes seconds to import):
        let (closed, stock, passthrough) = rt.block_on(async {
            tokio::join!(
                // as shipped: tkauth-01 fails closed;
                Acme2Certifier::start(A2cOptions::default()),
                // the operator's break-glass switch: tkauth-01 accepts any token;
                Acme2Certifier::start(A2cOptions {
                    accept_any_token: true,
                    ..A2cOptions::default()
                }),
                // and the stock handler extended to keep the CSR's TNAuthList.
                Acme2Certifier::start(A2cOptions {
                    accept_any_token: true,
                    tnauthlist_passthrough: true,
                    ..A2cOptions::default()
                }),
            )
        });
        let work = tempfile::tempdir().unwrap();
        let (user, password) = devca.ca.sti_pa_credentials();
        let issue = |a2c: &Acme2Certifier, name: &str, extra: &[&str]| {
            let roots = work.path().join(format!("{name}-roots.pem"));
            std::fs::write(&roots, a2c.tls_root_pem.clone() + &devca_root(&devca)).unwrap();
            let out = work.path().join(name);
            let output = Command::new(common::bin())
                .args(["issue", "--directory", &a2c.directory, "--trust-root"])
                .arg(&roots)
                .args(["--spc", "1234", "--contact", CONTACT, "--timeout", "60"])
                .args(["--sti-pa", devca.ca.sti_pa_url().as_str()])
                .args(["--sti-pa-user", &user])
                .args(["--sti-pa-password-env", "STI_PA_PASSWORD"])
                .args(extra)
                .arg("--out")
                .arg(&out)
                .env(
                    "STI_PA_PASSWORD",
                    secrecy::ExposeSecret::expose_secret(&password),
                )
                .env("RUST_LOG", "warn")
                .env("RUST_BACKTRACE", "0")
                .output()
                .expect("certbroker issue runs");
            (output, out)
        };
        let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();

        // Deviation (RFC 9447/9448: the CA validates the token): acme2certifier
        // has no token verification, so as shipped it marks every tkauth-01 challenge
        // invalid. Its wsgi database handler also loses the reason: the invalid challenge
        // carries no `error` (RFC 8555 §7.1.4 makes it optional), so the broker can say
        // only that the authorization is invalid; the reason is in acme2certifier's log.
        let (o, _) = issue(&closed, "closed", &[]);
        assert!(!o.status.success(), "{}", closed.log());
        assert!(
            stderr(&o).contains("/acme/authz/") && stderr(&o).contains("is Invalid"),
            "{}",
            stderr(&o)
        );
        assert!(closed.log().contains(NOT_IMPLEMENTED), "{}", closed.log());

        // With the break-glass switch it takes any token; its stock handler then issues a
        // certificate without the TNAuthList it validated, and the broker refuses it.
        let (o, _) = issue(&stock, "stock", &[]);
        assert!(!o.status.success(), "{}", stock.log());
        assert!(
            stderr(&o).contains("certificate check tn_auth_list failed: leaf has no TNAuthList"),
            "the broker refuses a TNAuthList order's certificate without one: {}",
            stderr(&o)
        );

        // With the TNAuthList kept, the SPC token from the devca's STI-PA yields a SHAKEN
        // certificate for SPC 1234.
        let (o, out) = issue(&passthrough, "passthrough", &[]);
        assert_success(&o, &passthrough);
        let chain = std::fs::read_to_string(out.join("fullchain.pem")).unwrap();
        let der = certbroker::shaken::parse_pem_chain(&chain).unwrap();
        let leaf = certbroker::shaken::CertInfo::parse(&der[0]).unwrap();
        assert_eq!(
            hex::encode(leaf.tn_auth_list.expect("TNAuthList").to_der()),
            SPC_1234_DER_HEX
        );
        common::openssl_verify(&chain, &passthrough.ca_pem).expect("chain verifies");
        assert_key_matches(&out);

        // Deviation: RFC 9448 names the response field `tkauth`; acme2certifier takes
        // only `atc` and answers malformed.
        let (o, _) = issue(
            &passthrough,
            "tkauth-field",
            &["--response-field", "tkauth"],
        );
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("urn:ietf:params:acme:error:malformed: atc claim is missing"),
            "{}",
            stderr(&o)
        );

        // Deviation: RFC 9448 §3 gives the identifier as base64url of the DER; acme2certifier
        // compares the string with the padded base64 of the CSR's extension, so the
        // RFC's form (MAigBhYEMTIzNA, not MAigBhYEMTIzNA==) fails at finalize.
        let (o, _) = issue(
            &passthrough,
            "base64url",
            &["--tkvalue-encoding", "base64url"],
        );
        assert!(!o.status.success(), "{}", passthrough.log());
        assert!(
            stderr(&o).contains("urn:ietf:params:acme:error:badCSR: CSR validation failed"),
            "{}",
            stderr(&o)
        );

        // Deviation, shown plainly: with the switch on, a token nobody signed passes too.
        // Its claims fit the order and the account (the broker checks those before
        // sending it); its signature is 64 zero bytes.
        let account = certbroker::acme::AccountKey::generate().unwrap();
        let account_pem = work.path().join("junk-account.pem");
        std::fs::write(&account_pem, account.to_pkcs8_pem()).unwrap();
        let fingerprint = certbroker::challenge::fingerprint(
            certbroker::challenge::FingerprintAlgorithm::JwkThumbprint,
            &account.public_jwk(),
        )
        .unwrap();
        let b64 = |v: serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let junk_token = format!(
            "{}.{}.{}",
            b64(serde_json::json!({"alg": "ES256", "typ": "JWT",
                "x5u": "https://sti-pa.invalid/nobody.crt"})),
            b64(serde_json::json!({"exp": exp, "jti": "junk",
                "atc": {"tktype": "TNAuthList", "tkvalue": "MAigBhYEMTIzNA==",
                        "ca": false, "fingerprint": fingerprint}})),
            "A".repeat(86)
        );
        let junk = work.path().join("junk-token");
        std::fs::write(&junk, junk_token).unwrap();
        let roots = work.path().join("junk-roots.pem");
        std::fs::write(&roots, &passthrough.tls_root_pem).unwrap();
        let o = Command::new(common::bin())
            .args([
                "issue",
                "--directory",
                &passthrough.directory,
                "--trust-root",
            ])
            .arg(&roots)
            .args(["--spc", "1234", "--contact", CONTACT, "--token-file"])
            .arg(&junk)
            .arg("--account-key")
            .arg(&account_pem)
            .arg("--out")
            .arg(work.path().join("junk"))
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert_success(&o, &passthrough);
    });
}

#[test]
fn serve_with_acme2certifier_ca() {
    in_own_netns("serve_with_acme2certifier_ca", || {
        let rt = runtime();
        let devca = rt.block_on(DevEnv::start());
        let (stock, passthrough) = rt.block_on(async {
            tokio::join!(
                Acme2Certifier::start(A2cOptions {
                    dns_stub: true,
                    accept_any_token: true,
                    ..A2cOptions::default()
                }),
                Acme2Certifier::start(A2cOptions {
                    accept_any_token: true,
                    tnauthlist_passthrough: true,
                    ..A2cOptions::default()
                }),
            )
        });
        let work = tempfile::tempdir().unwrap();
        let roots = work.path().join("roots.pem");
        std::fs::write(
            &roots,
            stock.tls_root_pem.clone() + &passthrough.tls_root_pem + &devca_root(&devca),
        )
        .unwrap();
        let (user, password) = devca.ca.sti_pa_credentials();
        let ca_table = |name: &str, a2c: &Acme2Certifier, pool: &str, http01: bool| {
            format!(
                r#"
[[ca]]
name = "{name}"
directory = "{dir}"
trust_roots = "{roots}"
pools = ["{pool}"]
account_key = "{key}"
contact = ["{CONTACT}"]
request_timeout_secs = 20
attempt_timeout_secs = 60
{http01}
[ca.sti_pa]
base_url = "{pa}"
user_id = "{user}"
password_env = "STI_PA_PASSWORD"
"#,
                dir = a2c.directory,
                roots = roots.display(),
                key = work.path().join(format!("{name}-account.pem")).display(),
                http01 = if http01 {
                    r#"http01_listen = "127.0.0.1:80""#
                } else {
                    ""
                },
                pa = devca.ca.sti_pa_url(),
            )
        };
        let config = work.path().join("certbroker.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
                ca_table("a2c", &stock, "default", true),
                ca_table("a2c-tn", &passthrough, "shaken", false)
            ),
        )
        .unwrap();
        let serve = Serve::start(&config, secrecy::ExposeSecret::expose_secret(&password));

        rt.block_on(async {
            let mut client =
                CertificateBrokerServiceClient::connect(format!("http://{}", serve.addr))
                    .await
                    .expect("connects to certbroker serve");

            // http-01 through the broker's responder, validated by acme2certifier.
            let got = client
                .get_certificate(GetCertificateRequest {
                    dns_names: vec![NAME.into()],
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}\n{}", serve.log(), stock.log()))
                .into_inner();
            assert_eq!(got.cache_status, CacheStatus::Issued as i32);
            assert_eq!(got.issuer_ca, "a2c");
            let leaf = certbroker::shaken::CertInfo::parse(&got.certificate_chain_der[0]).unwrap();
            assert_eq!(leaf.dns_names, vec![NAME.to_owned()]);
            common::openssl_verify(&got.certificate_chain_pem, &stock.ca_pem)
                .expect("chain verifies to the a2c CA");
            assert!(!got.private_key_pkcs8_der.is_empty());

            // tkauth-01 with an STI-PA token, at the CA that keeps the TNAuthList.
            let mut req = common::spc_request("1234");
            req.ca_pool = "shaken".into();
            let got = client
                .get_certificate(req)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}\n{}", serve.log(), passthrough.log()))
                .into_inner();
            assert_eq!(got.cache_status, CacheStatus::Issued as i32);
            assert_eq!(got.issuer_ca, "a2c-tn");
            let leaf = certbroker::shaken::CertInfo::parse(&got.certificate_chain_der[0]).unwrap();
            assert_eq!(
                hex::encode(leaf.tn_auth_list.expect("TNAuthList").to_der()),
                SPC_1234_DER_HEX
            );
            common::openssl_verify(&got.certificate_chain_pem, &passthrough.ca_pem)
                .expect("chain verifies");

            // The stock handler drops the TNAuthList (deviation, see the module comment):
            // the broker refuses that certificate and says why.
            let status = client
                .get_certificate(common::spc_request("1234"))
                .await
                .expect_err("a certificate without the ordered TNAuthList is refused");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains("leaf has no TNAuthList"),
                "{status:?}"
            );
        });
    });
}

// ---------------------------------------------------------------------------------------
// acme2certifier

#[derive(Clone, Copy, Debug, Default)]
struct A2cOptions {
    /// Answer DNS for [`NAME`] on 127.0.0.1:53 (one server per namespace may).
    dns_stub: bool,
    /// `ACME2CERTIFIER_I_KNOW_THE_RISK=1`: tkauth-01 accepts unverified tokens.
    accept_any_token: bool,
    /// tests/python/a2c_tnauthlist_handler.py instead of the stock openssl handler.
    tnauthlist_passthrough: bool,
}

/// A running acme2certifier, killed on drop.
struct Acme2Certifier {
    child: Child,
    /// Held open: the launcher exits when it closes, even if this process is killed.
    _stdin: std::process::ChildStdin,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>/directory`.
    directory: String,
    /// PEM of the root that signed the server's TLS certificate.
    tls_root_pem: String,
    /// PEM of the CA the openssl handler issues from.
    ca_pem: String,
}

impl Acme2Certifier {
    async fn start(opts: A2cOptions) -> Self {
        common::init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca_pem = openssl_ca(d);
        let tls_root_pem = write_tls_files(d);
        std::fs::create_dir(d.join("certs")).unwrap();
        let handler = if opts.tnauthlist_passthrough {
            python_dir().join("a2c_tnauthlist_handler.py")
        } else {
            PathBuf::from("acme2certifier.cahandlers.openssl_ca_handler")
        };
        let cfg = format!(
            "[DEFAULT]\n\
             debug: True\n\n\
             [Account]\n\
             contact_check_disable: False\n\n\
             [CAhandler]\n\
             handler_module: {handler}\n\
             issuing_ca_key: {d}/ca-key.pem\n\
             issuing_ca_cert: {d}/ca.pem\n\
             issuing_ca_crl: {d}/ca.crl\n\
             cert_save_path: {d}/certs\n\
             cert_validity_days: 30\n\n\
             [DBhandler]\n\
             handler_module: acme2certifier.dbhandlers.wsgi_handler\n\
             dbfile: {d}/acme_srv.db\n\n\
             [Challenge]\n\
             dns_server_list: [\"127.0.0.1\"]\n\n\
             [Order]\n\
             tnauthlist_support: True\n",
            handler = handler.display(),
            d = d.display(),
        );
        std::fs::write(d.join("acme_srv.cfg"), cfg).unwrap();

        let log = std::fs::File::create(d.join("a2c.log")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(python_dir().join("acme2certifier_server.py"))
            .arg("--config")
            .arg(d.join("acme_srv.cfg"))
            .arg("--cert")
            .arg(d.join("tls.pem"))
            .arg("--key")
            .arg(d.join("tls-key.pem"))
            .env_remove("ACME2CERTIFIER_I_KNOW_THE_RISK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        if opts.dns_stub {
            cmd.args(["--dns", &format!("{NAME}=127.0.0.1")]);
        }
        if opts.accept_any_token {
            cmd.env("ACME2CERTIFIER_I_KNOW_THE_RISK", "1");
        }
        let mut child = cmd.spawn().expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log_path = d.join("a2c.log");
        // The launcher prints its address once bound; EOF means it died.
        let started = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let base = lines.find_map(|l| {
                l.ok()?
                    .strip_prefix("listening on ")
                    .map(|s| s.trim().to_owned())
            });
            std::thread::spawn(move || for _ in lines {});
            base
        });
        let base = match tokio::time::timeout(Duration::from_secs(90), started).await {
            Ok(joined) => joined.unwrap(),
            Err(_) => {
                let _ = child.kill();
                None
            }
        }
        .unwrap_or_else(|| {
            panic!(
                "acme2certifier did not start within 90 s (./scripts/test installs it: \
                 pip install acme2certifier==0.46.3):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        let a2c = Self {
            child,
            _stdin: stdin,
            directory: format!("{base}/directory"),
            tls_root_pem,
            ca_pem,
            dir,
        };
        a2c.wait_ready().await;
        a2c
    }

    /// Polls /directory until it answers with JSON naming newOrder.
    async fn wait_ready(&self) {
        let root = certbroker::tls::read_roots(&self.dir.path().join("tls-root.pem")).unwrap();
        let http = certbroker::tls::http_client(Some(&root), Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(resp) = http.get(&self.directory).send().await
                && resp.status().is_success()
                && let Ok(body) = resp.json::<serde_json::Value>().await
                && body["newOrder"].is_string()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "acme2certifier's directory did not answer in 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// acme2certifier's debug log so far, for assertion messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("a2c.log")).unwrap_or_default()
    }
}

impl Drop for Acme2Certifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The issuing CA for the openssl handler, made with `openssl`: P-256, so the leaves are
/// ecdsa-with-SHA256 as SHAKEN wants. Returns its PEM.
fn openssl_ca(dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .args([
            "-subj",
            "/C=US/O=acme2certifier test/CN=acme2certifier test CA",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(dir.join("ca-key.pem"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

/// A TLS certificate for 127.0.0.1 from a root of its own; returns the root's PEM.
fn write_tls_files(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "acme2certifier test TLS root");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("tls.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls-root.pem"), ca_cert.pem()).unwrap();
    ca_cert.pem()
}

fn python_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"))
}

// ---------------------------------------------------------------------------------------
// certbroker serve

/// `certbroker serve --config FILE`, killed on drop.
struct Serve {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(config: &Path, sti_pa_password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        let mut child = Command::new(common::bin())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("STI_PA_PASSWORD", sti_pa_password)
            .env("RUST_LOG", "certbroker=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("certbroker serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines
            .find_map(|l| {
                l.ok()?
                    .strip_prefix("certbroker listening on ")
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| {
                panic!(
                    "certbroker serve exited before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Runs `body` in a network namespace of its own: re-executes this test binary, filtered
/// to `test`, under `unshare --net`, with loopback up. The inner run leaves a marker file
/// so a filter that matches nothing cannot pass for a success.
fn in_own_netns(test: &str, body: impl FnOnce()) {
    const INSIDE: &str = "A2C_TEST_NETNS_MARKER";
    if let Some(marker) = std::env::var_os(INSIDE) {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .expect("ip (iproute2) runs");
        assert!(
            up.status.success(),
            "ip link set lo up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        body();
        std::fs::write(marker, test).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done");
    let mut cmd = Command::new("unshare");
    cmd.arg("--net");
    if !is_root() {
        cmd.arg("--map-root-user");
    }
    let filter = libtest_name(test);
    let status = cmd
        .arg(std::env::current_exe().unwrap())
        .args([
            filter.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE, &marker)
        .status()
        .expect("unshare (util-linux) runs");
    assert!(
        status.success(),
        "{test} failed inside its network namespace ({status}; see its output above). \
         It needs root, or unprivileged user namespaces, for `unshare --net`: acme2certifier \
         validates http-01 on port 80 and resolves names through DNS on port 53, so the \
         test gives it a namespace where those ports are free."
    );
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some(test),
        "the inner run did not run {test}"
    );
}

/// `test`'s full name as the test harness knows it: its module path inside the test binary
/// (without the crate's own name), so `--exact` matches it wherever this file is a module.
fn libtest_name(test: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn devca_root(env: &DevEnv) -> String {
    std::fs::read_to_string(env.ca.trust_root_path()).unwrap()
}

fn assert_success(out: &Output, a2c: &Acme2Certifier) {
    assert!(
        out.status.success(),
        "certbroker issue failed:\n{}\n{}\n--- acme2certifier log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&a2c.log(), 120)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// key.pem belongs to the leaf of cert.pem.
fn assert_key_matches(out: &Path) {
    let pubkey = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let cert = out.join("cert.pem");
    let key = out.join("key.pem");
    assert_eq!(
        pubkey(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]),
        pubkey(&["pkey", "-in", key.to_str().unwrap(), "-pubout"])
    );
}
