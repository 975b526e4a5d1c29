//! Several broker replicas sharing one real `redis-server` (and a Redis Cluster) in front of
//! one devca: one ACME order per certificate fleet-wide, degradation when Redis goes away,
//! keys at rest encrypted, fleet-wide negative cache and invalidation.

use crate::support::common;
use crate::support::redis as support_redis;

use std::{collections::HashMap, time::Duration};

use certbroker::{
    app::App,
    config::Settings,
    devca::TokenFault,
    pb::{self, CacheStatus},
};
use common::{DevEnv, TestBroker, spc_request};
use support_redis::{RedisCluster, RedisServer};
use tonic::Code;

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="; // 32 bytes

/// Broker settings for a fleet on `store_toml`, with keyring `keyring_toml`.
fn settings(env: &DevEnv, store_toml: &str, keyring_toml: &str) -> Settings {
    let mut s = Settings::from_toml(&format!(
        "[broker]\nlock_ttl_secs = 5\nnegative_ttl_secs = 30\n[store]\n{store_toml}\ntimeout_ms = 500\n{keyring_toml}"
    ))
    .expect("fleet settings");
    s.ca = vec![env.ca_settings("devca")];
    s
}

fn keyring(active: &str, keys: &[(&str, &str)]) -> String {
    let mut t = format!("[store.keyring]\nactive = \"{active}\"\n[store.keyring.keys]\n");
    for (id, k) in keys {
        t.push_str(&format!("{id} = \"{k}\"\n"));
    }
    t
}

fn redis_store(url: &str) -> String {
    format!("backend = \"redis\"\nurl = \"{url}\"")
}

async fn replicas(settings: &Settings, n: usize) -> Vec<TestBroker> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(TestBroker::start_settings(settings.clone()).await);
    }
    out
}

/// `n` concurrent GetCertificate calls for one SPC spread over the replicas; returns the
/// count per cache status and the set of serials.
async fn burst(
    replicas: &[TestBroker],
    spc: &str,
    n: usize,
) -> (HashMap<CacheStatus, usize>, Vec<String>) {
    let mut clients = vec![];
    for r in replicas {
        clients.push(r.client().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = vec![];
    for i in 0..n {
        let mut c = clients[i % clients.len()].clone();
        let (spc, barrier) = (spc.to_owned(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            c.get_certificate(spc_request(&spc))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut statuses = HashMap::new();
    let mut serials = vec![];
    for t in tasks {
        let r = t.await.unwrap().expect("every caller gets a certificate");
        *statuses.entry(r.cache_status()).or_default() += 1;
        serials.push(r.serial_hex);
    }
    serials.sort();
    serials.dedup();
    (statuses, serials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_300_requests_one_order() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let fleet = replicas(&s, 3).await;

    let (statuses, serials) = burst(&fleet, "7777", 300).await;
    assert_eq!(
        serials.len(),
        1,
        "one certificate for everyone: {serials:?}"
    );
    assert_eq!(statuses.get(&CacheStatus::Issued), Some(&1), "{statuses:?}");
    let others: usize = [
        CacheStatus::Joined,
        CacheStatus::HitShared,
        CacheStatus::HitLocal,
    ]
    .iter()
    .map(|s| statuses.get(s).copied().unwrap_or(0))
    .sum();
    assert_eq!(others, 299, "{statuses:?}");
    assert!(
        statuses.get(&CacheStatus::Joined).copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    let stats = env.ca.stats();
    assert_eq!((stats.new_orders, stats.finalizes), (1, 1));

    // A replica that never saw the key finds it in Redis.
    let late = TestBroker::start_settings(s.clone()).await;
    let r = late
        .client()
        .await
        .get_certificate(spc_request("7777"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.cache_status(), CacheStatus::HitShared);
    assert_eq!(r.serial_hex, serials[0]);
    assert!(
        !r.private_key_pkcs8_der.is_empty(),
        "the key survives the round trip through Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_degrades_then_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let fleet = replicas(&s, 2).await;
    let (mut a, mut b) = (fleet[0].client().await, fleet[1].client().await);

    a.get_certificate(spc_request("1001")).await.unwrap();
    redis.kill();
    // Requests keep working: from L1, and by issuing directly.
    let hit = a
        .get_certificate(spc_request("1001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.cache_status(), CacheStatus::HitLocal);
    let fresh = b
        .get_certificate(spc_request("1002"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.cache_status(), CacheStatus::Issued);
    assert!(
        fleet[1].app.broker().stats().store_fallbacks() > 0,
        "fallback counted"
    );
    assert_eq!(store_health(&fleet[1], "NotServing").await, "NotServing");

    redis.restart();
    wait_until_store_ok(&fleet).await;
    let issued = a
        .get_certificate(spc_request("1003"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.cache_status(), CacheStatus::Issued);
    let orders = env.ca.stats().new_orders;
    let shared = b
        .get_certificate(spc_request("1003"))
        .await
        .unwrap()
        .into_inner();
    // Found in Redis: directly, or after taking the lock and re-checking while the
    // connection manager re-established its connection.
    assert!(
        matches!(
            shared.cache_status(),
            CacheStatus::HitShared | CacheStatus::Joined
        ),
        "{:?}",
        shared.cache_status()
    );
    assert_eq!(shared.serial_hex, issued.serial_hex, "Redis is used again");
    assert_eq!(env.ca.stats().new_orders, orders, "no second order");
    assert_eq!(store_health(&fleet[1], "Serving").await, "Serving");
}

/// The broker's `certbroker.store` health once it reads `want`, or what it last read when
/// 6 s (three of its two-second refreshes) have passed without.
async fn store_health(broker: &TestBroker, want: &str) -> String {
    let mut health = broker.health_client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: certbroker::api::STORE_HEALTH_SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let now = format!("{:?}", resp.status());
        if now == want || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica's store answers again (its breaker closed and a probe through
/// its own connection answered), at most 10 s.
async fn wait_until_store_ok(fleet: &[TestBroker]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for broker in fleet {
        while !broker.app.broker().store_ok().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store did not come back within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_at_rest_are_ciphertext_and_keyring_mistakes_stop_startup() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let fleet = replicas(&s, 1).await;
    let resp = fleet[0]
        .client()
        .await
        .get_certificate(spc_request("2001"))
        .await
        .unwrap()
        .into_inner();
    let key = resp.private_key_pkcs8_der;
    assert!(key.len() > 100);

    // Read every value raw: the key is nowhere in the clear.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind != "string" {
            continue;
        }
        let v: Vec<u8> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !v.windows(key.len()).any(|w| w == key.as_slice()),
            "{k} holds the key"
        );
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key);
        assert!(
            !String::from_utf8_lossy(&v).contains(&b64[..40]),
            "{k} holds the key in base64"
        );
    }

    // The same id with another key: refused at start-up, naming the setting.
    let wrong = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY2)]),
    );
    let err = App::build(&wrong).await.unwrap_err();
    assert!(format!("{err:#}").contains("store.keyring"), "{err:#}");
    // Dropping the key that sealed existing entries: refused too.
    let missing = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k2", &[("k2", KEY2)]),
    );
    let err = App::build(&missing).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("lacks key id \"k1\""),
        "{err:#}"
    );

    // Rotation: k2 active, k1 kept: old entries still read.
    let rotated = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k2", &[("k1", KEY1), ("k2", KEY2)]),
    );
    let r = TestBroker::start_settings(rotated).await;
    let old = r
        .client()
        .await
        .get_certificate(spc_request("2001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.cache_status(), CacheStatus::HitShared);
    assert_eq!(old.private_key_pkcs8_der, key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_are_remembered_fleet_wide() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let fleet = replicas(&s, 2).await;
    env.ca
        .behaviour()
        .set_token_fault(Some(TokenFault::WrongKey));
    let first = fleet[0]
        .client()
        .await
        .get_certificate(spc_request("3001"))
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition);
    let orders = env.ca.stats().new_orders;
    let second = fleet[1]
        .client()
        .await
        .get_certificate(spc_request("3001"))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition);
    assert!(
        second.message().contains("remembered refusal"),
        "{}",
        second.message()
    );
    assert!(
        second.message().contains("unauthorized"),
        "{}",
        second.message()
    );
    assert_eq!(
        env.ca.stats().new_orders,
        orders,
        "the CA was not asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_on_one_replica_invalidates_the_others() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let fleet = replicas(&s, 2).await;
    let (mut a, mut b) = (fleet[0].client().await, fleet[1].client().await);
    let first = a
        .get_certificate(spc_request("4001"))
        .await
        .unwrap()
        .into_inner();
    let seen = b
        .get_certificate(spc_request("4001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.cache_status(), CacheStatus::HitShared);
    a.revoke(pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::SerialHex(
            first.serial_hex.clone(),
        )),
        reason: 0,
    })
    .await
    .unwrap();
    // Replica b hears of the revocation through the store's invalidation channel: until
    // then its L1 still answers with the revoked certificate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let r = b
            .get_certificate(spc_request("4001"))
            .await
            .unwrap()
            .into_inner();
        if r.serial_hex != first.serial_hex || tokio::time::Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        after.serial_hex, first.serial_hex,
        "replica b dropped the revoked certificate"
    );
    assert_eq!(after.cache_status(), CacheStatus::Issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_fleet_dedups_too() {
    let cluster = RedisCluster::start();
    let env = DevEnv::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "backend = \"redis-cluster\"\ncluster_nodes = [{}]",
        nodes.join(", ")
    );
    let s = settings(&env, &store, &keyring("k1", &[("k1", KEY1)]));
    let fleet = replicas(&s, 3).await;
    let (statuses, serials) = burst(&fleet, "5005", 300).await;
    assert_eq!(serials.len(), 1);
    assert_eq!(statuses.get(&CacheStatus::Issued), Some(&1), "{statuses:?}");
    assert_eq!(env.ca.stats().new_orders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_auth_from_the_url() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let env = DevEnv::start().await;
    let with_auth = redis.url().replacen("redis://", "redis://:s3cret@", 1);
    let s = settings(
        &env,
        &redis_store(&with_auth),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let fleet = replicas(&s, 2).await;
    let first = fleet[0]
        .client()
        .await
        .get_certificate(spc_request("8008"))
        .await
        .unwrap()
        .into_inner();
    let second = fleet[1]
        .client()
        .await
        .get_certificate(spc_request("8008"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.cache_status(),
        CacheStatus::HitShared,
        "shared through the authenticated Redis"
    );
    assert_eq!(second.serial_hex, first.serial_hex);

    // Without the password the store is unusable: the broker degrades instead of failing.
    let s = settings(
        &env,
        &redis_store(&redis.url()),
        &keyring("k1", &[("k1", KEY1)]),
    );
    let r = TestBroker::start_settings(s).await;
    let resp = r
        .client()
        .await
        .get_certificate(spc_request("8009"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.cache_status(), CacheStatus::Issued);
    assert!(r.app.broker().stats().store_fallbacks() > 0);
}
