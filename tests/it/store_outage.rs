//! The shared store failing under load: Redis SIGKILLed in the middle of a burst over three
//! replicas and restarted on the same port, a stalled Redis (SIGSTOP), and a failed Redis
//! Cluster. Requests keep being served, no replica orders one certificate twice, the store's
//! health says what happened and comes back by itself.

use crate::support::common;
use crate::support::redis as support_redis;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use certbroker::{
    config::Settings,
    pb::CacheStatus,
    store::{RedisSettings, Store, StoreError, StoreHealth, connect},
};
use common::{DevEnv, TestBroker, spc_request};
use support_redis::{RedisCluster, RedisServer};
use tokio::time::Instant;
use tonic::transport::Channel;

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
const REPLICAS: usize = 3;
/// SPCs 0..WARM are issued while Redis is up; WARM..SPCS are first asked for during the outage.
const SPCS: usize = 20;
const WARM: usize = 10;
const WORKERS: usize = 45;
/// How long Redis stays down (the scenario, not a synchronisation).
const OUTAGE: Duration = Duration::from_secs(4);

/// Settings of replica `i`: its own ACME account at the devca (so orders can be counted per
/// replica there), the store on `store_toml`, no per-caller rate limit (one test process is
/// every caller).
fn replica(env: &DevEnv, store_toml: &str, i: usize) -> Settings {
    let mut s = Settings::from_toml(&format!(
        "[server]\nrate_limit_per_sec = 0\n[broker]\nlock_ttl_secs = 5\n[store]\n{store_toml}\ntimeout_ms = 500\n\
         [store.keyring]\nactive = \"k1\"\n[store.keyring.keys]\nk1 = \"{KEY1}\"\n"
    ))
    .expect("replica settings");
    let mut ca = env.ca_settings("devca");
    ca.account_key = env.dir.path().join(format!("replica{i}-account.pem"));
    s.ca = vec![ca];
    s
}

fn spc(i: usize) -> String {
    format!("{}", 7100 + i)
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// (phase, replica, SPC index) answered at least once.
    served: Mutex<HashSet<(u8, usize, usize)>>,
    /// Per phase: request latencies.
    latencies: Mutex<BTreeMap<u8, Vec<Duration>>>,
    /// Per phase: answers by cache status.
    statuses: Mutex<BTreeMap<(u8, String), u64>>,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_burst_one_order_per_replica_and_health_comes_back() {
    let mut redis = RedisServer::start();
    let env = DevEnv::start().await;
    let store = format!("backend = \"redis\"\nurl = \"{}\"", redis.url());
    let mut fleet = vec![];
    for i in 0..REPLICAS {
        fleet.push(TestBroker::start_settings(replica(&env, &store, i)).await);
    }
    let mut clients = vec![];
    for r in &fleet {
        clients.push(r.client().await);
    }

    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = vec![];
    for w in 0..WORKERS {
        let (clients, phase, stop, tally) =
            (clients.clone(), phase.clone(), stop.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let now = phase.load(Ordering::Relaxed);
                let spcs = if now == UP { WARM } else { SPCS };
                let (s, r) = ((n * 7 + w) % spcs, (n + w / 3) % REPLICAS);
                let mut client = clients[r].clone();
                let started = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(30),
                    client.get_certificate(spc_request(&spc(s))),
                )
                .await;
                let took = started.elapsed();
                match answer {
                    Ok(Ok(resp)) => {
                        let status = resp.into_inner().cache_status();
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        tally.served.lock().unwrap().insert((now, r, s));
                        *tally
                            .statuses
                            .lock()
                            .unwrap()
                            .entry((now, format!("{status:?}")))
                            .or_default() += 1;
                    }
                    Ok(Err(status)) => tally.failures.lock().unwrap().push(format!(
                        "phase {now}, replica {r}, SPC {}: {status:?}",
                        spc(s)
                    )),
                    Err(_) => tally.failures.lock().unwrap().push(format!(
                        "phase {now}, replica {r}, SPC {}: no answer in 30 s",
                        spc(s)
                    )),
                }
                tally
                    .latencies
                    .lock()
                    .unwrap()
                    .entry(now)
                    .or_default()
                    .push(took);
            }
        }));
    }
    let served_all = |p: u8, range: std::ops::Range<usize>| {
        let served = tally.served.lock().unwrap();
        (0..REPLICAS).all(|r| range.clone().all(|s| served.contains(&(p, r, s))))
    };

    // Redis up: every replica serves the warm SPCs (one order each, fleet-wide).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served_all(UP, 0..WARM) {
        assert!(
            Instant::now() < deadline,
            "the warm-up burst never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orders_before_outage = env.ca.stats().new_orders;

    // Redis SIGKILLed mid-burst; new SPCs are asked for on every replica while it is down.
    redis.kill();
    let killed = Instant::now();
    phase.store(DOWN, Ordering::Relaxed);
    let deadline = killed + Duration::from_secs(20);
    while killed.elapsed() < OUTAGE || !served_all(DOWN, 0..SPCS) {
        assert!(
            Instant::now() < deadline,
            "the outage burst never served every SPC on every replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restarted on the same port, empty: health comes back without a broker restart.
    redis.restart();
    let restarted = Instant::now();
    phase.store(BACK, Ordering::Relaxed);
    let deadline = restarted + Duration::from_secs(15);
    let mut health = vec![];
    for r in &fleet {
        health.push(r.health_client().await);
    }
    for (i, h) in health.iter_mut().enumerate() {
        while store_status(h).await != "Serving" {
            assert!(
                Instant::now() < deadline,
                "replica {i}: store health never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let serving_after = restarted.elapsed();
    // Keep the burst going a little on the recovered store.
    let ok_at_recovery = tally.ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.ok.load(Ordering::Relaxed) < ok_at_recovery + 300 {
        assert!(Instant::now() < deadline, "no answers after the recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // The numbers, for the README's failure-mode section.
    let latencies = tally.latencies.lock().unwrap().clone();
    for (p, mut l) in latencies {
        l.sort();
        let q = |f: f64| l[((l.len() as f64 * f) as usize).min(l.len() - 1)];
        eprintln!(
            "phase {p}: {} requests, p50 {:?}, p99 {:?}, max {:?}",
            l.len(),
            q(0.5),
            q(0.99),
            l[l.len() - 1]
        );
    }
    eprintln!("statuses: {:?}", tally.statuses.lock().unwrap());
    let fallbacks: Vec<u64> = fleet
        .iter()
        .map(|r| r.app.broker().stats().store_fallbacks())
        .collect();
    eprintln!(
        "store fallbacks per replica {fallbacks:?}; store health SERVING {serving_after:?} after the restart; orders {} before the outage, {} in all",
        orders_before_outage,
        env.ca.stats().new_orders
    );

    let failures = tally.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        failures.len() as u64 + tally.ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    let orders = env.ca.orders_per_account_and_identifier();
    let twice: Vec<_> = orders.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "a replica ordered one certificate more than once: {twice:?}"
    );
    let accounts: HashSet<&String> = orders.keys().map(|(a, _)| a).collect();
    assert!(accounts.len() <= REPLICAS, "{accounts:?}");
    assert!(
        fallbacks.iter().all(|f| *f > 0),
        "every replica issued without the store during the outage: {fallbacks:?}"
    );

    // The recovered store is shared again: one order for a new SPC, fleet-wide.
    let before = env.ca.stats().new_orders;
    let first = clients[0]
        .get_certificate(spc_request("7999"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.cache_status(), CacheStatus::Issued);
    let second = clients[1]
        .get_certificate(spc_request("7999"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.cache_status(), CacheStatus::HitShared);
    assert_eq!(second.serial_hex, first.serial_hex);
    assert_eq!(env.ca.stats().new_orders, before + 1);
}

/// The `certbroker.store` status, as the gRPC health service reports it now ("Unknown"
/// before the server's first report).
async fn store_status(
    health: &mut tonic_health::pb::health_client::HealthClient<Channel>,
) -> String {
    match health
        .check(tonic_health::pb::HealthCheckRequest {
            service: certbroker::api::STORE_HEALTH_SERVICE.into(),
        })
        .await
    {
        Ok(resp) => format!("{:?}", resp.into_inner().status()),
        Err(status) if status.code() == tonic::Code::NotFound => "Unknown".into(),
        Err(status) => panic!("health check failed: {status:?}"),
    }
}

/// GET on the admin listener: status code and body.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_redis_cluster_is_reported_not_serving() {
    let mut cluster = RedisCluster::start();
    let env = DevEnv::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "backend = \"redis-cluster\"\ncluster_nodes = [{}]",
        nodes.join(", ")
    );
    let broker = TestBroker::start_settings(replica(&env, &store, 0)).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(
        broker
            .app
            .clone()
            .serve_admin(admin, std::future::pending()),
    );
    let mut health = broker.health_client().await;
    let mut client = broker.client().await;

    // Healthy cluster: SERVING, and the store is used.
    let deadline = Instant::now() + Duration::from_secs(15);
    while store_status(&mut health).await != "Serving" {
        assert!(
            Instant::now() < deadline,
            "a healthy cluster never reported SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin_get(admin_addr, "/readyz/store").await.0, 200);
    let issued = client
        .get_certificate(spc_request("7201"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.cache_status(), CacheStatus::Issued);

    // One primary of three (no replicas) dies: its slots are lost, the cluster fails.
    cluster.nodes[1].kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    while !cluster.nodes[0]
        .raw("CLUSTER INFO")
        .contains("cluster_state:fail")
    {
        assert!(Instant::now() < deadline, "the cluster never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = killed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let grpc = store_status(&mut health).await;
        let (code, _) = admin_get(admin_addr, "/readyz/store").await;
        if grpc == "NotServing" && code == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a failed cluster is still reported as {grpc} / /readyz/store {code}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cluster_state:fail {failed:?} after the kill; NOT_SERVING {:?} after the kill",
        killed.elapsed()
    );
    // The replica keeps serving (degraded): /readyz stays 200 and says why; requests work.
    let (code, body) = admin_get(admin_addr, "/readyz").await;
    assert_eq!(code, 200);
    assert!(body.contains("shared store unreachable"), "{body}");
    let degraded = client
        .get_certificate(spc_request("7202"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(degraded.cache_status(), CacheStatus::Issued);
}

#[tokio::test]
async fn stalled_redis_costs_one_timeout_then_fails_fast_until_it_answers() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let store = connect(&RedisSettings {
        url: Some(server.url()),
        timeout_ms: 300,
        ..RedisSettings::default()
    })
    .await
    .unwrap();
    assert_eq!(store.current("ck").await.unwrap(), None);
    assert_eq!(store.health().await, StoreHealth::Ok);

    // A hung Redis: the first command waits out the timeout, then the breaker is open.
    server.pause();
    let started = Instant::now();
    let err = store.current("ck").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    let started = Instant::now();
    for _ in 0..20 {
        let err = store
            .try_lock("ck", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }
    let twenty = started.elapsed();
    assert!(
        twenty < timeout,
        "20 commands against a known-down Redis took {twenty:?}"
    );
    let started = Instant::now();
    assert!(matches!(store.health().await, StoreHealth::Degraded(_)));
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());

    // Redis answers again: the background probe closes the breaker, no reconnect by hand.
    server.resume();
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(10);
    while store.health().await != StoreHealth::Ok {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "20 commands while down: {twenty:?}; healthy {:?} after SIGCONT",
        resumed.elapsed()
    );
    assert!(
        store
            .try_lock("ck", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}
