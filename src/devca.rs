//! An embedded STI-PA and STI-CA over real HTTPS, for `serve --dev` and for tests.
//!
//! One HTTPS server (axum + rustls) on `listen:port` serves both:
//! - the STI-PA token API, shaped like iconectiv's (shaken-acme.md §4): login, logout,
//!   `POST /api/v1/account/{OCN}/token/`, the token-signing certificate at
//!   `/download/v1/certificate/sti-pa.crt` and a CRL at `/download/v1/crl` (the
//!   intermediate's, for end-entity and SCA certificates; the root's, for the intermediate,
//!   is at `/download/v1/root-crl`);
//! - an RFC 8555 ACME server under `/acme/` that validates `tkauth-01` (RFC 9447/9448)
//!   strictly: token signature, `x5u`, `exp`, `jti` replay, `tktype`, `tkvalue` (compared
//!   after DER decoding), `fingerprint` and `ca`; and checks the CSR at finalize;
//! - STAR (RFC 8739, [`DevStar`], on by default): `auto-renewal` orders whose
//!   star-certificate URL serves a new short-term certificate every half lifetime, with
//!   cancellation and the autoRenewal problems; and newAuthz pre-authorization
//!   (RFC 8555 §7.4.1), whose valid authorizations the account's next orders reuse;
//! - `GET /devca/stats`: its counters as JSON ([`DevCaHandle::stats_url`]).
//!
//! Every event (account, order, authorization, challenge, certificate, revocation, SPC
//! token, injected fault) is logged at info level with target `devca`. The [`Behaviour`]
//! knobs make it misbehave per ACME [`Step`]: latency, hangs, error documents, `badNonce`,
//! a slow STI-PA; `certbroker devca` exposes them as flags.
//!
//! PKI: a self-signed **TLS root** issues the HTTPS server certificate
//! ([`DevCaHandle::trust_root_pem`]). A separate **SHAKEN root** issues the SHAKEN
//! intermediate (which issues end-entity certificates) and the STI-PA token-signing
//! certificate ([`DevCaHandle::issuing_root_pem`]). Certificates follow the SHAKEN profile
//! of [`DevCaSettings::profile`] (US SHAKEN CP 1.3 or 1.4, ATIS-1000080 v005), with the DER
//! that independent parsers accept; docs/profile.md lists each rule and its test. Keys live
//! in memory; the certificates and keys are written to the state directory, so a later run
//! there keeps them. `dns` identifiers are authorized over real `http-01`
//! (RFC 8555 §8.3): on the challenge POST the devca fetches the key authorization from
//! `http://NAME:{http01_port}/.well-known/acme-challenge/TOKEN`, every name resolving to
//! [`DevCaSettings::http01_address`] (loopback by default).
//!
//! Where a client can tell, the ACME server follows RFC 8555: 415 for a POST that is not
//! `application/jose+json`, 405 problem documents for GET on POST-only resources,
//! `Replay-Nonce` and `Link: rel="index"` on every answer, `badSignatureAlgorithm` with the
//! accepted `algorithms`, no unprotected JWS header, the account's `orders` list, account
//! and authorization deactivation, and `Link: rel="up"` on challenge answers. Certbot's
//! `acme` library checks all of this in the test suite (tests/it/acme_python.rs).
//!
//! A little over 500 lines (tests aside): the settings, the handle's accessors and the
//! server start belong to one type each; the protocol itself lives in the submodules.

mod acme;
mod ari;
mod behaviour;
mod challenge;
mod defect;
mod issue;
mod jws;
mod order;
mod pki;
mod star;
mod state;
mod stats;
mod stipa;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::SecretString;
use url::Url;

pub use ari::{DevRenewalInfo, Replacement, ReplacesOutcome};
pub use behaviour::{Behaviour, InjectedError, Stats, Step, TokenFault};
pub use defect::ProfileDefect;
pub use star::{DevStar, DevStarOrder};

/// Which challenge-response field the STI-CA reads the SPC token from (shaken-acme.md §0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevResponseField {
    /// `{"atc": token}`, as deployed SHAKEN CAs expect.
    Atc,
    /// `{"tkauth": token}`, as RFC 9448 §4 says.
    Tkauth,
    /// Either field is accepted.
    #[default]
    Either,
}

/// How the STI-CA computes the account-key fingerprint it expects in the token
/// (shaken-acme.md §0.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevFingerprint {
    /// SHA-256 RFC 7638 JWK thumbprint (RFC 9448 §5 via RFC 8555 §8.1).
    #[default]
    JwkThumbprint,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    SpkiSha256,
}

/// Whether the STI-CA lets the certificate key be the ACME account key
/// (shaken-acme.md §0.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevKeyReuse {
    /// A CSR with the account key is `badCSR`, as Boulder-style servers do.
    #[default]
    Reject,
    /// Either key is accepted.
    Allow,
    /// The CSR key must be the account key ("Public key does not match account"), as
    /// Peeringhub's flow does.
    Require,
}

/// Which certificate profile the devca issues by (shaken-acme.md §3, docs/profile.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevProfile {
    /// US SHAKEN CP v1.3: policy 2.16.840.1.114569.1.1.3; the subject **shall** carry a
    /// serialNumber (§3.1), so the devca assigns one when the CSR has none; CRLDPs name only
    /// the CRL's URI.
    #[default]
    UsCp13,
    /// US SHAKEN CP v1.4: policy 2.16.840.1.114569.1.1.4; serialNumber **may** be present
    /// (copied from the CSR, never added); CRLDPs also carry a cRLIssuer DirName.
    UsCp14,
}

/// The default [`DevCaSettings::caa_identities`].
pub const DEFAULT_CAA_IDENTITY: &str = "devca.certbroker.test";

/// Settings of the embedded CA.
#[derive(Clone)]
pub struct DevCaSettings {
    /// Address to listen on; 127.0.0.1 by default.
    pub listen: IpAddr,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// Where the trust-root PEMs are written, and the PKI kept: a directory an earlier run
    /// used gives the same roots, intermediate and STI-PA signing key again. `None` creates
    /// a fresh directory under the system temp dir.
    pub state_dir: Option<PathBuf>,
    /// Lifetime of issued end-entity certificates; 24 hours by default. An order's
    /// `notAfter` shortens it.
    pub cert_lifetime: Duration,
    /// Lifetime of SPC tokens; 10 minutes by default.
    pub token_lifetime: Duration,
    /// Which challenge-response field is read.
    pub response_field: DevResponseField,
    /// Which fingerprint algorithm the CA expects.
    pub fingerprint: DevFingerprint,
    /// When set, newAccount requires an External Account Binding (RFC 8555 §7.3.4) with
    /// this key id and HMAC key (HS256).
    pub require_eab: Option<(String, Vec<u8>)>,
    /// Reject a token whose `jti` was already used in a challenge (akamu enforces this;
    /// iconectiv tokens are reused until `exp`). Off by default.
    pub one_time_jti: bool,
    /// Whether the certificate key may (or must) be the account key.
    pub account_key_reuse: DevKeyReuse,
    /// ACME Renewal Information (RFC 9773): when set, the directory offers `renewalInfo`,
    /// which suggests this window for each certificate, and newOrder accepts `replaces`.
    /// Unset (the default), newOrder rejects `replaces` as `malformed`.
    pub renewal_info: Option<DevRenewalInfo>,
    /// Port that http-01 validation fetches `/.well-known/acme-challenge/{token}` from
    /// (RFC 8555 §8.3 says 80, the default). Tests give the port of their own responder, as
    /// with Pebble's `httpPort`.
    pub http01_port: u16,
    /// The address every `dns` identifier resolves to for http-01 validation; `None` asks
    /// the system resolver. Loopback by default: the devca serves labs and tests, and must
    /// not be talked into fetching from the network.
    pub http01_address: Option<IpAddr>,
    /// The certificate profile; US SHAKEN CP 1.3 by default.
    pub profile: DevProfile,
    /// Let an end-entity TNAuthList hold TNs, ranges or several SPCs, as an ACME-based SCA
    /// would. Off by default: ATIS-1000080 v005 allows exactly one SPC, and the devca refuses
    /// other lists at newOrder (`rejectedIdentifier`).
    pub allow_tn_lists: bool,
    /// STAR (RFC 8739): when set (the default), the directory's `meta` offers
    /// `auto-renewal` and newOrder takes an `auto-renewal` object; `None` makes a CA without
    /// STAR, whose newOrder refuses `auto-renewal` as `malformed`.
    pub star: Option<DevStar>,
    /// Offer `newAuthz` (pre-authorization, RFC 8555 §7.4.1); on by default.
    pub new_authz: bool,
    /// The directory's `meta.caaIdentities` (RFC 8555 §7.1.1, RFC 8657): the CAA issuer
    /// domains of this CA; `["devca.certbroker.test"]` by default.
    pub caa_identities: Vec<String>,
    /// STI-PA user id.
    pub sti_pa_user: String,
    /// STI-PA password.
    pub sti_pa_password: SecretString,
}

impl Default for DevCaSettings {
    fn default() -> Self {
        Self {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            state_dir: None,
            cert_lifetime: Duration::from_secs(24 * 3600),
            token_lifetime: Duration::from_secs(600),
            response_field: DevResponseField::default(),
            fingerprint: DevFingerprint::default(),
            require_eab: None,
            one_time_jti: false,
            account_key_reuse: DevKeyReuse::default(),
            renewal_info: None,
            http01_port: 80,
            http01_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            profile: DevProfile::default(),
            allow_tn_lists: false,
            star: Some(DevStar::default()),
            new_authz: true,
            caa_identities: vec![DEFAULT_CAA_IDENTITY.to_owned()],
            sti_pa_user: "dev".to_owned(),
            sti_pa_password: SecretString::from(state::random_id()),
        }
    }
}

impl std::fmt::Debug for DevCaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCaSettings")
            .field("listen", &self.listen)
            .field("port", &self.port)
            .field("state_dir", &self.state_dir)
            .field("cert_lifetime", &self.cert_lifetime)
            .field("token_lifetime", &self.token_lifetime)
            .field("response_field", &self.response_field)
            .field("fingerprint", &self.fingerprint)
            .field(
                "require_eab",
                &self
                    .require_eab
                    .as_ref()
                    .map(|(kid, _)| (kid, "[REDACTED]")),
            )
            .field("one_time_jti", &self.one_time_jti)
            .field("account_key_reuse", &self.account_key_reuse)
            .field("renewal_info", &self.renewal_info)
            .field("http01_port", &self.http01_port)
            .field("http01_address", &self.http01_address)
            .field("profile", &self.profile)
            .field("allow_tn_lists", &self.allow_tn_lists)
            .field("star", &self.star)
            .field("new_authz", &self.new_authz)
            .field("caa_identities", &self.caa_identities)
            .field("sti_pa_user", &self.sti_pa_user)
            .field("sti_pa_password", &"[REDACTED]")
            .finish()
    }
}

/// A request body whose JWS verified against the `jwk` in its own protected header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwkSignedRequest {
    /// The decoded payload; empty for POST-as-GET.
    pub payload: Vec<u8>,
    /// The key that signed it, as a public JWK.
    pub jwk: serde_json::Value,
    /// RFC 7638 thumbprint of the key, base64url.
    pub thumbprint: String,
    /// The `atc.fingerprint` the devca expects for this key, per algorithm:
    /// [`DevFingerprint::JwkThumbprint`], then [`DevFingerprint::SpkiSha256`].
    pub fingerprints: [String; 2],
}

/// Verifies a flattened JWS request body signed with the `jwk` its protected header carries
/// (ES256, public P-256 key), the way the devca verifies a `newAccount` request, without the
/// URL and nonce checks that need a running devca. Public so that fuzz targets can feed the
/// devca's request verification untrusted bodies; the error is the problem type and detail
/// the devca would answer with.
pub fn verify_jwk_request(body: &[u8]) -> Result<JwkSignedRequest, String> {
    let verified = jws::verify_jwk_signed(body).map_err(|p| format!("{}: {}", p.kind, p.detail))?;
    Ok(JwkSignedRequest {
        thumbprint: jws::thumbprint(&verified.jwk),
        fingerprints: [
            jws::fingerprint(&verified.jwk, DevFingerprint::JwkThumbprint),
            jws::fingerprint(&verified.jwk, DevFingerprint::SpkiSha256),
        ],
        payload: verified.payload,
        jwk: verified.jwk,
    })
}

/// Errors starting the embedded CA.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    /// Binding the listener or writing the state directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating keys or certificates failed.
    #[error("generating PKI: {0}")]
    Pki(String),
}

/// Starts embedded CAs.
#[derive(Debug)]
pub struct DevCa;

/// A running embedded CA; dropping it without [`DevCaHandle::shutdown`] leaves the server
/// running until the runtime stops.
pub struct DevCaHandle {
    inner: Arc<state::Inner>,
    server: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    trust_root_path: PathBuf,
}

impl DevCa {
    /// Generates the PKI, binds the listener and serves in a background task.
    pub async fn start(settings: DevCaSettings) -> Result<DevCaHandle, DevCaError> {
        crate::tls::init();
        let io = |what: String| move |source| DevCaError::Io { what, source };
        let listener = std::net::TcpListener::bind(SocketAddr::new(settings.listen, settings.port))
            .map_err(io(format!("binding {}:{}", settings.listen, settings.port)))?;
        listener
            .set_nonblocking(true)
            .map_err(io("setting the listener non-blocking".into()))?;
        let addr = listener
            .local_addr()
            .map_err(io("reading the bound address".into()))?;
        let base = Url::parse(&format!("https://{addr}"))
            .map_err(|e| DevCaError::Pki(format!("base URL: {e}")))?;
        let dir = match &settings.state_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("certbroker-devca-{}", state::random_id())),
        };
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let pki = pki::Pki::load_or_generate(&dir, &base, settings.listen, settings.profile)?;
        let trust_root_path = dir.join("tls-root.pem");
        std::fs::write(&trust_root_path, &pki.tls_root_pem)
            .map_err(io(format!("writing {}", trust_root_path.display())))?;
        let shaken_root_path = dir.join("shaken-root.pem");
        std::fs::write(&shaken_root_path, &pki.shaken_root_pem)
            .map_err(io(format!("writing {}", shaken_root_path.display())))?;

        let tls = axum_server::tls_rustls::RustlsConfig::from_der(
            vec![pki.tls_server_der.clone()],
            pki.tls_server_key_der.clone(),
        )
        .await
        .map_err(io("building the TLS config".into()))?;
        let inner = Arc::new(state::Inner {
            base,
            settings,
            pki,
            behaviour: Behaviour::default(),
            state: Mutex::new(state::AcmeState::default()),
            nonces: Mutex::new(state::Nonces::default()),
            access_tokens: Mutex::new(Default::default()),
        });
        let app = acme::router(inner.clone())
            .merge(stipa::router(inner.clone()))
            .merge(stats::router(inner.clone()));
        let server = axum_server::Handle::new();
        // TCP_NODELAY on every accepted connection: an answer written in more than one
        // piece (TLS records, HTTP/2 frames) must not wait for the client's delayed ACK,
        // which stalled an issuance by ~40 ms now and then.
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        let srv = axum_server::from_tcp(listener)
            .map_err(io("starting the server".into()))?
            .acceptor(acceptor)
            .handle(server.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = srv.serve(app.into_make_service()).await {
                tracing::error!(error = %e, "devca server stopped");
            }
        });
        tracing::info!(%addr, "devca listening");
        Ok(DevCaHandle {
            inner,
            server,
            task,
            trust_root_path,
        })
    }
}

impl DevCaHandle {
    /// The ACME directory URL, `https://ADDR/acme/directory`.
    pub fn directory_url(&self) -> Url {
        self.inner.url("/acme/directory")
    }

    /// The STI-PA API base URL, `https://ADDR` (the same server as the ACME API).
    pub fn sti_pa_url(&self) -> Url {
        self.inner.base.clone()
    }

    /// The counters endpoint, `https://ADDR/devca/stats` (JSON; see the README's devca
    /// section).
    pub fn stats_url(&self) -> Url {
        self.inner.url(stats::STATS_PATH)
    }

    /// The PEM file of the TLS trust root of the HTTPS endpoints.
    pub fn trust_root_path(&self) -> &Path {
        &self.trust_root_path
    }

    /// The PEM of the TLS trust root of the HTTPS endpoints.
    pub fn trust_root_pem(&self) -> String {
        self.inner.pki.tls_root_pem.clone()
    }

    /// The PEM of the SHAKEN root that issued the intermediate of every issued chain and
    /// the STI-PA token-signing certificate. It differs from the TLS root.
    pub fn issuing_root_pem(&self) -> String {
        self.inner.pki.shaken_root_pem.clone()
    }

    /// The port http-01 validation fetches from ([`DevCaSettings::http01_port`]).
    pub fn http01_port(&self) -> u16 {
        self.inner.settings.http01_port
    }

    /// The STI-PA user id and password.
    pub fn sti_pa_credentials(&self) -> (String, SecretString) {
        (
            self.inner.settings.sti_pa_user.clone(),
            self.inner.settings.sti_pa_password.clone(),
        )
    }

    /// Misbehaviour knobs, settable while the server runs.
    pub fn behaviour(&self) -> &Behaviour {
        &self.inner.behaviour
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.behaviour.stats()
    }

    /// Orders placed so far, counted per (account id, identifier): a TNAuthList identifier
    /// counts once for each SPC it names (as `spc:<SPC>`), any other as `<type>:<value>`.
    /// Tells, for instance, whether one broker replica (one account) ordered a certificate
    /// for an SPC more than once.
    pub fn orders_per_account_and_identifier(
        &self,
    ) -> std::collections::BTreeMap<(String, String), u64> {
        let state = self.inner.lock_state();
        let mut counts = std::collections::BTreeMap::new();
        for order in state.orders.values() {
            for identifier in &order.identifiers {
                let names: Vec<String> = match &identifier.tn_auth_list {
                    Some(list) => list.spcs().map(|spc| format!("spc:{spc}")).collect(),
                    None => vec![format!("{}:{}", identifier.kind, identifier.value)],
                };
                for name in names {
                    *counts.entry((order.account.clone(), name)).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Every STAR order, with its certificate and fetch counts.
    pub fn star_orders(&self) -> Vec<DevStarOrder> {
        stats::star_orders(&self.inner)
    }

    /// Whether the certificate with this serial (lowercase hex, no leading zero byte) was
    /// revoked through `revokeCert`.
    pub fn revoked(&self, serial_hex: &str) -> bool {
        self.inner.lock_state().is_revoked(serial_hex)
    }

    /// The CSRs finalize received (base64url-decoded DER), oldest first (the last 64): what the
    /// client really sent, for tests that check it with independent parsers.
    pub fn csrs(&self) -> Vec<Vec<u8>> {
        self.inner.lock_state().csrs.iter().cloned().collect()
    }

    /// Every new order that carried `replaces` (RFC 9773), in arrival order, with the
    /// devca's verdict.
    pub fn replacements(&self) -> Vec<Replacement> {
        self.inner.lock_state().replacements.clone()
    }

    /// The RFC 9773 identifier the devca gives the certificate with this serial (lowercase
    /// hex), computed independently of the ACME client.
    pub fn cert_id(&self, serial_hex: &str) -> Option<String> {
        self.with_cert(serial_hex, |c| c.cert_id.clone())
    }

    /// The renewal window `renewalInfo` suggests for the certificate with this serial, when
    /// ARI is on and the certificate is ours.
    pub fn renewal_window(
        &self,
        serial_hex: &str,
    ) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        let ari = self.inner.settings.renewal_info?;
        self.with_cert(serial_hex, |c| ari::window(c, &ari))
    }

    /// When the certificate with this serial was issued (its notBefore is backdated).
    pub fn issued_at(&self, serial_hex: &str) -> Option<time::OffsetDateTime> {
        self.with_cert(serial_hex, |c| c.issued_at)
    }

    fn with_cert<T>(&self, serial_hex: &str, f: impl FnOnce(&state::IssuedCert) -> T) -> Option<T> {
        let want = serial_hex.trim_start_matches('0').to_ascii_lowercase();
        self.inner
            .lock_state()
            .certs
            .values()
            .find(|c| c.serial_hex.trim_start_matches('0') == want)
            .map(f)
    }

    /// Stops the server, letting in-flight requests finish for up to a second.
    pub async fn shutdown(self) {
        self.server.graceful_shutdown(Some(Duration::from_secs(1)));
        let _ = self.task.await;
    }
}

impl std::fmt::Debug for DevCaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCaHandle")
            .field("base", &self.inner.base.as_str())
            .field("trust_root_path", &self.trust_root_path)
            .finish_non_exhaustive()
    }
}
