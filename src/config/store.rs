//! `[store]`: where certificates live between requests and replicas. Plain settings; the
//! store turns them into its connection settings and keyring.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString, zeroize::Zeroizing};
use serde::{Deserialize, Serialize, ser::SerializeStruct};

/// Default prefix of every Redis key and channel.
pub const DEFAULT_PREFIX: &str = "certbroker";
/// Default bound on connecting and on each Redis command, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

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
    pub sentinel: Option<SentinelSettings>,
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

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            url: None,
            cluster_nodes: vec![],
            sentinel: None,
            trust_roots: None,
            prefix: DEFAULT_PREFIX.into(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            keyring: None,
        }
    }
}

/// Keyring configuration: which key seals new entries, and every key that may open old ones.
///
/// ```toml
/// [store.redis.keyring]
/// active = "2025-06"
/// keys = { "2025-01" = "<base64 of 32 bytes>", "2025-06" = "<base64 of 32 bytes>" }
/// ```
///
/// Serializing writes the key ids with redacted values, never the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringSettings {
    /// Id of the key that seals new entries; must be one of `keys`.
    pub active: String,
    /// Key id → standard base64 of a 32-byte AES-256 key. Ids are 1 to 255 bytes.
    pub keys: BTreeMap<String, SecretString>,
}

impl Serialize for KeyringSettings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let redacted: BTreeMap<&str, &str> = self
            .keys
            .keys()
            .map(|id| (id.as_str(), "<redacted>"))
            .collect();
        let mut s = serializer.serialize_struct("KeyringSettings", 2)?;
        s.serialize_field("active", &self.active)?;
        s.serialize_field("keys", &redacted)?;
        s.end()
    }
}

impl KeyringSettings {
    /// Decodes and checks every key: ids of 1 to 255 bytes, standard base64 of exactly 32
    /// bytes, and `active` among them. The error names the key id.
    pub fn decode_keys(&self) -> Result<Vec<DecodedKey<'_>>, String> {
        let mut out = Vec::with_capacity(self.keys.len());
        for (id, secret) in &self.keys {
            if id.is_empty() || id.len() > usize::from(u8::MAX) {
                return Err(format!("keyring key id {id:?} must be 1 to 255 bytes long"));
            }
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(secret.expose_secret().trim())
                    .map_err(|e| format!("keyring key {id:?} is not valid base64: {e}"))?,
            );
            if bytes.len() != KEYRING_KEY_LEN {
                return Err(format!(
                    "keyring key {id:?} is {} bytes; AES-256 needs exactly {KEYRING_KEY_LEN}",
                    bytes.len()
                ));
            }
            out.push((id.as_str(), bytes));
        }
        if !self.keys.contains_key(&self.active) {
            return Err(format!(
                "keyring active key {:?} is not among the configured keys {:?}",
                self.active,
                self.keys.keys().collect::<Vec<_>>()
            ));
        }
        Ok(out)
    }
}

/// One keyring key, decoded: its id and its 32 bytes (wiped on drop).
pub type DecodedKey<'a> = (&'a str, Zeroizing<Vec<u8>>);

/// Length of an AES-256 key, in bytes.
pub const KEYRING_KEY_LEN: usize = 32;

/// `[store.sentinel]`: a master found through Redis Sentinel.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// The sentinels, each `redis://[user:password@]host:port` (their own credentials, if
    /// any), or `rediss://` for TLS to the sentinels and to the data nodes.
    pub nodes: Vec<String>,
    /// ACL user on the master (the data nodes). Default: none (the default user).
    #[serde(default)]
    pub username: Option<String>,
    /// Password on the master (the data nodes). Default: none.
    #[serde(default)]
    pub password: Option<String>,
}

impl fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `url` with any password replaced, for logs and `Debug`.
pub(crate) fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("<redacted>"));
            }
            url.to_string()
        }
        // Unparseable: it may hold anything, show only the scheme-ish start.
        Err(_) => format!("<unparseable url, {} bytes>", raw.len()),
    }
}
