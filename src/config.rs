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

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

mod preauth;

pub use preauth::PreauthSettings;

use crate::{
    challenge::TkAuthSettings,
    store::{Keyring, KeyringSettings, RedisSettings},
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
    /// How long in-flight requests may run after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
    /// TLS (and, with `client_ca`, mutual TLS) on the gRPC listener; absent: plaintext.
    pub tls: Option<ServerTlsSettings>,
    /// Upper bound of one request on the server; answered with `DEADLINE_EXCEEDED`. Keep
    /// it above `broker.issuance_timeout_secs` so the broker's own deadline fires first.
    pub request_timeout_secs: u64,
    /// Requests handled at once; beyond it requests are shed with `UNAVAILABLE`.
    pub max_concurrent_requests: usize,
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
    /// How often the files are checked for changes.
    #[serde(default = "default_tls_reload")]
    pub reload_interval_secs: u64,
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

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `memory` (one process), `redis` (standalone) or `redis-cluster` (a fleet).
    pub backend: StoreBackend,
    /// Redis URL for `backend = "redis"`: `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS.
    pub url: Option<String>,
    /// Seed nodes (`redis://host:port`) for `backend = "redis-cluster"`.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel for `backend = "redis"` instead of `url`: `{ master_name, nodes =
    /// ["redis://sentinel:26379", ...], username, password }` (the last two for the master;
    /// `rediss://` nodes mean TLS everywhere, trusting `trust_roots` when set).
    pub sentinel: Option<crate::store::SentinelSettings>,
    /// PEM file of the CA certificates that sign the Redis servers' TLS certificates
    /// (`rediss://` URLs), replacing the system roots; relative to the config file.
    /// Default: unset (the system roots).
    pub trust_roots: Option<PathBuf>,
    /// Prefix of every Redis key and channel; no `{` or `}`.
    pub prefix: String,
    /// Bound on connecting and on each Redis command, in milliseconds.
    pub timeout_ms: u64,
    /// AES-256-GCM keys that encrypt private keys at rest; required with Redis.
    pub keyring: Option<KeyringSettings>,
}

/// Which store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreBackend {
    /// In-process only.
    #[default]
    Memory,
    /// Shared standalone Redis (or Sentinel-fronted).
    Redis,
    /// Shared Redis Cluster.
    RedisCluster,
}

/// `[broker]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Most certificates kept in the in-process cache.
    pub cache_capacity: u64,
    /// Validity a cached certificate must have left when the caller names none.
    pub default_min_remaining_secs: u64,
    /// Upper bound for one whole issuance, all CAs of the pool included.
    pub issuance_timeout_secs: u64,
    /// Lifetime of the fleet lock on one cache key; renewed while the holder works, so it
    /// bounds how long a crashed holder delays the others.
    pub lock_ttl_secs: u64,
    /// How long a CA's refusal (non-retryable) is remembered fleet-wide for that key.
    pub negative_ttl_secs: u64,
}

/// `[renewal]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewalSettings {
    /// Renew certificates ahead of expiry.
    pub enabled: bool,
    /// How often tracked certificates are checked.
    pub check_interval_secs: u64,
    /// Certificates nobody requested for this long, and no open watch holds, are no longer
    /// renewed.
    pub idle_horizon_secs: u64,
    /// Renew when this fraction of the lifetime is left.
    pub renew_fraction: f64,
    /// First retry delay after a failed renewal (doubles per failure, with jitter).
    pub retry_base_secs: u64,
    /// Renew inside the window the issuing CA suggests through ACME Renewal Information
    /// (RFC 9773) when its directory offers `renewalInfo`, and name the replaced certificate
    /// in the new order (`replaces`). Off: always the `renew_fraction` rule, no `replaces`.
    pub ari: bool,
}

impl Default for RenewalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval_secs: 5,
            idle_horizon_secs: 24 * 3600,
            renew_fraction: 1.0 / 3.0,
            retry_base_secs: 10,
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

impl BrokerSettings {
    /// The broker's tunables these settings describe.
    pub fn options(&self) -> crate::broker::BrokerOptions {
        crate::broker::BrokerOptions {
            cache_capacity: self.cache_capacity,
            default_min_remaining: std::time::Duration::from_secs(self.default_min_remaining_secs),
            issuance_timeout: std::time::Duration::from_secs(self.issuance_timeout_secs),
            lock_ttl: std::time::Duration::from_secs(self.lock_ttl_secs),
            negative_ttl: std::time::Duration::from_secs(self.negative_ttl_secs),
        }
    }
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
    /// Seconds between the audit trail's summary lines: the first hand-out of a serial to
    /// a caller is logged at once, repeats are counted and written once per interval.
    pub audit_interval_secs: u64,
}

/// One `[[ca]]` upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaSettings {
    /// Unique name; reported as `issuer_ca`.
    pub name: String,
    /// ACME directory URL.
    pub directory: Url,
    /// PEM bundle trusted for the CA's HTTPS (and the STI-PA's, unless it names its own);
    /// absent: the system's roots.
    #[serde(default)]
    pub trust_roots: Option<PathBuf>,
    /// Pools this CA serves; a request names one (`ca_pool`), empty means `default`.
    #[serde(default = "default_pools")]
    pub pools: Vec<String>,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
    /// PKCS#8 PEM of the ACME account key; created (0600) on first use if absent, and
    /// re-read by a running broker when the file changes (`certbroker account rollover`
    /// replaces it).
    pub account_key: PathBuf,
    /// Account contact URLs (`mailto:`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// External account binding, when the CA requires it.
    #[serde(default)]
    pub eab: Option<EabSettings>,
    /// Timeout of one HTTP request to the CA.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Timeout of one whole order at this CA (per-attempt deadline before failover).
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_secs: u64,
    /// Subject fields of the CSRs the broker makes.
    #[serde(default)]
    pub csr: CsrSettings,
    /// tkauth-01 dialect of this CA.
    #[serde(default)]
    pub challenge: TkAuthSettings,
    /// Where SPC tokens come from: the STI-PA API ...
    #[serde(default)]
    pub sti_pa: Option<StiPaSettings>,
    /// ... or a file holding a token obtained out of band.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// For `dns` identifiers: where to serve http-01 key authorizations (the CA must reach
    /// it on port 80 of the names, usually through a load balancer). Absent: the broker
    /// answers http-01 without serving anything, for CAs that validate out of band.
    #[serde(default)]
    pub http01_listen: Option<SocketAddr>,
    /// Share of requests among CAs of equal priority in a `weighted` pool (at least 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// When to stop sending requests to this CA after failures.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// The CA accepts (Peeringhub: demands) a certificate key equal to the ACME account key.
    /// When set, certificates the broker makes keys for use the account key, and that key
    /// is what the caller receives. Default false: a fresh P-256 key per certificate, as
    /// Boulder-style CAs require.
    #[serde(default)]
    pub allow_account_key_reuse: bool,
    /// Agree to the CA's terms of service (the directory's `meta.termsOfService`) when the
    /// broker creates its account there. Default false: a CA that has terms refuses to open
    /// an account until they are agreed to here, as `certbot --agree-tos` and
    /// `lego --accept-tos` ask.
    #[serde(default)]
    pub accept_terms_of_service: bool,
    /// Certificate lifetime to ask for, sent as `notAfter` in newOrder
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)). Absent: the
    /// CA's default; leave it absent for CAs that reject `notAfter`.
    #[serde(default)]
    pub cert_lifetime_secs: Option<u64>,
    /// Treat a certificate with profile findings (not DER, or off the SHAKEN profile; see
    /// [`crate::shaken::profile_findings`]) as this CA's failure: the pool fails over to the
    /// next CA, and the finding is in the error the caller sees if none succeeds. Default
    /// false: such a certificate is handed out (a signer without one cannot sign at all),
    /// logged at warn and counted in `certbroker_ca_profile_findings_total`.
    #[serde(default)]
    pub strict_profile: bool,
    /// Pre-authorization (`newAuthz`) of SPCs at this CA.
    #[serde(default)]
    pub preauthorization: PreauthSettings,
}

/// `[ca.breaker]`: the per-CA circuit breaker and `Retry-After` handling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive retryable failures (network, timeout, 5xx, rateLimited) that open the
    /// breaker; while open the CA is skipped.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe request is let through.
    pub cool_down_secs: u64,
    /// Upper bound on a CA's `Retry-After`, so a bogus header cannot park a CA for days.
    pub max_retry_after_secs: u64,
}

/// `[[pool]]`: how one named pool picks among its CAs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Pool name, as the CAs' `pools` and the request's `ca_pool` say.
    pub name: String,
    /// Order in which CAs are tried.
    #[serde(default)]
    pub policy: PoolPolicy,
    /// Hedging: when the CA being tried has not finished after this long, start the next
    /// one as well; the first valid certificate wins. Absent: strictly one at a time.
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
}

/// Which CA of a pool is tried first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolPolicy {
    /// Lowest `priority` first, configuration order among equals.
    #[default]
    Priority,
    /// Lowest `priority` first; among equals, a random order weighted by `weight`.
    Weighted,
}

/// `[ca.eab]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EabSettings {
    /// Key identifier the CA gave.
    pub key_id: String,
    /// Name of the environment variable holding the base64url HMAC key.
    pub hmac_key_env: String,
}

/// `[ca.csr]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrSettings {
    /// Subject C.
    pub country: String,
    /// Subject O: the carrier's legal name.
    pub organization: String,
    /// Subject CN of end-entity certificates; `{spc}` becomes the first SPC of the
    /// TNAuthList (or its first entry). SHAKEN CAs want `SHAKEN <OCN>` (shaken-acme.md §0.7).
    pub common_name_template: String,
    /// Subject `serialNumber` (a PrintableString of 1 to 64 characters); empty: none.
    /// `{spc}` is what `{spc}` is in the CN, `{random}` 16 hex digits (64 random bits) new
    /// for every CSR. Default `{spc}-{random}`: US SHAKEN CP 1.3 §3.1 requires a
    /// serialNumber beside the CN to tell successive certificates of one entity apart, so
    /// the SPC alone (the same in every certificate of the carrier) would defeat it; the SPC
    /// prefix keeps it naming the carrier, the random part makes each DN distinct without a
    /// counter the fleet would have to share. CAs that assign their own serialNumber
    /// overwrite it.
    pub serial_number_template: String,
}

impl CsrSettings {
    /// The serialNumber for a CSR whose CN's `{spc}` is `spc`, or `None` when the template
    /// is empty. Characters of `spc` outside the PrintableString alphabet (`#` and `*` of a
    /// telephone number) are left out; the caller's subject validation enforces the length.
    pub fn serial_number(&self, spc: &str) -> Option<String> {
        if self.serial_number_template.is_empty() {
            return None;
        }
        let spc: String = spc.chars().filter(|c| is_printable(*c)).collect();
        let random = format!("{:016X}", rand::random::<u64>());
        Some(
            self.serial_number_template
                .replace("{spc}", &spc)
                .replace("{random}", &random),
        )
    }
}

/// Whether `c` is in the PrintableString alphabet (X.680 §41.4).
fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

/// Checks a serialNumber template: only `{spc}` and `{random}` placeholders, literal text
/// in the PrintableString alphabet, and at most 64 characters with a four-character SPC.
fn check_serial_number_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Ok(());
    }
    let literal = template.replace("{spc}", "").replace("{random}", "");
    if let Some(c) = literal.chars().find(|c| !is_printable(*c)) {
        return Err(format!(
            "{c:?} is not a PrintableString character (A-Z a-z 0-9 space '()+,-./:=?); \
             placeholders are {{spc}} and {{random}}"
        ));
    }
    let expanded = template
        .replace("{spc}", "1234")
        .replace("{random}", "0123456789ABCDEF");
    if expanded.len() > 64 {
        return Err(format!(
            "expands to {} characters (\"{expanded}\"); the limit is 64",
            expanded.len()
        ));
    }
    Ok(())
}

/// `[ca.sti_pa]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StiPaSettings {
    /// API base, e.g. `https://authenticate-api.iconectiv.com`.
    pub base_url: Url,
    /// Login user id.
    pub user_id: String,
    /// Password, inline; prefer `password_env`.
    #[serde(default, skip_serializing)]
    pub password: Option<SecretString>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM bundle trusted for the STI-PA's HTTPS; absent: the CA's `trust_roots`.
    #[serde(default)]
    pub trust_roots: Option<PathBuf>,
}

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "CERTBROKER_";

/// `CERTBROKER_*` variables the command line reads itself (`--config`, and the client's
/// `--addr`, `--ca-cert`, `--cert`, `--key`); never configuration overrides.
pub const CLI_ENV: &[&str] = &[
    "CERTBROKER_CONFIG",
    "CERTBROKER_ADDR",
    "CERTBROKER_CA_CERT",
    "CERTBROKER_CLIENT_CERT",
    "CERTBROKER_CLIENT_KEY",
];

/// The top-level keys of [`Settings`]: a variable whose name starts with one of them followed
/// by a single `_` is taken for a misspelt override.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "store",
    "broker",
    "telemetry",
    "renewal",
    "publish",
    "ca",
    "pool",
    "policy",
];

/// What a variable in the process environment is to the configuration loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvRole {
    /// Does not start with `CERTBROKER_` (case-insensitively, as figment matches it).
    NotOurs,
    /// Starts with `CERTBROKER_` but is no override: one of [`CLI_ENV`], a name some `*_env`
    /// key of the file refers to, a Kubernetes service-link variable, or any other name
    /// without `__` whose first segment is not a top-level key.
    NotConfig,
    /// `CERTBROKER_<KEY>__<KEY>...` (or a bare top-level key): loaded, and an unknown key or
    /// a bad value stops start-up naming it.
    Override,
    /// A top-level key and a single `_` (`CERTBROKER_SERVER_LISTEN`): most likely an override
    /// with the wrong separator, so start-up stops rather than ignoring it.
    Misspelt,
}

/// Sorts one environment variable name; `referenced` holds the names the configuration file
/// gives in `*_env` keys (e.g. `ca.sti_pa.password_env`).
///
/// The order matters: CLI names and referenced secrets first, then anything with `__` is an
/// override (so a real override always wins), then the kubelet's service links, then the
/// typo check.
pub fn classify_env(name: &str, referenced: &BTreeSet<String>) -> EnvRole {
    let prefix_len = ENV_PREFIX.len();
    if name.len() < prefix_len
        || !name.is_char_boundary(prefix_len)
        || !name[..prefix_len].eq_ignore_ascii_case(ENV_PREFIX)
    {
        return EnvRole::NotOurs;
    }
    if CLI_ENV.iter().any(|c| c.eq_ignore_ascii_case(name)) || referenced.contains(name) {
        return EnvRole::NotConfig;
    }
    let rest = &name[prefix_len..];
    if rest.contains("__") {
        return EnvRole::Override;
    }
    if is_service_link(name) {
        return EnvRole::NotConfig;
    }
    let first = rest.split('_').next().unwrap_or_default();
    match TOP_LEVEL_KEYS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(first))
    {
        Some(_) if first.len() == rest.len() => EnvRole::Override,
        Some(_) => EnvRole::Misspelt,
        None => EnvRole::NotConfig,
    }
}

/// The variables the kubelet sets for every Service with a cluster IP in the pod's namespace
/// (`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT NAME>]`, `<NAME>_PORT`,
/// `<NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`, the name upper-cased with `-` as `_`).
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
        || name.ends_with("_PORT")
    {
        return true;
    }
    // ..._PORT_<digits>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]
    name.match_indices("_PORT_").any(|(i, m)| {
        let tail = &name[i + m.len()..];
        let mut parts = tail.split('_');
        let number = parts.next().unwrap_or_default();
        let proto = parts.next().unwrap_or_default();
        let field = parts.next();
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && matches!(proto, "TCP" | "UDP" | "SCTP")
            && matches!(field, None | Some("PROTO" | "PORT" | "ADDR"))
            && parts.next().is_none()
    })
}

/// Values of every `*_env` key in a TOML file (any depth, in tables and arrays of tables):
/// the environment variables the file names for its secrets. An unreadable file gives none
/// (loading it reports the error).
fn env_names_referenced_by(file: &std::path::Path) -> BTreeSet<String> {
    fn walk(value: &figment::value::Value, out: &mut BTreeSet<String>) {
        use figment::value::Value;
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    match v {
                        Value::String(_, s) if k.ends_with("_env") => {
                            out.insert(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(_, items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(value) = Figment::from(Toml::file(file)).extract::<figment::value::Value>() {
        walk(&value, &mut out);
    }
    out
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
        let mut settings: Self = figment.extract().map_err(Box::new)?;
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

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        match self.store.backend {
            StoreBackend::Redis if self.store.url.is_none() && self.store.sentinel.is_none() => {
                return Err(invalid(
                    "store.url".into(),
                    "required when store.backend = \"redis\" (or store.sentinel)",
                ));
            }
            StoreBackend::Redis if self.store.url.is_some() && self.store.sentinel.is_some() => {
                return Err(invalid(
                    "store.sentinel".into(),
                    "excludes store.url: the sentinels name the master",
                ));
            }
            StoreBackend::RedisCluster if self.store.cluster_nodes.is_empty() => {
                return Err(invalid(
                    "store.cluster_nodes".into(),
                    "required when store.backend = \"redis-cluster\"",
                ));
            }
            StoreBackend::Redis | StoreBackend::RedisCluster if self.store.keyring.is_none() => {
                return Err(invalid(
                    "store.keyring".into(),
                    "required with Redis: private keys at rest are always encrypted",
                ));
            }
            _ => {}
        }
        if let Some(keyring) = &self.store.keyring {
            Keyring::new(keyring).map_err(|e| invalid("store.keyring".into(), &e.to_string()))?;
        }
        if !(0.0..1.0).contains(&self.renewal.renew_fraction) || self.renewal.renew_fraction == 0.0
        {
            return Err(invalid(
                "renewal.renew_fraction".into(),
                "must be between 0 and 1",
            ));
        }
        if self.renewal.check_interval_secs == 0 {
            return Err(invalid(
                "renewal.check_interval_secs".into(),
                "must be at least 1",
            ));
        }
        if self.publish.base_url.is_some() != self.publish.listen.is_some() {
            return Err(invalid(
                "publish.listen".into(),
                "set both publish.base_url and publish.listen, or neither",
            ));
        }
        if let Some(base) = &self.publish.base_url {
            if !base.path().ends_with('/') || base.query().is_some() || base.fragment().is_some() {
                return Err(invalid(
                    "publish.base_url".into(),
                    "must end with '/' and have no query or fragment (STI-CR URL rules)",
                ));
            }
        }
        if self.broker.lock_ttl_secs < 3 {
            return Err(invalid("broker.lock_ttl_secs".into(), "must be at least 3"));
        }
        if self.broker.cache_capacity == 0 {
            return Err(invalid(
                "broker.cache_capacity".into(),
                "must be at least 1",
            ));
        }
        self.validate_server()?;
        let mut names = BTreeSet::new();
        for (i, ca) in self.ca.iter().enumerate() {
            let key = |k: &str| format!("ca[{i}].{k}");
            if ca.name.is_empty() || !names.insert(ca.name.as_str()) {
                return Err(invalid(key("name"), "must be non-empty and unique"));
            }
            if !matches!(ca.directory.scheme(), "https" | "http") {
                return Err(invalid(key("directory"), "must be an https URL"));
            }
            if ca.pools.is_empty() || ca.pools.iter().any(String::is_empty) {
                return Err(invalid(
                    key("pools"),
                    "must list at least one non-empty pool name",
                ));
            }
            if ca.sti_pa.is_some() && ca.token_file.is_some() {
                return Err(invalid(
                    key("token_file"),
                    "set either sti_pa or token_file, not both",
                ));
            }
            if let Some(pa) = &ca.sti_pa {
                if pa.password.is_none() && pa.password_env.is_none() {
                    return Err(invalid(
                        key("sti_pa.password_env"),
                        "set password_env (or password)",
                    ));
                }
            }
            if ca.request_timeout_secs == 0 || ca.attempt_timeout_secs == 0 {
                return Err(invalid(
                    key("attempt_timeout_secs"),
                    "timeouts must be at least 1 second",
                ));
            }
            if ca.weight == 0 {
                return Err(invalid(key("weight"), "must be at least 1"));
            }
            if ca.breaker.failure_threshold == 0 {
                return Err(invalid(
                    key("breaker.failure_threshold"),
                    "must be at least 1",
                ));
            }
            if ca.cert_lifetime_secs == Some(0) {
                return Err(invalid(key("cert_lifetime_secs"), "must be at least 1"));
            }
            if !ca.csr.common_name_template.contains("{spc}") {
                return Err(invalid(
                    key("csr.common_name_template"),
                    "must contain {spc}",
                ));
            }
            if let Err(e) = ca.preauthorization.check() {
                return Err(invalid(key("preauthorization.spcs"), &e));
            }
            if !ca.preauthorization.spcs.is_empty()
                && ca.sti_pa.is_none()
                && ca.token_file.is_none()
            {
                return Err(invalid(
                    key("preauthorization.spcs"),
                    "needs SPC tokens: set sti_pa or token_file",
                ));
            }
            if let Err(e) = check_serial_number_template(&ca.csr.serial_number_template) {
                return Err(invalid(key("csr.serial_number_template"), &e));
            }
            if ca.csr.country.len() != 2 || !ca.csr.country.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(invalid(
                    key("csr.country"),
                    "must be two uppercase letters (ISO 3166), e.g. US",
                ));
            }
        }
        let mut pools = BTreeSet::new();
        for (i, pool) in self.pool.iter().enumerate() {
            let key = format!("pool[{i}].name");
            if !pools.insert(pool.name.as_str()) {
                return Err(invalid(key, "must be unique"));
            }
            if !self.ca.iter().any(|c| c.pools.contains(&pool.name)) {
                return Err(invalid(key, "no [[ca]] lists this pool in its `pools`"));
            }
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        if self.telemetry.audit_interval_secs == 0 {
            return Err(invalid(
                "telemetry.audit_interval_secs".into(),
                "must be at least 1",
            ));
        }
        let s = &self.server;
        if s.request_timeout_secs == 0 {
            return Err(invalid(
                "server.request_timeout_secs".into(),
                "must be at least 1",
            ));
        }
        if s.max_concurrent_requests == 0 {
            return Err(invalid(
                "server.max_concurrent_requests".into(),
                "must be at least 1",
            ));
        }
        if s.rate_limit_per_sec > 0 && s.rate_limit_burst == 0 {
            return Err(invalid(
                "server.rate_limit_burst".into(),
                "must be at least 1 when rate_limit_per_sec is set",
            ));
        }
        if s.max_request_bytes < 1024 {
            return Err(invalid(
                "server.max_request_bytes".into(),
                "must be at least 1024",
            ));
        }
        if let Some(tls) = &s.tls {
            if tls.reload_interval_secs == 0 {
                return Err(invalid(
                    "server.tls.reload_interval_secs".into(),
                    "must be at least 1",
                ));
            }
        }
        let mutual = s.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !self.policy.is_empty() && !mutual {
            return Err(invalid(
                "policy".into(),
                "[[policy]] needs client certificates: set server.tls.client_ca",
            ));
        }
        for (i, p) in self.policy.iter().enumerate() {
            let key = |k: &str| format!("policy[{i}].{k}");
            if p.identities.is_empty() {
                return Err(invalid(
                    key("identities"),
                    "must name at least one identity",
                ));
            }
            for id in &p.identities {
                let rest = id.strip_prefix("*.").unwrap_or(id);
                if rest.is_empty() || rest.contains('*') {
                    return Err(invalid(
                        key("identities"),
                        "each is an exact name or `*.suffix`",
                    ));
                }
            }
            if p.dns_suffixes
                .iter()
                .any(|d| d.is_empty() || d.contains('*'))
            {
                return Err(invalid(
                    key("dns_suffixes"),
                    "each is a DNS name, without wildcards",
                ));
            }
        }
        Ok(())
    }
}

// === defaults ===

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_grace_secs: 30,
            tls: None,
            request_timeout_secs: 330,
            max_concurrent_requests: 1024,
            rate_limit_per_sec: 100,
            rate_limit_burst: 200,
            max_request_bytes: 64 * 1024,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        let redis = RedisSettings::default();
        Self {
            backend: StoreBackend::Memory,
            url: None,
            cluster_nodes: vec![],
            sentinel: None,
            trust_roots: None,
            prefix: redis.prefix,
            timeout_ms: redis.timeout_ms,
            keyring: None,
        }
    }
}

impl StoreSettings {
    /// The Redis connection settings these describe.
    pub fn redis(&self) -> RedisSettings {
        RedisSettings {
            url: (self.backend == StoreBackend::Redis)
                .then(|| self.url.clone())
                .flatten(),
            cluster_nodes: if self.backend == StoreBackend::RedisCluster {
                self.cluster_nodes.clone()
            } else {
                vec![]
            },
            sentinel: (self.backend == StoreBackend::Redis)
                .then(|| self.sentinel.clone())
                .flatten(),
            trust_roots: self.trust_roots.clone(),
            prefix: self.prefix.clone(),
            keyring: self.keyring.clone(),
            timeout_ms: self.timeout_ms,
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            cache_capacity: 100_000,
            default_min_remaining_secs: 300,
            issuance_timeout_secs: 300,
            lock_ttl_secs: 15,
            negative_ttl_secs: 30,
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
            audit_interval_secs: 60,
        }
    }
}

impl Default for CsrSettings {
    fn default() -> Self {
        Self {
            country: "US".into(),
            organization: "certbroker".into(),
            common_name_template: "SHAKEN {spc}".into(),
            serial_number_template: "{spc}-{random}".into(),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cool_down_secs: 30,
            max_retry_after_secs: 3600,
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_pools() -> Vec<String> {
    vec!["default".into()]
}

fn default_tls_reload() -> u64 {
    10
}

fn default_request_timeout() -> u64 {
    30
}

fn default_attempt_timeout() -> u64 {
    120
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
        assert_eq!((s.ca[0].weight, s.ca[1].weight), (3, 1));
        assert!(s.ca[1].allow_account_key_reuse && !s.ca[0].allow_account_key_reuse);
        assert_eq!(s.ca[2].cert_lifetime_secs, Some(2_592_000));
        assert_eq!(s.ca[2].breaker.failure_threshold, 3, "default");
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
        assert_eq!(ok.server.tls.unwrap().reload_interval_secs, 10);
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
            assert_eq!(s.broker.cache_capacity, 7);
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
                s.broker.cache_capacity, 7,
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
        let redis = s.store.redis();
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
                s.store.redis().trust_roots,
                Some(jail.directory().join("conf").join("redis-ca.pem"))
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
