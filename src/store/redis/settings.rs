//! The Redis store's connection settings, and how `[store]` turns into them.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::conn::redact_url;
use crate::config::KeyringSettings;
pub use crate::config::SentinelSettings;

/// `[store.redis]`: where the shared store lives.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Standalone server: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS
    /// (trusting the system roots). Unset in cluster mode. Default: unset.
    pub url: Option<String>,
    /// Redis Cluster seed nodes, each a `redis://` or `rediss://` URL; non-empty selects
    /// cluster mode (then `url` must be unset). Default: empty.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel: the master is whichever node the sentinels name, re-asked after
    /// every connection failure (so a failover needs no restart). Exclusive with `url`
    /// and `cluster_nodes`. Default: unset.
    pub sentinel: Option<SentinelSettings>,
    /// PEM file of the CA certificates trusted for `rediss://` servers instead of the
    /// system roots (a private CA, as managed and self-hosted Redis with TLS use). Every
    /// URL must then be `rediss://`. Default: unset (the system roots).
    pub trust_roots: Option<PathBuf>,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    /// Must not contain `{` or `}`. Default: `certbroker`.
    pub prefix: String,
    /// Keys that encrypt private keys at rest. Required as soon as the broker stores a
    /// certificate whose key it generated. Default: none.
    pub keyring: Option<KeyringSettings>,
    /// Upper bound, in milliseconds, for connecting and for each command. Default: 1000.
    pub timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            cluster_nodes: Vec::new(),
            sentinel: None,
            trust_roots: None,
            prefix: crate::config::DEFAULT_PREFIX.into(),
            keyring: None,
            timeout_ms: crate::config::DEFAULT_TIMEOUT_MS,
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>(),
            )
            .field("sentinel", &self.sentinel)
            .field("trust_roots", &self.trust_roots)
            .field("prefix", &self.prefix)
            .field("keyring", &self.keyring)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl From<&crate::config::StoreSettings> for RedisSettings {
    /// The Redis connection settings `[store]` describes.
    fn from(s: &crate::config::StoreSettings) -> Self {
        use crate::config::StoreBackend;
        Self {
            url: (s.backend == StoreBackend::Redis)
                .then(|| s.url.clone())
                .flatten(),
            cluster_nodes: if s.backend == StoreBackend::RedisCluster {
                s.cluster_nodes.clone()
            } else {
                vec![]
            },
            sentinel: (s.backend == StoreBackend::Redis)
                .then(|| s.sentinel.clone())
                .flatten(),
            trust_roots: s.trust_roots.clone(),
            prefix: s.prefix.clone(),
            keyring: s.keyring.clone(),
            timeout_ms: s.timeout_ms,
        }
    }
}
