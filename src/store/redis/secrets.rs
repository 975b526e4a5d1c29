//! Secrets on Redis: the start-up keyring check, and the [`SecretStore`]: blobs sealed with
//! the keyring (bound to their key), and one index set per group so a group drops at once.
//! Item and index share a hash tag, so every command stays in one Cluster slot.

use std::time::Duration;

use secrecy::zeroize::Zeroizing;

use super::{RedisStore, millis};
use crate::store::{SecretStore, StoreError};

impl RedisStore {
    /// Start-up check that the configured keyring can read what the fleet already wrote:
    /// every key id that ever sealed an entry must be configured, with the same key. Each
    /// key id leaves an encrypted canary the first time it is seen. An unreachable Redis
    /// passes (the broker starts degraded and the check runs on the next start).
    pub async fn check_keyring(&self) -> Result<(), StoreError> {
        let Some(keyring) = &self.inner.keyring else {
            return Ok(());
        };
        let ids_key = self.index_key("keyring", "ids");
        let known: Vec<String> = match self.query(redis::cmd("SMEMBERS").arg(&ids_key)).await {
            Ok(ids) => ids,
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "keyring check skipped: redis unreachable");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let configured: Vec<&str> = keyring.ids().collect();
        if let Some(missing) = known.iter().find(|id| !configured.contains(&id.as_str())) {
            return Err(StoreError::Config(format!(
                "store.keyring lacks key id {missing:?}, which sealed entries already in this store; add it back (rotation keeps old keys)"
            )));
        }
        for id in configured {
            let canary_key = self.index_key("keyring-canary", id);
            let canary: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&canary_key)).await?;
            match canary {
                Some(blob) => {
                    keyring.decrypt(&blob, canary_key.as_bytes()).map_err(|_| {
                        StoreError::Config(format!(
                            "store.keyring key {id:?} is not the key that sealed this store's entries"
                        ))
                    })?;
                }
                None if id == keyring.active_id() => {
                    let blob =
                        keyring.encrypt(b"certbroker keyring canary", canary_key.as_bytes())?;
                    self.query::<()>(redis::cmd("SET").arg(&canary_key).arg(blob))
                        .await?;
                    self.query::<()>(redis::cmd("SADD").arg(&ids_key).arg(id))
                        .await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The item and index keys of a secret group; one hash tag, so one Cluster slot.
    fn secret_keys(&self, group: &str, key: &str) -> (String, String) {
        let tag = format!("secret:{group}");
        (
            self.tagged(&tag, &format!("item:{key}")),
            self.tagged(&tag, "index"),
        )
    }
}

#[async_trait::async_trait]
impl SecretStore for RedisStore {
    async fn put_secret(
        &self,
        group: &str,
        key: &str,
        secret: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let keyring = self.keyring_for("secrets")?;
        let (item, index) = self.secret_keys(group, key);
        let sealed = keyring.encrypt(secret, item.as_bytes())?;
        let mut put = self.inner.scripts.put_secret.prepare_invoke();
        put.key(&item).key(&index).arg(sealed).arg(millis(ttl));
        self.script::<i64>(put).await.map(drop)
    }

    async fn secret(
        &self,
        group: &str,
        key: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let (item, _) = self.secret_keys(group, key);
        let sealed: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&item)).await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let keyring = self.keyring_for("secrets")?;
        keyring.decrypt(&sealed, item.as_bytes()).map(Some)
    }

    async fn delete_secret(&self, group: &str, key: &str) -> Result<(), StoreError> {
        let (item, index) = self.secret_keys(group, key);
        self.query::<()>(redis::cmd("DEL").arg(&item)).await?;
        self.query::<()>(redis::cmd("SREM").arg(&index).arg(&item))
            .await
    }

    async fn drop_secret_group(&self, group: &str) -> Result<u64, StoreError> {
        let (_, index) = self.secret_keys(group, "");
        let items: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(&index)).await?;
        let dropped = if items.is_empty() {
            0
        } else {
            // Every item shares the index's hash tag: one multi-key DEL, legal on Cluster.
            self.query::<u64>(redis::cmd("DEL").arg(&items)).await?
        };
        self.query::<()>(redis::cmd("DEL").arg(&index)).await?;
        Ok(dropped)
    }
}
