//! `RedisStore` against real `redis-server` processes (standalone and a 3-node Cluster).

use crate::support::redis as support_redis;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use certbroker::store::{
    CertRecord, CertSelector, KeyringSettings, RedisSettings, RedisStore, SecretStore, Store,
    StoreError, StoreHealth, connect,
};
use redis::AsyncCommands;
use secrecy::SecretString;
use support_redis::{RedisCluster, RedisServer};

fn keyring(active: &str, keys: &[(&str, u8)]) -> KeyringSettings {
    KeyringSettings {
        active: active.into(),
        keys: keys
            .iter()
            .map(|(id, byte)| {
                (
                    (*id).to_owned(),
                    SecretString::from(B64.encode([*byte; 32])),
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

fn settings(url: &str) -> RedisSettings {
    RedisSettings {
        url: Some(url.into()),
        keyring: Some(keyring("a", &[("a", 1)])),
        timeout_ms: 500,
        ..RedisSettings::default()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A real PKCS#8 key (starts with SEQUENCE `30 81`), the kind the broker generates.
fn pkcs8() -> Vec<u8> {
    rcgen::KeyPair::generate().unwrap().serialize_der()
}

fn record(cache_key: &str, serial: &str, key: Option<Vec<u8>>) -> CertRecord {
    CertRecord {
        cache_key: cache_key.into(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        chain_der: vec![vec![0x30, 0x82, 0x01, 0x00, 7], vec![0x30, 0x03]],
        private_key_pkcs8: key,
        not_before: now() - 60,
        not_after: now() + 3600,
        serial_hex: serial.into(),
        fingerprint_hex: format!("fp-{serial}"),
        issuer_ca: "ca1".into(),
        issuer_account: "https://ca.example/acct/1".into(),
        issued_at: 0,
        star: None,
    }
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waits until `n` subscribers listen on `channel`, so a publish cannot be missed.
async fn wait_subscribers(url: &str, channel: &str, n: i64) {
    let mut conn = raw(url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        if counts.first().is_some_and(|(_, c)| *c >= n) {
            return;
        }
        assert!(Instant::now() < deadline, "no subscriber on {channel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn roundtrip(store: &RedisStore) {
    let old = record("ck-roundtrip", "01", Some(pkcs8()));
    let new = record("ck-roundtrip", "02", Some(pkcs8()));
    assert_eq!(store.current("ck-roundtrip").await.unwrap(), None);
    store.put(&old).await.unwrap();
    store.put(&new).await.unwrap();
    assert_eq!(
        store.current("ck-roundtrip").await.unwrap(),
        Some(new.clone())
    );
    let by_serial = CertSelector::Serial("01".into());
    let by_fp = CertSelector::Fingerprint("fp-02".into());
    assert_eq!(store.find(&by_serial).await.unwrap(), Some(old.clone()));
    assert_eq!(store.find(&by_fp).await.unwrap(), Some(new.clone()));

    store.evict(&old).await.unwrap();
    assert_eq!(store.find(&by_serial).await.unwrap(), None);
    assert_eq!(
        store.current("ck-roundtrip").await.unwrap(),
        Some(new.clone())
    );
    store.evict(&new).await.unwrap();
    assert_eq!(store.current("ck-roundtrip").await.unwrap(), None);
    assert_eq!(store.find(&by_fp).await.unwrap(), None);
}

/// Secret groups: shared between stores, sealed, expiring, dropped as a group.
async fn secrets(a: &RedisStore, b: &RedisStore) {
    let long = Duration::from_secs(60);
    a.put_secret("fp-1", "spc-a", b"jwt-one", long)
        .await
        .unwrap();
    a.put_secret("fp-1", "spc-b", b"jwt-two", long)
        .await
        .unwrap();
    b.put_secret("fp-2", "spc-a", b"jwt-three", long)
        .await
        .unwrap();
    b.put_secret("fp-2", "gone", b"x", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(
        &b.secret("fp-1", "spc-a").await.unwrap().unwrap()[..],
        b"jwt-one"
    );
    assert_eq!(b.secret("fp-1", "spc-c").await.unwrap(), None);
    // Its 100 ms TTL runs out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.secret("fp-2", "gone").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the secret outlived its TTL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.secret("fp-2", "gone").await.unwrap(), None);

    a.delete_secret("fp-2", "spc-a").await.unwrap();
    assert_eq!(b.secret("fp-2", "spc-a").await.unwrap(), None);
    a.put_secret("fp-2", "spc-a", b"jwt-three", long)
        .await
        .unwrap();

    assert_eq!(b.drop_secret_group("fp-1").await.unwrap(), 2);
    assert_eq!(a.secret("fp-1", "spc-a").await.unwrap(), None);
    assert_eq!(a.secret("fp-1", "spc-b").await.unwrap(), None);
    assert_eq!(
        &a.secret("fp-2", "spc-a").await.unwrap().unwrap()[..],
        b"jwt-three"
    );
    assert_eq!(a.drop_secret_group("fp-1").await.unwrap(), 0);
    assert_eq!(a.drop_secret_group("fp-2").await.unwrap(), 1);
}

async fn locks(a: &RedisStore, b: &RedisStore) {
    let ttl = Duration::from_secs(30);
    let ta = a
        .try_lock("ck-lock", ttl)
        .await
        .unwrap()
        .expect("first lock");
    assert_eq!(b.try_lock("ck-lock", ttl).await.unwrap(), None);

    // A token for another key is not the owner's: renew and release do nothing.
    let stranger = b.try_lock("ck-other", ttl).await.unwrap().unwrap();
    assert!(!b.renew_lock("ck-lock", &stranger, ttl).await.unwrap());
    b.release_lock("ck-lock", &stranger).await.unwrap();
    assert_eq!(b.try_lock("ck-lock", ttl).await.unwrap(), None);

    assert!(a.renew_lock("ck-lock", &ta, ttl).await.unwrap());
    a.release_lock("ck-lock", &ta).await.unwrap();
    let tb = b
        .try_lock("ck-lock", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(tb.is_some());
    assert_ne!(tb.as_ref(), Some(&ta));

    // Expires by itself: a crashed holder blocks nobody for long.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.try_lock("ck-lock", ttl).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the lock outlived its TTL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.renew_lock("ck-lock", &tb.unwrap(), ttl).await.unwrap());
}

#[tokio::test]
async fn roundtrip_and_locks_standalone() {
    let server = RedisServer::start();
    let a = connect(&settings(&server.url())).await.unwrap();
    let b = connect(&settings(&server.url())).await.unwrap();
    assert_eq!(a.health().await, StoreHealth::Ok);
    roundtrip(&a).await;
    locks(&a, &b).await;
}

#[tokio::test]
async fn stored_values_hold_no_plaintext_key_and_expire_at_not_after() {
    let server = RedisServer::start();
    let store = connect(&settings(&server.url())).await.unwrap();
    let key = pkcs8();
    assert_eq!(&key[..2], &[0x30, 0x81]);
    assert_eq!(
        &key[3..7],
        &[0x02, 0x01, 0x00, 0x30],
        "PKCS#8 version 0, then the algorithm"
    );
    let rec = record("ck-raw", "0a", Some(key.clone()));
    store.put(&rec).await.unwrap();

    let mut conn = raw(&server.url()).await;
    let mut keys: Vec<String> = conn.keys("certbroker:*").await.unwrap();
    // The health probe's own key holds a timestamp.
    keys.retain(|k| k != "certbroker:health");
    // cert:<serial>, current, entry, and the serial and fingerprint indexes.
    assert_eq!(keys.len(), 5, "{keys:?}");
    for k in &keys {
        let value: Vec<u8> = conn.get(k).await.unwrap();
        // No PKCS#8 header (SEQUENCE, version 0, AlgorithmIdentifier) of any plaintext
        // key; the certificates' own DER is stored as it is.
        assert!(!value.windows(8).any(|w| w == &key[..8]), "{k}");
        assert!(
            !value.windows(key.len()).any(|w| w == key.as_slice()),
            "{k}"
        );
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains(&B64.encode(&key)), "{k}");
        assert!(!text.contains(&hex::encode(&key)), "{k}");
        let expire_at: i64 = redis::cmd("EXPIRETIME")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            expire_at > now() && expire_at <= rec.not_after,
            "{k}: {expire_at}"
        );
    }
    assert_eq!(store.current("ck-raw").await.unwrap(), Some(rec));
}

/// Redis's own count of calls per command since the last `CONFIG RESETSTAT`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && !name.starts_with("config"))
        .collect()
}

#[tokio::test]
async fn a_hit_is_one_round_trip_and_older_layouts_still_read() {
    let server = RedisServer::start();
    let store = connect(&settings(&server.url())).await.unwrap();
    let mut conn = raw(&server.url()).await;
    let old = record("ck-one", "01", Some(pkcs8()));
    let new = record("ck-one", "02", Some(pkcs8()));
    store.put(&old).await.unwrap();
    store.put(&new).await.unwrap();

    // What Redis executed for one lookup: a single MGET.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.current("ck-one").await.unwrap(), Some(new.clone()));
    let calls = command_calls(&mut conn).await;
    assert_eq!(calls, BTreeMap::from([("mget".to_owned(), 1)]), "{calls:?}");

    // A stale copy (the entry names another serial than `current`, as after a put by a
    // broker that writes no entries) is not served: the record is read by serial.
    let stale: Vec<u8> = conn.get("certbroker:{ck-one}:cert:01").await.unwrap();
    let _: () = conn.set("certbroker:{ck-one}:entry", stale).await.unwrap();
    assert_eq!(store.current("ck-one").await.unwrap(), Some(new.clone()));
    // The layout before entries existed: only `current` and `cert:<serial>`.
    let _: () = conn.del("certbroker:{ck-one}:entry").await.unwrap();
    assert_eq!(store.current("ck-one").await.unwrap(), Some(new.clone()));

    // Evicting the current certificate removes its entry; evicting an older one does not.
    store.put(&new).await.unwrap();
    store.evict(&old).await.unwrap();
    assert!(
        conn.exists::<_, bool>("certbroker:{ck-one}:entry")
            .await
            .unwrap()
    );
    store.evict(&new).await.unwrap();
    assert!(
        !conn
            .exists::<_, bool>("certbroker:{ck-one}:entry")
            .await
            .unwrap()
    );
    assert_eq!(store.current("ck-one").await.unwrap(), None);
}

#[tokio::test]
async fn secrets_are_shared_sealed_and_bound_to_their_key() {
    let server = RedisServer::start();
    let a = connect(&settings(&server.url())).await.unwrap();
    let b = connect(&settings(&server.url())).await.unwrap();
    secrets(&a, &b).await;

    a.put_secret(
        "grp",
        "k1",
        b"eyJhbGciOiJFUzI1NiJ9.bearer",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let mut conn = raw(&server.url()).await;
    let keys: Vec<String> = conn.keys("*grp*item*").await.unwrap();
    assert_eq!(keys.len(), 1);
    let sealed: Vec<u8> = conn.get(&keys[0]).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&sealed).contains("eyJ"),
        "sealed at rest"
    );
    let ttl: i64 = conn.ttl(&keys[0]).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    // Moved under another key, the blob no longer opens.
    let other = keys[0].replace("k1", "k2");
    let _: () = conn.set(&other, sealed).await.unwrap();
    assert!(matches!(
        a.secret("grp", "k2").await,
        Err(StoreError::Decrypt(_))
    ));

    let no_keyring = connect(&RedisSettings {
        keyring: None,
        ..settings(&server.url())
    })
    .await
    .unwrap();
    let err = no_keyring
        .put_secret("grp", "k3", b"secret", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
}

#[tokio::test]
async fn keys_at_rest_always_need_a_keyring() {
    let server = RedisServer::start();
    let store = connect(&RedisSettings {
        keyring: None,
        ..settings(&server.url())
    })
    .await
    .unwrap();
    let err = store
        .put(&record("ck", "01", Some(pkcs8())))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    assert_eq!(store.current("ck").await.unwrap(), None);
    // Certificates whose key the caller keeps need no keyring.
    let csr_based = record("ck", "02", None);
    store.put(&csr_based).await.unwrap();
    assert_eq!(store.current("ck").await.unwrap(), Some(csr_based));
}

#[tokio::test]
async fn key_rotation_keeps_old_entries_readable() {
    let server = RedisServer::start();
    let with = |ring| RedisSettings {
        keyring: Some(ring),
        ..settings(&server.url())
    };
    let only_a = connect(&with(keyring("a", &[("a", 1)]))).await.unwrap();
    let old = record("ck-old", "01", Some(pkcs8()));
    only_a.put(&old).await.unwrap();

    let b_active = connect(&with(keyring("b", &[("a", 1), ("b", 2)])))
        .await
        .unwrap();
    assert_eq!(b_active.current("ck-old").await.unwrap(), Some(old.clone()));
    let new = record("ck-new", "02", Some(pkcs8()));
    b_active.put(&new).await.unwrap();
    let mut conn = raw(&server.url()).await;
    let stored: Vec<u8> = conn.get("certbroker:{ck-new}:cert:02").await.unwrap();
    // The sealed key is the one field starting with the keyring blob's header (version 1,
    // key id "b" of length 1) right after its presence byte and length.
    let sealed_with = |id: u8| stored.windows(8).any(|w| w[0] == 1 && w[5..] == [1, 1, id]);
    assert!(
        sealed_with(b'b') && !sealed_with(b'a'),
        "new entries are sealed with the active key"
    );

    let only_b = connect(&with(keyring("b", &[("b", 2)]))).await.unwrap();
    assert_eq!(only_b.current("ck-new").await.unwrap(), Some(new));
    let err = only_b.current("ck-old").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Decrypt(m) if m.contains("\"a\"")),
        "names the missing key id: {err}"
    );

    // Same id, other key material: refused, never garbage.
    let wrong = connect(&with(keyring("a", &[("a", 9)]))).await.unwrap();
    let err = wrong.current("ck-old").await.unwrap_err();
    assert!(matches!(err, StoreError::Decrypt(_)), "{err}");
}

/// A rolling upgrade: records an earlier release wrote as JSON (DER and the sealed key in
/// base64) stay readable, key included, and are found by serial too.
#[tokio::test]
async fn records_an_earlier_release_wrote_as_json_still_read() {
    let server = RedisServer::start();
    let store = connect(&settings(&server.url())).await.unwrap();
    // The sealed key of a JSON record has the same blob as a binary one: take it from a
    // record this release wrote, then write the JSON layout an earlier release wrote.
    let old = record("ck-json", "0c", Some(pkcs8()));
    store.put(&old).await.unwrap();
    let mut conn = raw(&server.url()).await;
    let binary: Vec<u8> = conn.get("certbroker:{ck-json}:cert:0c").await.unwrap();
    assert_eq!(binary[0], 1, "this release writes the binary layout");
    let blob_start = binary
        .windows(8)
        .position(|w| w[0] == 1 && w[5..] == [1, 1, b'a'])
        .unwrap();
    let len = u32::from_le_bytes(binary[blob_start + 1..blob_start + 5].try_into().unwrap());
    let blob = &binary[blob_start + 5..blob_start + 5 + len as usize];
    let json = serde_json::json!({
        "cache_key": old.cache_key,
        "chain_pem": old.chain_pem,
        "chain_der": old.chain_der.iter().map(|d| B64.encode(d)).collect::<Vec<_>>(),
        "sealed_key": B64.encode(blob),
        "not_before": old.not_before,
        "not_after": old.not_after,
        "serial_hex": old.serial_hex,
        "fingerprint_hex": old.fingerprint_hex,
        "issuer_ca": old.issuer_ca,
        "issuer_account": old.issuer_account,
        "issued_at": old.issued_at,
    })
    .to_string();
    for k in ["cert:0c", "entry"] {
        let _: () = conn
            .set(format!("certbroker:{{ck-json}}:{k}"), &json)
            .await
            .unwrap();
    }
    let fresh = connect(&settings(&server.url())).await.unwrap();
    assert_eq!(fresh.current("ck-json").await.unwrap(), Some(old.clone()));
    assert_eq!(
        fresh
            .find(&CertSelector::Serial("0c".into()))
            .await
            .unwrap(),
        Some(old)
    );
}

#[tokio::test]
async fn wait_ready_wakes_on_publish_and_by_polling() {
    let server = RedisServer::start();
    let a = connect(&settings(&server.url())).await.unwrap();
    let b = connect(&settings(&server.url())).await.unwrap();
    wait_subscribers(&server.url(), "certbroker:ready", 2).await;
    let ttl = Duration::from_secs(30);

    // Lock held throughout: only the message can end the wait.
    let token = a.try_lock("ck", ttl).await.unwrap().unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait_ready("ck", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let published = Instant::now();
    a.publish_ready("ck").await.unwrap();
    waiter.await.unwrap().unwrap();
    assert!(published.elapsed() < Duration::from_secs(1));

    // Published before the waiter subscribed: the lock check ends the wait. The waiter is
    // a third replica that subscribes only after the message went out (b's subscription
    // might still be delivering it to b's waiters, which would rightly wake them).
    a.publish_ready("ck").await.unwrap();
    let c = connect(&settings(&server.url())).await.unwrap();
    wait_subscribers(&server.url(), "certbroker:ready", 3).await;
    let waiter = tokio::spawn({
        let c = c.clone();
        async move { c.wait_ready("ck", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "still locked, message already gone");
    let released = Instant::now();
    a.release_lock("ck", &token).await.unwrap();
    waiter.await.unwrap().unwrap();
    assert!(released.elapsed() < Duration::from_secs(1));

    // Nothing in flight: returns at once. Held past the timeout: TimedOut.
    b.wait_ready("ck", Duration::ZERO).await.unwrap();
    a.try_lock("ck", ttl).await.unwrap().unwrap();
    let err = b
        .wait_ready("ck", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TimedOut(_)), "{err}");
}

#[tokio::test]
async fn progress_negative_and_invalidations() {
    let server = RedisServer::start();
    let a = connect(&settings(&server.url())).await.unwrap();
    let b = connect(&settings(&server.url())).await.unwrap();
    let ttl = Duration::from_secs(30);

    a.set_progress("ck", b"{\"order\":\"https://ca/order/1\"}", ttl)
        .await
        .unwrap();
    assert_eq!(
        b.progress("ck").await.unwrap().as_deref(),
        Some(&b"{\"order\":\"https://ca/order/1\"}"[..])
    );
    b.clear_progress("ck").await.unwrap();
    assert_eq!(a.progress("ck").await.unwrap(), None);

    a.put_negative(
        "ck",
        "{\"type\":\"rejectedIdentifier\"}",
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_eq!(
        b.negative("ck").await.unwrap().as_deref(),
        Some("{\"type\":\"rejectedIdentifier\"}")
    );
    // Its 300 ms TTL runs out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.negative("ck").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the refusal outlived its TTL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.negative("ck").await.unwrap(), None);

    let mut rx = b.subscribe_invalidations().await.unwrap();
    wait_subscribers(&server.url(), "certbroker:invalidate", 2).await;
    a.publish_invalidation("ck-stale").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert_eq!(got.unwrap().unwrap(), "ck-stale");
}

#[tokio::test]
async fn outage_is_prompt_unavailable_and_recovery_needs_no_new_store() {
    let mut server = RedisServer::start();
    let store = connect(&settings(&server.url())).await.unwrap();
    let mut rx = store.subscribe_invalidations().await.unwrap();
    store.put(&record("ck", "01", Some(pkcs8()))).await.unwrap();

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.current("ck").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        let err = store
            .try_lock("ck", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(matches!(store.health().await, StoreHealth::Degraded(_)));

    server.restart();
    let rec = record("ck", "02", Some(pkcs8()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.put(&rec).await.is_err() {
        assert!(Instant::now() < deadline, "store never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.current("ck").await.unwrap(), Some(rec));
    assert_eq!(store.health().await, StoreHealth::Ok);

    // The subscription came back by itself too.
    wait_subscribers(&server.url(), "certbroker:invalidate", 1).await;
    store.publish_invalidation("ck").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert_eq!(got.unwrap().unwrap(), "ck");
}

#[tokio::test]
async fn starts_degraded_while_redis_is_down() {
    let mut server = RedisServer::reserved();
    let started = Instant::now();
    let store = connect(&settings(&server.url())).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(store.health().await, StoreHealth::Degraded(_)));
    assert!(matches!(
        store.current("ck").await,
        Err(StoreError::Unavailable(_))
    ));

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.health().await != StoreHealth::Ok {
        assert!(Instant::now() < deadline, "store never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    roundtrip(&store).await;
}

#[tokio::test]
async fn settings_are_checked() {
    for bad in [
        RedisSettings::default(),
        RedisSettings {
            cluster_nodes: vec!["redis://127.0.0.1:1".into()],
            ..settings("redis://127.0.0.1:1")
        },
        RedisSettings {
            prefix: "a{b}".into(),
            ..settings("redis://127.0.0.1:1")
        },
        RedisSettings {
            keyring: Some(keyring("missing", &[("a", 1)])),
            ..settings("redis://127.0.0.1:1")
        },
        settings("http://not-redis"),
    ] {
        let err = connect(&bad).await.unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{bad:?}: {err}");
    }
    let s = settings("redis://user:hunter2@127.0.0.1:1");
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[tokio::test]
async fn cluster_roundtrip_locks_and_ready() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let cluster_settings = RedisSettings {
        url: None,
        cluster_nodes: cluster.urls(),
        ..settings("unused")
    };
    let a = connect(&cluster_settings).await.unwrap();
    let b = connect(&cluster_settings).await.unwrap();
    assert_eq!(a.health().await, StoreHealth::Ok);
    roundtrip(&a).await;
    locks(&a, &b).await;
    secrets(&a, &b).await;

    // Both stores subscribe on the first seed node; PUBLISH may land on any node and
    // still reaches them.
    wait_subscribers(&cluster.urls()[0], "certbroker:ready", 2).await;
    let token = a
        .try_lock("ck-ready", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait_ready("ck-ready", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let published = Instant::now();
    a.publish_ready("ck-ready").await.unwrap();
    waiter.await.unwrap().unwrap();
    assert!(published.elapsed() < Duration::from_secs(1));
    a.release_lock("ck-ready", &token).await.unwrap();
}
