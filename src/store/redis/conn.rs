//! One handle over a standalone Redis (auto-reconnecting `ConnectionManager`) or a Redis
//! Cluster (`cluster_async`), both created lazily so a broker starts while Redis is down.

use std::time::Duration;

use redis::{
    Client, Cmd, Pipeline, RedisFuture, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};

use super::{super::StoreError, RedisSettings};

/// The CA certificates of `settings.trust_roots`, read once; `None` when unset (the
/// system roots). Every URL must then be `rediss://`: a private CA for a plaintext
/// connection is a configuration mistake worth stopping for.
pub(super) fn trust_roots(settings: &RedisSettings) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(path) = &settings.trust_roots else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        StoreError::Config(format!(
            "store.trust_roots {}: cannot read: {e}",
            path.display()
        ))
    })?;
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            StoreError::Config(format!(
                "store.trust_roots {}: not PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(StoreError::Config(format!(
            "store.trust_roots {}: no CERTIFICATE in it",
            path.display()
        )));
    }
    let plain = settings
        .url
        .iter()
        .chain(&settings.cluster_nodes)
        .find(|u| !u.starts_with("rediss://"));
    if let Some(plain) = plain {
        return Err(StoreError::Config(format!(
            "store.trust_roots is set but {} is not a rediss:// URL",
            redact_url(plain)
        )));
    }
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for `url`, trusting `tls`'s roots when given.
pub(super) fn client(url: &str, tls: Option<&TlsCertificates>) -> Result<Client, StoreError> {
    match tls {
        Some(tls) => Client::build_with_tls(url, tls.clone()),
        None => Client::open(url),
    }
    .map_err(|e| StoreError::Config(format!("invalid Redis address {}: {e}", redact_url(url))))
}

/// A cheap-to-clone command connection.
#[derive(Clone)]
pub(super) enum Conn {
    /// Redis Cluster, routed by key slot.
    Cluster(ClusterConnection),
    /// A single Redis server (or a proxy in front of several).
    Standalone(ConnectionManager),
}

impl Conn {
    /// A standalone connection through `client`; connects on first use and reconnects by
    /// itself.
    pub(super) fn standalone(client: Client, timeout: Duration) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Fail fast while Redis is down (callers treat errors as misses); the next
            // command starts a fresh reconnection attempt.
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Config(format!("cannot set up the Redis connection: {e}")))?;
        Ok(Self::Standalone(manager))
    }

    /// A cluster connection seeded with `nodes`; discovers the topology on first use.
    pub(super) fn cluster(
        nodes: &[String],
        tls: Option<&TlsCertificates>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut builder = ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2);
        if let Some(tls) = tls {
            builder = builder.certs(tls.clone());
        }
        let client = builder.build().map_err(|e| {
            StoreError::Config(format!("store.redis.cluster_nodes is invalid: {e}"))
        })?;
        let config = ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        Ok(Self::Cluster(
            client.get_pending_async_connection_with_config(config),
        ))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Standalone(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Self::Standalone(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Cluster(c) => c.get_db(),
            Self::Standalone(c) => c.get_db(),
        }
    }
}

/// `url` with any password replaced, for logs and `Debug`.
pub(super) fn redact_url(raw: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("rediss://user:hunter2@cache:6380/1"),
            "rediss://user:%3Credacted%3E@cache:6380/1"
        );
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert!(!redact_url("not a url hunter2").contains("hunter2"));
    }
}
