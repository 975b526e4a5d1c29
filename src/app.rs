//! Builds the object graph from [`Settings`] and runs the gRPC server: the one place that
//! picks implementations.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    api,
    broker::{Broker, BrokerOptions},
    ca::CaPool,
    config::{Settings, StoreBackend},
    store::{MemoryStore, Store},
};

/// A built broker, ready to serve.
#[derive(Debug, Clone)]
pub struct App {
    broker: Broker,
    pool: Arc<CaPool>,
}

impl App {
    /// Builds CAs, store and broker. Fails naming the configuration key at fault.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.ca.is_empty(),
            "no [[ca]] configured: the broker needs at least one upstream CA"
        );
        let pool = CaPool::from_settings(&settings.ca, &settings.pool)?;
        for (ca, err) in pool.warm_up().await {
            // Not fatal: the CA may come back; requests will fail over or report it.
            tracing::warn!(ca = %ca, error = %err, "CA account not ready at start-up");
        }
        let store: Arc<dyn Store> = match settings.store.backend {
            StoreBackend::Memory => Arc::new(MemoryStore::new()),
            StoreBackend::Redis => anyhow::bail!(
                "store.backend = \"redis\" is not available in this build yet; use \"memory\""
            ),
        };
        let pool = Arc::new(pool);
        let b = &settings.broker;
        let broker = Broker::new(
            pool.clone(),
            store,
            BrokerOptions {
                cache_capacity: b.cache_capacity,
                default_min_remaining: Duration::from_secs(b.default_min_remaining_secs),
                issuance_timeout: Duration::from_secs(b.issuance_timeout_secs),
            },
        );
        Ok(Self { broker, pool })
    }

    /// The broker core.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The upstream CAs, for their counters ([`CaPool::stats`]).
    pub fn ca_pool(&self) -> &Arc<CaPool> {
        &self.pool
    }

    /// Serves gRPC on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        api::serve(self.broker, listener, shutdown)
            .await
            .context("gRPC server")
    }
}
