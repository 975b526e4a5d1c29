//! One typed configuration: a TOML file, overridden by `CERTBROKER_<SECTION>__<KEY>`
//! environment variables (for example `CERTBROKER_SERVER__LISTEN=0.0.0.0:50051`).
//!
//! Not every `CERTBROKER_*` variable is an override: a pod also carries the CLI's own
//! variables, the secrets the file names through `*_env` keys, and the kubelet's service
//! links for a Service called `certbroker`. [`classify_env`] sorts them; the rule is in the
//! README's configuration reference.
//!
//! Every key is documented in the README's configuration reference. Loading validates
//! everything up front and names the offending key, so a bad value stops start-up instead
//! of surfacing on the first request.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    num::{NonZeroU64, NonZeroUsize},
    path::PathBuf,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};
use url::Url;

mod ca;
mod challenge;
mod env;
mod preauth;
mod secs;
mod store;
mod validate;

pub use ca::{
    BreakerSettings, CaSettings, CsrSettings, EabSettings, PoolPolicy, PoolSettings, StarSettings,
    StiPaSettings,
};
use env::env_names_referenced_by;
pub use env::{CLI_ENV, ENV_PREFIX, EnvRole, classify_env};

pub use challenge::{FingerprintAlgorithm, ResponseField, TkAuthSettings};
pub use preauth::PreauthSettings;
pub(crate) use store::redact_url;
pub use store::{
    DEFAULT_PREFIX, DEFAULT_TIMEOUT_MS, DecodedKey, KEYRING_KEY_LEN, KeyringSettings,
    SentinelSettings, StoreBackend, StoreSettings,
};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The gRPC listener.
    #[serde(default)]
    pub server: ServerSettings,
    /// Where certificates are kept between requests and replicas.
    #[serde(default)]
    pub store: StoreSettings,
    /// Cache and issuance behaviour.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// Logging.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Proactive renewal.
    #[serde(default)]
    pub renewal: RenewalSettings,
    /// STI-CR publication of issued chains (the `x5u` URLs).
    #[serde(default)]
    pub publish: PublishSettings,
    /// Upstream STI-CAs, tried in `priority` order within a pool.
    #[serde(default)]
    pub ca: Vec<CaSettings>,
    /// How each named pool picks among its CAs; a pool not listed uses the defaults.
    #[serde(default)]
    pub pool: Vec<PoolSettings>,
    /// Who may ask for what; enforced when `server.tls.client_ca` is set.
    #[serde(default)]
    pub policy: Vec<PolicySettings>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address of the gRPC listener.
    pub listen: SocketAddr,
    /// How long in-flight requests may run after SIGTERM before the process exits
    /// (`shutdown_grace_secs`).
    #[serde(with = "secs", rename = "shutdown_grace_secs")]
    pub shutdown_grace: Duration,
    /// TLS (and, with `client_ca`, mutual TLS) on the gRPC listener; absent: plaintext.
    pub tls: Option<ServerTlsSettings>,
    /// Upper bound of one request on the server; answered with `DEADLINE_EXCEEDED`. Keep
    /// it above `broker.issuance_timeout_secs` so the broker's own deadline fires first
    /// (`request_timeout_secs`, at least 1).
    #[serde(
        serialize_with = "secs::serialize",
        deserialize_with = "secs::at_least::<1, _>",
        rename = "request_timeout_secs"
    )]
    pub request_timeout: Duration,
    /// Requests handled at once; beyond it requests are shed with `UNAVAILABLE`.
    pub max_concurrent_requests: NonZeroUsize,
    /// Sustained requests per second per caller (client identity, or IP without mTLS);
    /// beyond it `RESOURCE_EXHAUSTED`. 0 turns the limit off.
    pub rate_limit_per_sec: u32,
    /// Burst a caller may send above the sustained rate.
    pub rate_limit_burst: u32,
    /// Largest request message accepted, in bytes; larger ones get `OUT_OF_RANGE`.
    pub max_request_bytes: usize,
}

/// `[server.tls]`: PEM files, re-read every `reload_interval_secs` and swapped in for new
/// connections when they change (certificate rotation without restart).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Server certificate chain, leaf first.
    pub cert: PathBuf,
    /// Server private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
    /// CA bundle for client certificates. Set: every client must present a certificate
    /// from it (mutual TLS) and `[[policy]]` decides what it may request.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes (`reload_interval_secs`, at least 1).
    #[serde(
        default = "default_tls_reload",
        serialize_with = "secs::serialize",
        deserialize_with = "secs::at_least::<1, _>",
        rename = "reload_interval_secs"
    )]
    pub reload_interval: Duration,
}

/// One `[[policy]]`: what callers whose certificate matches `identities` may request.
/// A caller matching several policies may do what any of them allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Client certificate names (SAN DNS, SAN URI or subject CN): exact, or `*.suffix` for
    /// any name under `suffix`.
    pub identities: Vec<String>,
    /// SPCs the caller may put in a TNAuthList; `*` allows any.
    #[serde(default)]
    pub spcs: Vec<String>,
    /// Whether telephone numbers and number ranges may appear in a TNAuthList.
    #[serde(default)]
    pub telephone_numbers: bool,
    /// DNS names the caller may request: the suffix itself and names under it.
    #[serde(default)]
    pub dns_suffixes: Vec<String>,
    /// CA pools the caller may name; `*` allows any.
    #[serde(default = "default_pools")]
    pub pools: Vec<String>,
    /// Whether the caller may revoke certificates.
    #[serde(default)]
    pub revoke: bool,
    /// Whether the caller may request CA certificates (`ca_certificate`), which can sign
    /// delegate certificates for the SPCs it is allowed.
    #[serde(default)]
    pub ca_certificates: bool,
}

/// `[broker]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Most certificates kept in the in-process cache.
    pub cache_capacity: NonZeroU64,
    /// Validity a cached certificate must have left when the caller names none
    /// (`default_min_remaining_secs`).
    #[serde(with = "secs", rename = "default_min_remaining_secs")]
    pub default_min_remaining: Duration,
    /// Upper bound for one whole issuance, all CAs of the pool included
    /// (`issuance_timeout_secs`).
    #[serde(with = "secs", rename = "issuance_timeout_secs")]
    pub issuance_timeout: Duration,
    /// Lifetime of the fleet lock on one cache key; renewed while the holder works, so it
    /// bounds how long a crashed holder delays the others (`lock_ttl_secs`, at least 3).
    #[serde(
        serialize_with = "secs::serialize",
        deserialize_with = "secs::at_least::<3, _>",
        rename = "lock_ttl_secs"
    )]
    pub lock_ttl: Duration,
    /// How long a CA's refusal (non-retryable) is remembered fleet-wide for that key
    /// (`negative_ttl_secs`).
    #[serde(with = "secs", rename = "negative_ttl_secs")]
    pub negative_ttl: Duration,
}

/// `[renewal]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewalSettings {
    /// Renew certificates ahead of expiry.
    pub enabled: bool,
    /// How often tracked certificates are checked (`check_interval_secs`, at least 1).
    #[serde(
        serialize_with = "secs::serialize",
        deserialize_with = "secs::at_least::<1, _>",
        rename = "check_interval_secs"
    )]
    pub check_interval: Duration,
    /// Certificates nobody requested for this long, and no open watch holds, are no longer
    /// renewed (`idle_horizon_secs`).
    #[serde(with = "secs", rename = "idle_horizon_secs")]
    pub idle_horizon: Duration,
    /// Renew when this fraction of the lifetime is left.
    pub renew_fraction: f64,
    /// First retry delay after a failed renewal (doubles per failure, with jitter)
    /// (`retry_base_secs`).
    #[serde(with = "secs", rename = "retry_base_secs")]
    pub retry_base: Duration,
    /// Renew inside the window the issuing CA suggests through ACME Renewal Information
    /// (RFC 9773) when its directory offers `renewalInfo`, and name the replaced certificate
    /// in the new order (`replaces`). Off: always the `renew_fraction` rule, no `replaces`.
    pub ari: bool,
}

impl Default for RenewalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval: Duration::from_secs(5),
            idle_horizon: Duration::from_secs(24 * 3600),
            renew_fraction: 1.0 / 3.0,
            retry_base: Duration::from_secs(10),
            ari: true,
        }
    }
}

/// `[publish]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSettings {
    /// Public base URL of the STI-CR, e.g. `https://cr.example.net/sti/`; responses carry
    /// `x5u = base_url + <sha256 fingerprint>.pem`. Unset: no publication.
    pub base_url: Option<Url>,
    /// Where this replica serves the chains (plain HTTP; put TLS and a CDN in front).
    pub listen: Option<SocketAddr>,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `tracing` filter directives, e.g. `info,certbroker=debug`. `RUST_LOG` wins if set.
    pub log_filter: String,
    /// Log lines as JSON objects instead of text.
    pub json: bool,
    /// HTTP admin listener serving `/metrics` (Prometheus text), `/healthz` and `/readyz`;
    /// absent: none.
    pub admin_listen: Option<SocketAddr>,
    /// OTLP/gRPC collector (e.g. `http://otel-collector:4317`) receiving tracing spans;
    /// absent: no export unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, which also win over this.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported spans; `OTEL_SERVICE_NAME` (or
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) wins.
    pub service_name: String,
    /// Time between the audit trail's summary lines: the first hand-out of a serial to
    /// a caller is logged at once, repeats are counted and written once per interval
    /// (`audit_interval_secs`, at least 1).
    #[serde(
        serialize_with = "secs::serialize",
        deserialize_with = "secs::at_least::<1, _>",
        rename = "audit_interval_secs"
    )]
    pub audit_interval: Duration,
}

/// A configuration that cannot be used, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable did not parse; figment names the key.
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parsed but is not usable.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// Why.
        reason: String,
    },
}

// === impl Settings ===

impl Settings {
    /// Loads `file` (if given) and the `CERTBROKER_*` environment, then validates.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    reason: format!("{} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file(file));
        }
        let referenced = file.map(env_names_referenced_by).unwrap_or_default();
        let mut overrides = BTreeSet::new();
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            match classify_env(name, &referenced) {
                EnvRole::Override => {
                    overrides.insert(name[ENV_PREFIX.len()..].to_ascii_lowercase());
                }
                EnvRole::Misspelt => {
                    return Err(ConfigError::Invalid {
                        key: name.to_owned(),
                        reason: format!(
                            "looks like a configuration override, but sections and keys are \
                             separated by `__` (e.g. {ENV_PREFIX}SERVER__LISTEN)"
                        ),
                    });
                }
                EnvRole::NotOurs | EnvRole::NotConfig => {}
            }
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(move |k| overrides.contains(&k.as_str().to_ascii_lowercase()))
                .split("__"),
        );
        Self::from_figment(figment)
    }

    /// Extracts and validates settings from any figment (used by tests with inline TOML).
    /// A relative path read from a file resolves against that file's directory, as in
    /// nginx or systemd units, so a configuration works from any working directory.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut settings: Self = figment.extract().map_err(parse_error)?;
        settings.resolve_relative_paths(&figment);
        settings.validate()?;
        Ok(settings)
    }

    /// Every path-typed setting whose value came from a file and is relative becomes
    /// `<that file's directory>/<path>`. Values from the environment or code stay as
    /// they are (relative to the working directory).
    fn resolve_relative_paths(&mut self, figment: &Figment) {
        use figment::value::Value;
        let file_dir = |value: Option<&Value>| -> Option<PathBuf> {
            let meta = figment.get_metadata(value?.tag())?;
            match meta.source.as_ref()? {
                figment::Source::File(file) => file.parent().map(std::path::Path::to_path_buf),
                _ => None,
            }
        };
        let fix = |path: &mut PathBuf, value: Option<&Value>| {
            if path.is_relative() {
                if let Some(dir) = file_dir(value) {
                    *path = dir.join(&*path);
                }
            }
        };
        if let (Some(tls), Ok(value)) = (self.server.tls.as_mut(), figment.find_value("server.tls"))
        {
            fix(&mut tls.cert, value.find_ref("cert"));
            fix(&mut tls.key, value.find_ref("key"));
            if let Some(p) = tls.client_ca.as_mut() {
                fix(p, value.find_ref("client_ca"));
            }
        }
        if let (Some(p), Ok(value)) = (
            self.store.trust_roots.as_mut(),
            figment.find_value("store.trust_roots"),
        ) {
            fix(p, Some(&value));
        }
        let cas = match figment.find_value("ca") {
            Ok(Value::Array(_, cas)) => cas,
            _ => Vec::new(),
        };
        for (ca, value) in self.ca.iter_mut().zip(&cas) {
            fix(&mut ca.account_key, value.find_ref("account_key"));
            if let Some(p) = ca.trust_roots.as_mut() {
                fix(p, value.find_ref("trust_roots"));
            }
            if let Some(p) = ca.token_file.as_mut() {
                fix(p, value.find_ref("token_file"));
            }
            if let Some(p) = ca.sti_pa.as_mut().and_then(|s| s.trust_roots.as_mut()) {
                fix(p, value.find_ref("sti_pa.trust_roots"));
            }
        }
    }

    /// Parses TOML text with no environment overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Self::default())).merge(Toml::string(text)),
        )
    }
}

/// A value figment could not deserialize (a range the type enforces, such as a `*_secs`
/// key's minimum or a count that must not be zero, or a wrong type) is reported like the
/// checks in `validate`: the key as the file spells it (`ca[0].weight`), then why and
/// where figment found it. Errors without a key (a TOML syntax error) stay figment's.
fn parse_error(err: figment::Error) -> ConfigError {
    if err.path.is_empty() {
        return ConfigError::Parse(Box::new(err));
    }
    let mut key = String::new();
    for segment in &err.path {
        if !key.is_empty() && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    let mut reason = err.kind.to_string();
    if let Some(md) = &err.metadata {
        match &md.source {
            Some(source) => reason.push_str(&format!(" in {source} {}", md.name)),
            None => reason.push_str(&format!(" in {}", md.name)),
        }
    }
    for more in err.into_iter().skip(1) {
        reason.push_str(&format!("\n{more}"));
    }
    ConfigError::Invalid { key, reason }
}

// === defaults ===

/// Default `server.max_concurrent_requests`.
const DEFAULT_MAX_CONCURRENT_REQUESTS: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => panic!("1024 is not zero"),
};

/// Default `broker.cache_capacity`.
const DEFAULT_CACHE_CAPACITY: NonZeroU64 = match NonZeroU64::new(100_000) {
    Some(n) => n,
    None => panic!("100000 is not zero"),
};

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            request_timeout: Duration::from_secs(330),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            rate_limit_per_sec: 100,
            rate_limit_burst: 200,
            max_request_bytes: 64 * 1024,
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            default_min_remaining: Duration::from_secs(300),
            issuance_timeout: Duration::from_secs(300),
            lock_ttl: Duration::from_secs(15),
            negative_ttl: Duration::from_secs(30),
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_filter: "info".into(),
            json: false,
            admin_listen: None,
            otlp_endpoint: None,
            service_name: "certbroker".into(),
            audit_interval: Duration::from_secs(60),
        }
    }
}

fn default_pools() -> Vec<String> {
    vec!["default".into()]
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads() {
        let text = include_str!("../deploy/config/example.toml");
        let s = Settings::from_toml(text).unwrap();
        assert_eq!(s.ca.len(), 2);
        assert_eq!(s.ca[1].priority, 10);
        assert_eq!(s.server.listen.port(), 50051);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"not an address\"", "server.listen"),
            ("[server]\nlisten_typo = \"1.2.3.4:5\"", "listen_typo"),
            ("[store]\nbackend = \"redis\"", "store.url"),
            (
                "[store]\nbackend = \"redis\"\nurl = \"redis://x\"",
                "store.keyring",
            ),
            (
                "[store]\nbackend = \"redis-cluster\"",
                "store.cluster_nodes",
            ),
            (
                "[store]\nbackend = \"redis\"\nurl = \"redis://x\"\n[store.keyring]\nactive = \"k1\"\n[store.keyring.keys]\nk1 = \"c2hvcnQ=\"",
                "store.keyring",
            ),
            ("[store]\nbackend = \"etcd\"", "store.backend"),
            ("[broker]\ncache_capacity = 0", "broker.cache_capacity"),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"ftp://x\"\naccount_key = \"k\"",
                "ca[0].directory",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[[ca]]\nname = \"a\"\ndirectory = \"https://y\"\naccount_key = \"k2\"",
                "ca[1].name",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[ca.challenge]\nresponse_field = \"body\"",
                "response_field",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\nweight = 0",
                "ca[0].weight",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[ca.breaker]\nfailure_threshold = 0",
                "ca[0].breaker.failure_threshold",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[ca.star]\nlifetime_secs = 0\nduration_secs = 60",
                "ca[0].star.lifetime_secs",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[ca.star]\nlifetime_secs = 60\nduration_secs = 59",
                "ca[0].star.duration_secs",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[ca.star]\nlifetime_secs = 60",
                "duration_secs",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[[pool]]\nname = \"other\"",
                "pool[0].name",
            ),
            (
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[[pool]]\nname = \"default\"\npolicy = \"random\"",
                "policy",
            ),
        ];
        for (text, key) in cases {
            let err = Settings::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn readme_multi_ca_example_loads() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## Multi-CA").expect("Multi-CA section")..];
        let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("block end")];
        let s = Settings::from_toml(text).unwrap();
        assert_eq!(s.ca.len(), 3);
        assert_eq!(s.pool[0].policy, PoolPolicy::Weighted);
        assert_eq!(s.pool[0].hedge_after_ms, Some(20_000));
        assert_eq!((s.ca[0].weight.get(), s.ca[1].weight.get()), (3, 1));
        assert!(s.ca[1].allow_account_key_reuse && !s.ca[0].allow_account_key_reuse);
        assert_eq!(s.ca[2].cert_lifetime, Some(Duration::from_secs(2_592_000)));
        assert_eq!(s.ca[2].breaker.failure_threshold.get(), 3, "default");
        assert_eq!(s.ca[2].csr.common_name_template, "SHAKEN {spc}", "default");
    }

    #[test]
    fn csr_serial_number_template_and_country_are_checked() {
        let ca = |csr: &str| {
            format!(
                "[[ca]]\nname = \"a\"\ndirectory = \"https://ca.example/dir\"\n\
                 account_key = \"k.pem\"\n[ca.csr]\n{csr}"
            )
        };
        let s = Settings::from_toml(&ca("")).unwrap();
        let sn = s.ca[0].csr.serial_number("1234").unwrap();
        assert!(sn.len() == 21 && sn.starts_with("1234-"), "{sn}");
        assert_ne!(
            s.ca[0].csr.serial_number("1234").unwrap(),
            sn,
            "random per CSR"
        );
        let none = Settings::from_toml(&ca("serial_number_template = \"\"")).unwrap();
        assert_eq!(none.ca[0].csr.serial_number("1234"), None);
        let tn = Settings::from_toml(&ca("serial_number_template = \"{spc}\"")).unwrap();
        assert_eq!(
            tn.ca[0].csr.serial_number("tn:12#4").as_deref(),
            Some("tn:124")
        );
        for bad in [
            "serial_number_template = \"{spc}_{random}\"",
            "serial_number_template = \"{spc}-{serial}\"",
            &format!("serial_number_template = \"{}{{random}}\"", "x".repeat(49)),
            "country = \"usa\"",
        ] {
            let err = Settings::from_toml(&ca(bad)).unwrap_err().to_string();
            let key = if bad.starts_with("country") {
                "ca[0].csr.country"
            } else {
                "ca[0].csr.serial_number_template"
            };
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn server_and_policy_errors_name_the_key() {
        let tls = "[server.tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n";
        let cases = [
            (
                "[server]\nrequest_timeout_secs = 0".to_owned(),
                "server.request_timeout_secs",
            ),
            (
                "[server]\nmax_concurrent_requests = 0".into(),
                "server.max_concurrent_requests",
            ),
            (
                "[telemetry]\naudit_interval_secs = 0".into(),
                "telemetry.audit_interval_secs",
            ),
            (
                "[server]\nrate_limit_burst = 0".into(),
                "server.rate_limit_burst",
            ),
            (
                "[server]\nmax_request_bytes = 10".into(),
                "server.max_request_bytes",
            ),
            (
                "[[policy]]\nidentities = [\"a\"]".into(),
                "server.tls.client_ca",
            ),
            (
                "[server.tls]\ncert = \"c\"\nkey = \"k\"\n[[policy]]\nidentities = [\"a\"]".into(),
                "server.tls.client_ca",
            ),
            (
                format!("{tls}[[policy]]\nidentities = []"),
                "policy[0].identities",
            ),
            (
                format!("{tls}[[policy]]\nidentities = [\"a.*.b\"]"),
                "policy[0].identities",
            ),
            (
                format!("{tls}[[policy]]\nidentities = [\"*.\"]"),
                "policy[0].identities",
            ),
            (
                format!("{tls}[[policy]]\nidentities = [\"a\"]\ndns_suffixes = [\"*.x\"]"),
                "policy[0].dns_suffixes",
            ),
            (
                format!("{tls}[[policy]]\nidentities = [\"a\"]\nrevoke = \"yes\""),
                "revoke",
            ),
        ];
        for (text, key) in cases {
            let err = Settings::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let ok = Settings::from_toml(&format!(
            "{tls}[[policy]]\nidentities = [\"*.signers.example\", \"ops\"]\nspcs = [\"1234\"]\nrevoke = true"
        ))
        .unwrap();
        assert_eq!(ok.policy[0].pools, ["default"]);
        assert!(ok.policy[0].revoke);
        assert_eq!(
            ok.server.tls.unwrap().reload_interval,
            Duration::from_secs(10)
        );
    }

    /// Durations and counts are checked by their types while parsing; the error still
    /// names the key (as the file spells it) and says why.
    #[test]
    fn typed_values_name_the_key_and_the_reason() {
        let ca = "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n";
        let cases = [
            (
                "[broker]\nlock_ttl_secs = 2".to_owned(),
                "broker.lock_ttl_secs",
                "at least 3",
            ),
            (
                "[broker]\ncache_capacity = 0".into(),
                "broker.cache_capacity",
                "nonzero",
            ),
            (
                "[renewal]\ncheck_interval_secs = 0".into(),
                "renewal.check_interval_secs",
                "at least 1",
            ),
            (
                "[server]\nrequest_timeout_secs = 0".into(),
                "server.request_timeout_secs",
                "at least 1",
            ),
            (
                "[server]\nmax_concurrent_requests = 0".into(),
                "server.max_concurrent_requests",
                "nonzero",
            ),
            (
                "[telemetry]\naudit_interval_secs = 0".into(),
                "telemetry.audit_interval_secs",
                "at least 1",
            ),
            (
                "[server.tls]\ncert = \"c\"\nkey = \"k\"\nreload_interval_secs = 0".into(),
                "server.tls.reload_interval_secs",
                "at least 1",
            ),
            (
                format!("{ca}request_timeout_secs = 0"),
                "request_timeout_secs",
                "at least 1",
            ),
            (
                format!("{ca}attempt_timeout_secs = 0"),
                "attempt_timeout_secs",
                "at least 1",
            ),
            (
                format!("{ca}cert_lifetime_secs = 0"),
                "cert_lifetime_secs",
                "at least 1",
            ),
            (format!("{ca}weight = 0"), "weight", "nonzero"),
            (
                format!("{ca}[ca.breaker]\nfailure_threshold = 0"),
                "breaker.failure_threshold",
                "nonzero",
            ),
            (
                "[broker]\nlock_ttl_secs = 1.5".into(),
                "broker.lock_ttl_secs",
                "invalid type",
            ),
        ];
        for (text, key, reason) in cases {
            let err = Settings::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(reason), "{text:?}: {err}");
        }
        let s = Settings::from_toml(&format!(
            "[broker]\nlock_ttl_secs = 3\nnegative_ttl_secs = 0\n[server]\nshutdown_grace_secs = 0\n\
             {ca}cert_lifetime_secs = 86400\n[ca.breaker]\ncool_down_secs = 0"
        ))
        .unwrap();
        assert_eq!(s.broker.lock_ttl, Duration::from_secs(3));
        assert_eq!(
            s.broker.negative_ttl,
            Duration::ZERO,
            "zero is allowed here"
        );
        assert_eq!(s.server.shutdown_grace, Duration::ZERO);
        assert_eq!(s.ca[0].cert_lifetime, Some(Duration::from_secs(86_400)));
        assert_eq!(s.ca[0].request_timeout, Duration::from_secs(30), "default");
        assert_eq!(s.ca[0].breaker.cool_down, Duration::ZERO);
        let d = Settings::default();
        assert_eq!(
            (
                d.server.request_timeout,
                d.broker.lock_ttl,
                d.renewal.check_interval
            ),
            (
                Duration::from_secs(330),
                Duration::from_secs(15),
                Duration::from_secs(5)
            )
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let s = Settings::from_toml(
            "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n[ca.sti_pa]\nbase_url = \"https://pa\"\nuser_id = \"u\"\npassword = \"hunter2\"",
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod env_tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nlisten = \"127.0.0.1:1\"\n")?;
            jail.set_env("CERTBROKER_SERVER__LISTEN", "127.0.0.1:2");
            jail.set_env("CERTBROKER_BROKER__CACHE_CAPACITY", "7");
            let s =
                Settings::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.server.listen.port(), 2);
            assert_eq!(s.broker.cache_capacity.get(), 7);
            jail.set_env("CERTBROKER_SERVER__LISTEN", "nonsense");
            let err = Settings::load(Some(std::path::Path::new("c.toml"))).unwrap_err();
            assert!(
                err.to_string().to_lowercase().contains("server.listen"),
                "{err}"
            );
            Ok(())
        });
    }

    /// A pod's environment: the CLI's own variables, the Secret the file names through
    /// `password_env`, and the kubelet's service links for a Service `certbroker` (and one
    /// `certbroker-store`, whose links begin with a top-level key) are no overrides.
    #[test]
    fn a_pods_environment_is_not_taken_for_overrides() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[[ca]]\nname = \"a\"\ndirectory = \"https://x\"\naccount_key = \"k\"\n\
                 [ca.sti_pa]\nbase_url = \"https://pa\"\nuser_id = \"u\"\n\
                 password_env = \"CERTBROKER_STI_PA_PASSWORD\"\n\
                 [ca.eab]\nkey_id = \"kid\"\nhmac_key_env = \"CERTBROKER_EAB\"\n",
            )?;
            for (k, v) in [
                ("CERTBROKER_STI_PA_PASSWORD", "secret"),
                ("CERTBROKER_EAB", "hmac"),
                ("CERTBROKER_CONFIG", "c.toml"),
                ("CERTBROKER_ADDR", "http://127.0.0.1:1"),
                ("CERTBROKER_CA_CERT", "/ca.pem"),
                ("CERTBROKER_SERVICE_HOST", "10.0.0.7"),
                ("CERTBROKER_SERVICE_PORT", "50051"),
                ("CERTBROKER_SERVICE_PORT_GRPC", "50051"),
                ("CERTBROKER_PORT", "tcp://10.0.0.7:50051"),
                ("CERTBROKER_PORT_50051_TCP", "tcp://10.0.0.7:50051"),
                ("CERTBROKER_PORT_50051_TCP_PROTO", "tcp"),
                ("CERTBROKER_PORT_50051_TCP_PORT", "50051"),
                ("CERTBROKER_PORT_50051_TCP_ADDR", "10.0.0.7"),
                ("CERTBROKER_STORE_SERVICE_HOST", "10.0.0.8"),
                ("CERTBROKER_STORE_PORT_6379_TCP_ADDR", "10.0.0.8"),
                ("CERTBROKER_REDIS_SERVICE_PORT_REDIS", "6379"),
                ("CERTBROKER_SOMETHING_ELSE", "x"),
                ("CERTBROKER_BROKER__CACHE_CAPACITY", "7"),
            ] {
                jail.set_env(k, v);
            }
            let s =
                Settings::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                s.broker.cache_capacity.get(),
                7,
                "the real override still applies"
            );
            Ok(())
        });
    }

    #[test]
    fn misspelt_overrides_still_stop_start_up() {
        for (name, expect) in [
            ("CERTBROKER_SERVR__LISTEN", "servr"),
            ("CERTBROKER_SERVER__LISTN", "listn"),
            ("CERTBROKER_SERVER_LISTEN", "separated by `__`"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file("c.toml", "")?;
                jail.set_env(name, "127.0.0.1:1");
                let err = Settings::load(Some(std::path::Path::new("c.toml")))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(expect), "{name}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn classification_of_names() {
        let referenced: BTreeSet<String> = ["CERTBROKER_PA".to_owned()].into();
        for (name, role) in [
            ("PATH", EnvRole::NotOurs),
            ("CERTBROKE", EnvRole::NotOurs),
            ("CERTBROKER_PA", EnvRole::NotConfig),
            ("CERTBROKER_CONFIG", EnvRole::NotConfig),
            ("CERTBROKER_CLIENT_KEY", EnvRole::NotConfig),
            ("CERTBROKER_PORT_50051_TCP", EnvRole::NotConfig),
            ("CERTBROKER_PORT_9090_UDP_ADDR", EnvRole::NotConfig),
            ("CERTBROKER_SERVER_SERVICE_PORT_ADMIN", EnvRole::NotConfig),
            ("CERTBROKER_PORT_50051_TCP_OTHER", EnvRole::NotConfig),
            ("CERTBROKER_SERVER__LISTEN", EnvRole::Override),
            ("certbroker_server__listen", EnvRole::Override),
            ("CERTBROKER_STORE__KEYRING__KEYS__K1", EnvRole::Override),
            ("CERTBROKER_RENEWAL", EnvRole::Override),
            ("CERTBROKER_RENEWAL_ARI", EnvRole::Misspelt),
            ("CERTBROKER_CA_DIRECTORY", EnvRole::Misspelt),
            ("CERTBROKER_STORE_PORT_6379_TCPX", EnvRole::Misspelt),
        ] {
            assert_eq!(classify_env(name, &referenced), role, "{name}");
        }
    }

    #[test]
    fn redis_sentinel_and_trust_roots_settings() {
        let keyring = "[store.keyring]\nactive = \"k1\"\n[store.keyring.keys]\nk1 = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n";
        let sentinel = "sentinel = { master_name = \"m\", nodes = [\"redis://s1:26379\"], username = \"u\", password = \"hunter2\" }";
        let s = Settings::from_toml(&format!(
            "[store]\nbackend = \"redis\"\n{sentinel}\n{keyring}"
        ))
        .expect("sentinel instead of url");
        let redis = crate::store::RedisSettings::from(&s.store);
        assert_eq!(redis.url, None);
        let got = redis.sentinel.as_ref().expect("sentinel");
        assert_eq!((got.master_name.as_str(), got.nodes.len()), ("m", 1));
        assert!(!format!("{redis:?}").contains("hunter2"), "{redis:?}");
        let err = Settings::from_toml(&format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://x\"\n{sentinel}\n{keyring}"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("store.sentinel"), "{err}");

        figment::Jail::expect_with(|jail| {
            jail.create_dir("conf")?;
            jail.create_file(
                "conf/c.toml",
                &format!("[store]\nbackend = \"redis\"\nurl = \"rediss://r:6380\"\ntrust_roots = \"redis-ca.pem\"\n{keyring}"),
            )?;
            let s = Settings::load(Some(std::path::Path::new("conf/c.toml")))
                .map_err(|e| e.to_string())?;
            assert_eq!(
                crate::store::RedisSettings::from(&s.store).trust_roots,
                Some(jail.directory().join("conf").join("redis-ca.pem"))
            );
            Ok(())
        });
    }

    /// `CERTBROKER_..._SECS` overrides keep their names and are checked like the file.
    #[test]
    fn seconds_overrides_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[broker]\nlock_ttl_secs = 20\n")?;
            jail.set_env("CERTBROKER_BROKER__LOCK_TTL_SECS", "7");
            jail.set_env("CERTBROKER_SERVER__REQUEST_TIMEOUT_SECS", "45");
            jail.set_env("CERTBROKER_BROKER__CACHE_CAPACITY", "9");
            let s =
                Settings::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.broker.lock_ttl, Duration::from_secs(7));
            assert_eq!(s.server.request_timeout, Duration::from_secs(45));
            assert_eq!(s.broker.cache_capacity.get(), 9);
            jail.set_env("CERTBROKER_BROKER__LOCK_TTL_SECS", "2");
            let err = Settings::load(Some(std::path::Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("lock_ttl_secs") && err.contains("at least 3"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn renewal_information_is_on_unless_turned_off() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[renewal]\ncheck_interval_secs = 2\n")?;
            let s =
                Settings::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert!(s.renewal.ari);
            jail.set_env("CERTBROKER_RENEWAL__ARI", "false");
            let s =
                Settings::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert!(!s.renewal.ari);
            Ok(())
        });
    }

    #[test]
    fn relative_paths_in_a_file_resolve_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            r#"
            [server.tls]
            cert = "tls/server.pem"
            key = "/etc/certbroker/server.key"
            [[ca]]
            name = "a"
            directory = "https://ca.example/dir"
            account_key = "keys/a.pem"
            trust_roots = "roots.pem"
            [ca.sti_pa]
            base_url = "https://pa.example/"
            user_id = "u"
            password_env = "PW"
            trust_roots = "pa-roots.pem"
            "#,
        )
        .unwrap();
        let s = Settings::load(Some(&file)).unwrap();
        let tls = s.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert, dir.path().join("tls/server.pem"));
        assert_eq!(
            tls.key,
            PathBuf::from("/etc/certbroker/server.key"),
            "absolute kept"
        );
        assert_eq!(s.ca[0].account_key, dir.path().join("keys/a.pem"));
        assert_eq!(s.ca[0].trust_roots, Some(dir.path().join("roots.pem")));
        let pa = s.ca[0].sti_pa.as_ref().unwrap();
        assert_eq!(pa.trust_roots, Some(dir.path().join("pa-roots.pem")));
        // Inline TOML has no file: paths stay as written.
        let inline = Settings::from_toml(
            "[[ca]]\nname = \"a\"\ndirectory = \"https://ca.example/d\"\naccount_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(inline.ca[0].account_key, PathBuf::from("k.pem"));
    }
}
