//! The fleet-wide store in Redis, standalone or Cluster.
//!
//! Key layout under `prefix` (default `certbroker`). Everything about one cache key shares a
//! hash tag, so it lives in one Cluster slot and multi-key scripts stay legal:
//!
//! | key | value | expires |
//! |---|---|---|
//! | `prefix:{ck}:current` | serial of the current certificate | its notAfter |
//! | `prefix:{ck}:cert:<serial>` | the record (JSON, private key sealed) | its notAfter |
//! | `prefix:{ck}:entry` | a copy of the current record, so an L2 hit is one `MGET` of `current` and `entry` | its notAfter |
//! | `prefix:serial:<serial>` | `{"cache_key","serial"}` | notAfter |
//! | `prefix:fp:<sha256>` | `{"cache_key","serial"}` | notAfter |
//! | `prefix:{key}:lock` | random owner token | lock TTL |
//! | `prefix:{key}:progress` | opaque bytes | given TTL |
//! | `prefix:{key}:negative` | opaque reason | given TTL |
//! | `prefix:{secret:<group>}:item:<key>` | keyring-sealed blob (AAD: this key name) | given TTL |
//! | `prefix:{secret:<group>}:index` | set of the group's item keys | longest item TTL |
//! | `prefix:health` | Unix time of the last health probe (a write proves Redis writable) | 60 s |
//!
//! Pub/sub channels `prefix:ready` and `prefix:invalidate` carry keys as payload.
//! Every command is bounded by `timeout_ms`; every Redis failure is
//! [`StoreError::Unavailable`], which callers treat as a miss. Once a failure says Redis as a
//! whole is unusable (see [`breaker`]), commands fail at once without touching the network,
//! and a background probe (the same as [`Store::health`]'s) lets them through again as soon
//! as Redis answers.

mod breaker;
mod codec;
mod conn;
mod open;
mod pubsub;
mod scripts;
mod secrets;
mod settings;

use std::{fmt, sync::Arc, time::Duration};

use redis::{ErrorKind, FromRedisValue, RedisResult, ServerErrorKind};
use tokio::sync::broadcast;

use self::{
    breaker::{Breaker, Prober},
    codec::IndexEntry,
    conn::Conn,
    pubsub::{Routes, Subscriber},
    scripts::Scripts,
};
pub use self::{
    open::connect,
    settings::{RedisSettings, SentinelSettings},
};
use super::{Keyring, LockToken, Store, StoreError, StoreHealth, wait_for_ready};
use crate::cert::{CertRecord, CertSelector};

/// [`Store`] on Redis. Cheap to clone: clones share connections and the subscription.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// Redacted address, for `Debug`.
    mode: String,
    prefix: String,
    keyring: Option<Keyring>,
    timeout: Duration,
    /// Redis Cluster (the health probe also checks `cluster_state`).
    cluster: bool,
    routes: Routes,
    /// Kept for its `Drop`, which stops the subscription task.
    _subscriber: Subscriber,
    scripts: Scripts,
    /// Open while Redis is known to be unreachable.
    breaker: Arc<Breaker>,
    /// Kept for its `Drop`, which stops the background probe.
    _prober: Prober,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.mode)
            .field("prefix", &self.inner.prefix)
            .field("keyring", &self.inner.keyring)
            .finish_non_exhaustive()
    }
}

// === impl RedisStore ===

impl RedisStore {
    /// Runs one command, bounded by the configured timeout.
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.inner.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// Runs one script, bounded by the configured timeout.
    async fn script<T: FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.inner.conn.clone();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// Runs `fut` unless the breaker is open, bounded by the configured timeout; a failure
    /// that means Redis is unusable opens the breaker.
    async fn bounded<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        if let Some(reason) = self.inner.breaker.open_reason() {
            return Err(StoreError::Unavailable(format!(
                "redis is unreachable ({reason}); failing fast until it answers a probe"
            )));
        }
        self.unguarded(fut).await.map_err(|(e, outage)| {
            if outage {
                self.inner.breaker.trip(&e);
            }
            StoreError::Unavailable(e)
        })
    }

    /// `fut` bounded by the configured timeout, whatever the breaker says. The error says
    /// whether it means an outage.
    async fn unguarded<T>(
        &self,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, (String, bool)> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.kind() == ErrorKind::AuthenticationFailed => Err((
                format!(
                    "redis refused the credentials in the store URL (wrong user or password, \
                     or the ACL user is disabled): {e}"
                ),
                breaker::is_outage(&e),
            )),
            Ok(Err(e)) => Err((format!("redis: {e}"), breaker::is_outage(&e))),
            Err(_) => Err((
                format!("redis did not answer within {:?}", self.inner.timeout),
                true,
            )),
        }
    }

    /// What the broker needs from Redis, checked without the breaker: a write to a key of
    /// the store's own (a reachable, writable primary; in a Cluster, a routable slot), and
    /// in a Cluster `cluster_state:ok` (every slot served; a surviving primary answers PING
    /// and its own keys while the cluster is failed). A user whose ACL forbids
    /// `CLUSTER INFO` is checked by the write alone.
    async fn probe(&self) -> Result<(), String> {
        let mut conn = self.inner.conn.clone();
        let write = redis::cmd("SET")
            .arg(format!("{}:health", self.inner.prefix))
            .arg(time::OffsetDateTime::now_utc().unix_timestamp())
            .arg("PX")
            .arg(60_000)
            .clone();
        self.unguarded(write.query_async::<()>(&mut conn))
            .await
            .map_err(|(e, _)| e)?;
        if !self.inner.cluster {
            return Ok(());
        }
        let info = redis::cmd("CLUSTER").arg("INFO").clone();
        let info = match self
            .unguarded(async {
                match info.query_async::<String>(&mut conn).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => Ok(None),
                    other => other.map(Some),
                }
            })
            .await
        {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(()),
            Err((e, _)) => return Err(e),
        };
        if info.lines().any(|l| l.trim() == "cluster_state:ok") {
            return Ok(());
        }
        Err(format!(
            "redis cluster does not serve every slot ({})",
            info.lines()
                .find(|l| l.starts_with("cluster_state:"))
                .unwrap_or("no cluster_state")
                .trim()
        ))
    }

    fn keyring_for(&self, what: &str) -> Result<&Keyring, StoreError> {
        self.inner.keyring.as_ref().ok_or_else(|| {
            StoreError::Config(format!(
                "storing {what} needs store.keyring: secrets at rest are always encrypted"
            ))
        })
    }

    /// `prefix:{key}:suffix`: hash-tagged so all of one key's entries share a slot.
    /// Built by hand: `format!` costs several times as much on the L2 hit, which makes two.
    fn tagged(&self, key: &str, suffix: &str) -> String {
        let prefix = &self.inner.prefix;
        let mut tagged = String::with_capacity(prefix.len() + key.len() + suffix.len() + 4);
        for part in [prefix.as_str(), ":{", key, "}:", suffix] {
            tagged.push_str(part);
        }
        tagged
    }

    fn index_key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.inner.prefix)
    }

    async fn load(&self, cache_key: &str, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        let key = self.tagged(cache_key, &format!("cert:{serial}"));
        let bytes: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key)).await?;
        bytes
            .map(|b| codec::decode(&b, self.inner.keyring.as_ref()))
            .transpose()
    }

    async fn lookup(&self, kind: &str, id: &str) -> Result<Option<CertRecord>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(self.index_key(kind, id)))
            .await?;
        let Some(bytes) = bytes else { return Ok(None) };
        let entry = codec::decode_index(&bytes)?;
        self.load(&entry.cache_key, &entry.serial).await
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    /// One round trip: `MGET current entry` (one hash tag, so one Cluster slot). The entry
    /// counts only if it is the record `current` names; otherwise (written by a broker
    /// without entries, or a stale copy) the record is read by serial.
    async fn current(&self, cache_key: &str) -> Result<Option<CertRecord>, StoreError> {
        let (serial, entry): (Option<String>, Option<Vec<u8>>) = self
            .query(
                redis::cmd("MGET")
                    .arg(self.tagged(cache_key, "current"))
                    .arg(self.tagged(cache_key, "entry")),
            )
            .await?;
        let Some(serial) = serial else {
            return Ok(None);
        };
        if let Some(entry) = entry {
            let record = codec::decode(&entry, self.inner.keyring.as_ref())?;
            if record.serial_hex == serial && record.cache_key == cache_key {
                return Ok(Some(record));
            }
        }
        self.load(cache_key, &serial).await
    }

    /// Records that expired already are not written (and `Ok` is returned).
    async fn put(&self, record: &CertRecord) -> Result<(), StoreError> {
        if record.not_after <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return Ok(());
        }
        let body = codec::encode(record, self.inner.keyring.as_ref())?;
        let ck = &record.cache_key;
        let mut put = self.inner.scripts.put.prepare_invoke();
        put.key(self.tagged(ck, &format!("cert:{}", record.serial_hex)))
            .key(self.tagged(ck, "current"))
            .key(self.tagged(ck, "entry"))
            .arg(body)
            .arg(&record.serial_hex)
            .arg(record.not_after);
        self.script::<i64>(put).await?;
        let entry = codec::encode_index(&IndexEntry {
            cache_key: ck.clone(),
            serial: record.serial_hex.clone(),
        })?;
        for key in [
            self.index_key("serial", &record.serial_hex),
            self.index_key("fp", &record.fingerprint_hex),
        ] {
            let set = redis::cmd("SET")
                .arg(key)
                .arg(&entry)
                .arg("EXAT")
                .arg(record.not_after)
                .clone();
            self.query::<()>(&set).await?;
        }
        Ok(())
    }

    async fn find(&self, selector: &CertSelector) -> Result<Option<CertRecord>, StoreError> {
        let found = match selector {
            CertSelector::Serial(s) => self.lookup("serial", s).await?,
            CertSelector::Fingerprint(f) => self.lookup("fp", f).await?,
        };
        // An index entry may outlive a re-put under another key; trust only a match.
        Ok(found.filter(|r| match selector {
            CertSelector::Serial(s) => &r.serial_hex == s,
            CertSelector::Fingerprint(f) => &r.fingerprint_hex == f,
        }))
    }

    async fn evict(&self, record: &CertRecord) -> Result<(), StoreError> {
        let ck = &record.cache_key;
        let mut evict = self.inner.scripts.evict.prepare_invoke();
        evict
            .key(self.tagged(ck, "current"))
            .key(self.tagged(ck, &format!("cert:{}", record.serial_hex)))
            .key(self.tagged(ck, "entry"))
            .arg(&record.serial_hex);
        self.script::<i64>(evict).await?;
        for key in [
            self.index_key("serial", &record.serial_hex),
            self.index_key("fp", &record.fingerprint_hex),
        ] {
            self.query::<()>(redis::cmd("DEL").arg(key)).await?;
        }
        Ok(())
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        let token = LockToken::random();
        let set = redis::cmd("SET")
            .arg(self.tagged(key, "lock"))
            .arg(token.as_str())
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .clone();
        let ok: Option<String> = self.query(&set).await?;
        Ok(ok.map(|_| token))
    }

    async fn renew_lock(
        &self,
        key: &str,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut renew = self.inner.scripts.renew.prepare_invoke();
        renew
            .key(self.tagged(key, "lock"))
            .arg(token.as_str())
            .arg(millis(ttl));
        Ok(self.script::<i64>(renew).await? == 1)
    }

    async fn release_lock(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        let mut release = self.inner.scripts.release.prepare_invoke();
        release.key(self.tagged(key, "lock")).arg(token.as_str());
        self.script::<i64>(release).await.map(drop)
    }

    async fn set_progress(
        &self,
        key: &str,
        progress: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // Progress may hold an order's private key: sealed like every key at rest.
        let keyring = self.keyring_for("progress")?;
        let sealed = keyring.encrypt(progress, self.tagged(key, "progress").as_bytes())?;
        let set = redis::cmd("SET")
            .arg(self.tagged(key, "progress"))
            .arg(sealed)
            .arg("PX")
            .arg(millis(ttl))
            .clone();
        self.query(&set).await
    }

    async fn progress(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(self.tagged(key, "progress")))
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let keyring = self.keyring_for("progress")?;
        let plain = keyring.decrypt(&sealed, self.tagged(key, "progress").as_bytes())?;
        Ok(Some(plain.to_vec()))
    }

    async fn clear_progress(&self, key: &str) -> Result<(), StoreError> {
        self.query(redis::cmd("DEL").arg(self.tagged(key, "progress")))
            .await
    }

    async fn publish_ready(&self, key: &str) -> Result<(), StoreError> {
        let publish = redis::cmd("PUBLISH")
            .arg(&self.inner.routes.ready_channel)
            .arg(key)
            .clone();
        self.query(&publish).await
    }

    async fn wait_ready(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let rx = self.inner.routes.ready.subscribe();
        let lock = self.tagged(key, "lock");
        wait_for_ready(rx, key, timeout, POLL_INTERVAL, || {
            let exists = redis::cmd("EXISTS").arg(&lock).clone();
            async move { Ok(self.query::<i64>(&exists).await? > 0) }
        })
        .await
    }

    async fn put_negative(&self, key: &str, reason: &str, ttl: Duration) -> Result<(), StoreError> {
        let set = redis::cmd("SET")
            .arg(self.tagged(key, "negative"))
            .arg(reason)
            .arg("PX")
            .arg(millis(ttl))
            .clone();
        self.query(&set).await
    }

    async fn negative(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.query(redis::cmd("GET").arg(self.tagged(key, "negative")))
            .await
    }

    async fn publish_invalidation(&self, cache_key: &str) -> Result<(), StoreError> {
        let publish = redis::cmd("PUBLISH")
            .arg(&self.inner.routes.invalidate_channel)
            .arg(cache_key)
            .clone();
        self.query(&publish).await
    }

    async fn subscribe_invalidations(&self) -> Result<broadcast::Receiver<String>, StoreError> {
        Ok(self.inner.routes.invalidations.subscribe())
    }

    /// While the breaker is open, its last reason (the background probe runs meanwhile);
    /// otherwise the probe, run now. A failed probe opens the breaker.
    async fn health(&self) -> StoreHealth {
        if let Some(reason) = self.inner.breaker.open_reason() {
            return StoreHealth::Degraded(reason);
        }
        match self.probe().await {
            Ok(()) => StoreHealth::Ok,
            Err(reason) => {
                self.inner.breaker.trip(&reason);
                StoreHealth::Degraded(reason)
            }
        }
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis rejects 0).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Between lock checks in [`Store::wait_ready`] when no message arrives.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const CHANNEL_CAPACITY: usize = 1024;
/// Between background probes while the breaker is open.
const PROBE_EVERY: Duration = Duration::from_millis(250);
