//! L1 reads and the sweep of expired entries.

use super::*;
use crate::{broker::IssueError, store::MemoryStore};

#[derive(Debug)]
struct NoIssuer;

#[async_trait::async_trait]
impl Issuer for NoIssuer {
    fn has_pool(&self, _pool: &str) -> bool {
        true
    }
    async fn issue(&self, _req: &IssueRequest) -> Result<CertRecord, IssueError> {
        unreachable!("these tests never miss L1 into an issuance")
    }
    async fn revoke(&self, _cert: &CertRecord, _reason: u8) -> Result<(), IssueError> {
        unreachable!("these tests never revoke")
    }
}

fn record(key: &str, not_after: i64) -> Arc<CertRecord> {
    Arc::new(CertRecord {
        cache_key: key.into(),
        chain_pem: String::new(),
        chain_der: vec![],
        private_key_pkcs8: None,
        not_before: not_after - 60,
        not_after,
        serial_hex: format!("{not_after:x}"),
        fingerprint_hex: "f".into(),
        issuer_ca: "ca".into(),
        issuer_account: "a".into(),
        issued_at: not_after - 60,
        star: None,
    })
}

/// A broker that never issues, in front of a memory store.
fn broker() -> Broker {
    Broker::new(
        Arc::new(NoIssuer),
        Arc::new(MemoryStore::new()),
        BrokerOptions {
            cache_capacity: 100,
            default_min_remaining: Duration::ZERO,
            issuance_timeout: Duration::from_secs(1),
            lock_ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(1),
        },
    )
}

#[tokio::test]
async fn l1_never_answers_an_expired_certificate_and_sweeps_them() {
    let broker = broker();
    let inner = broker.inner();
    let (live, dead, dead2) = (
        CacheKey::of("live"),
        CacheKey::of("dead"),
        CacheKey::of("dead2"),
    );
    inner.l1.insert(live, record("live", now() + 600)).await;
    inner.l1.insert(dead, record("dead", now() - 1)).await;
    inner.l1.insert(dead2, record("dead2", now())).await;
    assert!(inner.l1_get(&live).await.is_some());
    assert!(inner.l1_get(&dead).await.is_none());
    // Dropped from L1 by the read that found it expired.
    assert!(inner.l1.get(&dead).await.is_none());
    // The sweep drops expired entries nobody reads, and only those.
    assert!(inner.l1.get(&dead2).await.is_some());
    inner.l1_sweep().await;
    assert!(inner.l1.get(&dead2).await.is_none());
    assert!(inner.l1.get(&live).await.is_some());
}

/// The flight an L1 miss spawns is moved into its task and its output out of it on every
/// L2 hit: it must not carry the issuance's state machine inline (3.8 KiB in a debug build
/// before it was boxed), which is copied on each of those moves. The issuance is boxed
/// behind it.
#[tokio::test]
async fn the_flight_future_of_an_l2_hit_stays_small() {
    let broker = broker();
    let req = &CertRequest::for_test(
        crate::cert::Identifiers::Dns(vec!["a.example".into()]),
        None,
        false,
    );
    let key = req.key();
    let flight = broker.lookup_or_obtain(
        key,
        IssueRequest::template(req, &key.to_string()),
        0,
        None,
        false,
    );
    assert!(size_of_val(&flight) <= 3072, "flight future grew");
}
