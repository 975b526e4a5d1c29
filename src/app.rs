//! Builds the object graph from [`Settings`] and runs the gRPC server: the one place that
//! picks implementations.

mod upstreams;

pub use upstreams::{build_pool, build_upstream};

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    api,
    broker::{Broker, BrokerOptions, RenewalOptions},
    ca::{self, CaPool},
    config::PublishSettings,
    config::{Settings, StoreBackend},
    publish,
    store::{self, MemoryStore, RedisSettings, SecretStore, Store},
    telemetry::{self, Metrics},
};

/// A built broker, ready to serve.
#[derive(Debug, Clone)]
pub struct App {
    broker: Broker,
    pool: Arc<CaPool>,
    publish: PublishSettings,
    serve_options: api::ServeOptions,
    metrics: Metrics,
    admin_listen: Option<std::net::SocketAddr>,
}

impl App {
    /// Builds CAs, store and broker. Fails naming the configuration key at fault.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.ca.is_empty(),
            "no [[ca]] configured: the broker needs at least one upstream CA"
        );
        let store = open_store(settings).await?;
        // The same store caches SPC tokens fleet-wide (sealed with the keyring in Redis).
        let pool = build_pool(
            &settings.ca,
            &settings.pool,
            Some(store.clone() as Arc<dyn SecretStore>),
        )?;
        let pool = Arc::new(pool);
        let metrics = Metrics::new()?;
        metrics.set_ca_breaker_source(pool.clone());
        pool.set_metrics(&metrics);
        // In the background and in parallel: the listener opens at once; readiness
        // (`/readyz`, the `certbroker.ca` health service) says what is known meanwhile.
        pool.spawn_warm_up();
        // Also in the background: SPCs pre-authorized where the CA offers newAuthz.
        ca::preauth::spawn(&pool, Some(metrics.clone()));
        let broker = Broker::new(pool.clone(), store, BrokerOptions::from(&settings.broker));
        if let Err(e) = broker.listen_for_invalidations().await {
            tracing::warn!(error = %e, "no fleet invalidations until the store is back");
        }
        let r = &settings.renewal;
        if r.enabled {
            broker.spawn_renewal(RenewalOptions {
                check_interval: r.check_interval,
                idle_horizon: r.idle_horizon,
                renew_fraction: r.renew_fraction,
                retry_base: r.retry_base,
                use_ari: r.ari,
            });
        }
        let mut serve_options =
            api::ServeOptions::from_settings(&settings.server, &settings.policy);
        serve_options.observer = Some(Arc::new(metrics.clone()));
        serve_options.metrics = Some(metrics.clone());
        serve_options.x5u_base = settings.publish.base_url.clone();
        serve_options.audit_interval = settings.telemetry.audit_interval;
        Ok(Self {
            broker,
            pool,
            publish: settings.publish.clone(),
            serve_options,
            metrics,
            admin_listen: settings.telemetry.admin_listen,
        })
    }

    /// The broker core.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The upstream CAs, for their counters ([`CaPool::stats`]).
    pub fn ca_pool(&self) -> &Arc<CaPool> {
        &self.pool
    }

    /// The metrics the server reports.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves gRPC on `listener` until `shutdown` resolves, the admin endpoints on
    /// `telemetry.admin_listen` and the STI-CR chains on `publish.listen` if set.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let publisher = match (self.publish.listen, &self.publish.base_url) {
            (Some(listen), Some(base)) => {
                let (addr, task) = publish::serve(self.broker.clone(), listen, base)
                    .await
                    .with_context(|| format!("publish.listen {listen}"))?;
                tracing::info!(%addr, "serving STI-CR chains");
                Some(task)
            }
            _ => None,
        };
        let admin = match self.admin_listen {
            Some(addr) => {
                let admin_listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding telemetry.admin_listen {addr}"))?;
                tracing::info!(addr = %admin_listener.local_addr()?, "admin listener (/metrics, /healthz, /readyz)");
                Some(tokio::spawn(
                    self.clone()
                        .serve_admin(admin_listener, std::future::pending()),
                ))
            }
            None => None,
        };
        let served = api::serve(self.broker, listener, self.serve_options, shutdown)
            .await
            .context("gRPC server");
        if let Some(admin) = admin {
            admin.abort();
        }
        if let Some(task) = publisher {
            task.abort();
        }
        served
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        telemetry::serve_admin(listener, self.metrics, self.broker, shutdown)
            .await
            .context("admin listener")
    }
}

/// The configured shared store: in-process memory, or Redis with its keyring checked.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match settings.store.backend {
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
        StoreBackend::Redis | StoreBackend::RedisCluster => {
            let redis = store::connect(&RedisSettings::from(&settings.store))
                .await
                .context("store")?;
            redis.check_keyring().await.context("store.keyring")?;
            Arc::new(redis)
        }
    })
}
