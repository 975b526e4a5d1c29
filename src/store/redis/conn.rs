//! One handle over a standalone Redis (auto-reconnecting `ConnectionManager`) or a Redis
//! Cluster (`cluster_async`), both created lazily so a broker starts while Redis is down.

use std::{sync::Arc, time::Duration};

use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsCertificates, TlsMode, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use super::{super::StoreError, RedisSettings, SentinelSettings};
pub(super) use crate::config::redact_url;

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
        .chain(settings.sentinel.iter().flat_map(|s| &s.nodes))
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
    /// The master Redis Sentinel names, re-resolved after a connection failure.
    Sentinel(SentinelConn),
}

/// A connection to the current Sentinel-named master, dropped on every failure that
/// means the node is gone or demoted (`READONLY`), so the next command asks the sentinels
/// again: a failover costs no restart.
#[derive(Clone)]
pub(super) struct SentinelConn {
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    current: Arc<std::sync::Mutex<Option<MultiplexedConnection>>>,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Ok(c);
        }
        let client = self.client.lock().await.async_get_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    fn forget_on<T>(&self, result: &RedisResult<T>) {
        if let Err(e) = result {
            if super::breaker::is_outage(e) {
                *self
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
        }
    }
}

/// A Sentinel client for the master `settings` name; `tls` replaces the system roots for
/// the sentinels and the data nodes (all `rediss://`).
pub(super) fn sentinel_client(
    settings: &SentinelSettings,
    tls: Option<&TlsCertificates>,
) -> Result<Arc<tokio::sync::Mutex<SentinelClient>>, StoreError> {
    let invalid = |e: &dyn std::fmt::Display| StoreError::Config(format!("store.sentinel: {e}"));
    if settings.nodes.is_empty() || settings.master_name.is_empty() {
        return Err(invalid(&"needs master_name and at least one node"));
    }
    let infos = settings
        .nodes
        .iter()
        .map(|n| n.as_str().into_connection_info())
        .collect::<RedisResult<Vec<ConnectionInfo>>>()
        .map_err(|e| invalid(&e))?;
    let secure = settings.nodes.iter().all(|n| n.starts_with("rediss://"));
    if !secure && settings.nodes.iter().any(|n| n.starts_with("rediss://")) {
        return Err(invalid(&"nodes must be all redis:// or all rediss://"));
    }
    let creds = |i: &ConnectionInfo| {
        (
            i.redis_settings().username().map(str::to_owned),
            i.redis_settings().password().map(str::to_owned),
        )
    };
    if infos.iter().any(|i| creds(i) != creds(&infos[0])) {
        return Err(invalid(
            &"every sentinel URL must carry the same credentials",
        ));
    }
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        settings.master_name.clone(),
        SentinelServerType::Master,
    )
    .map_err(|e| invalid(&e))?;
    let (user, password) = creds(&infos[0]);
    if let Some(u) = user {
        builder = builder.set_client_to_sentinel_username(u);
    }
    if let Some(p) = password {
        builder = builder.set_client_to_sentinel_password(p);
    }
    if let Some(u) = &settings.username {
        builder = builder.set_client_to_redis_username(u.clone());
    }
    if let Some(p) = &settings.password {
        builder = builder.set_client_to_redis_password(p.clone());
    }
    if secure {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(tls) = tls {
            builder = builder
                .set_client_to_sentinel_certificates(tls.clone())
                .set_client_to_redis_certificates(tls.clone());
        }
    }
    let client = builder.build().map_err(|e| invalid(&e))?;
    Ok(Arc::new(tokio::sync::Mutex::new(client)))
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

    /// The master `client` names, connected on first use and re-resolved after failures.
    pub(super) fn sentinel(
        client: Arc<tokio::sync::Mutex<SentinelClient>>,
        timeout: Duration,
    ) -> Self {
        Self::Sentinel(SentinelConn {
            client,
            current: Arc::default(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
        })
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
            Self::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                s.forget_on(&result);
                result
            }),
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
            Self::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let result = conn.req_packed_commands(cmd, offset, count).await;
                s.forget_on(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Cluster(c) => c.get_db(),
            Self::Standalone(c) => c.get_db(),
            Self::Sentinel(_) => 0,
        }
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
