//! Redis as operators run it, each against real `redis-server` processes: TLS with a
//! private CA (`rediss://` + `store.trust_roots`), an ACL user with exactly the commands
//! the README documents (the default user disabled), Sentinel failover and Cluster
//! failover with replicas. Each fleet test checks one ACME order per certificate across
//! two brokers.

use crate::support::common;
use crate::support::pki as support_pki;
use crate::support::redis as support_redis;

use std::time::{Duration, Instant};

use certbroker::{
    config::Settings,
    pb::CacheStatus,
    store::{RedisSettings, Store, StoreHealth, connect},
};
use common::{DevEnv, TestBroker, spc_request};
use support_pki::TestCa;
use support_redis::{RedisCluster, RedisServer, Sentinel};

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

/// Broker settings on `store_toml` (lines of `[store]`), with a keyring.
fn settings(env: &DevEnv, store_toml: &str) -> Settings {
    let mut s = Settings::from_toml(&format!(
        "[broker]\nlock_ttl_secs = 5\n[store]\n{store_toml}\ntimeout_ms = 500\n\
         [store.keyring]\nactive = \"k1\"\n[store.keyring.keys]\nk1 = \"{KEY1}\"\n"
    ))
    .expect("settings");
    s.ca = vec![env.ca_settings("devca")];
    s
}

/// Two brokers on `s`: the first issues `spc`, the second finds it in Redis; one order.
async fn one_order_across_two(env: &DevEnv, s: &Settings, spc: &str) -> (TestBroker, TestBroker) {
    let a = TestBroker::start_settings(s.clone()).await;
    let b = TestBroker::start_settings(s.clone()).await;
    // Both replicas reach the store first: over TLS (and through sentinels) the first
    // connection can take longer than the store timeout on a loaded machine, and a replica
    // whose breaker opened at start-up rightly issues on its own.
    let deadline = Instant::now() + Duration::from_secs(15);
    for broker in [&a, &b] {
        while !broker.app.broker().store_ok().await {
            assert!(
                Instant::now() < deadline,
                "a replica did not reach the store within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let before = env.ca.stats().new_orders;
    let issued = a
        .client()
        .await
        .get_certificate(spc_request(spc))
        .await
        .expect("first broker issues")
        .into_inner();
    assert_eq!(issued.cache_status(), CacheStatus::Issued);
    let shared = b
        .client()
        .await
        .get_certificate(spc_request(spc))
        .await
        .expect("second broker answers")
        .into_inner();
    assert_eq!(
        shared.cache_status(),
        CacheStatus::HitShared,
        "the second broker finds it in the shared Redis"
    );
    assert_eq!(shared.serial_hex, issued.serial_hex);
    assert_eq!(
        env.ca.stats().new_orders,
        before + 1,
        "one order fleet-wide"
    );
    (a, b)
}

/// A test CA and a server certificate for 127.0.0.1/localhost, written as PEM files.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("redis test CA");
        // Both roles: cluster nodes and replicas also connect to each other with it.
        let leaf = ca.server_and_client();
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.path().join("redis.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("redis.key"), &leaf.key_pem).unwrap();
        // Another CA, which did not sign the server: trusting it must fail.
        std::fs::write(dir.path().join("other-ca.pem"), TestCa::new("other CA").pem).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self) -> RedisServer {
        RedisServer::start_tls(
            &self.path("redis.pem"),
            &self.path("redis.key"),
            &self.path("ca.pem"),
        )
    }
}

/// Polls the broker's `certbroker.store` gRPC health until it reads `want` ("Serving",
/// "NotServing"), at most `secs` seconds.
async fn wait_store_health(broker: &TestBroker, want: &str, secs: u64) {
    let mut health = broker.health_client().await;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        last = match health
            .check(tonic_health::pb::HealthCheckRequest {
                service: certbroker::api::STORE_HEALTH_SERVICE.into(),
            })
            .await
        {
            Ok(resp) => format!("{:?}", resp.into_inner().status()),
            Err(status) => format!("error {status:?}"),
        };
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("store health is {last}, not {want}, after {secs} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_a_private_ca_fleet_shares_one_order() {
    let files = TlsFiles::new();
    let redis = files.server();
    let url = format!("rediss://127.0.0.1:{}", redis.port());

    // Store level: the private CA works; the system roots and a wrong CA do not.
    let with = |roots: Option<std::path::PathBuf>| RedisSettings {
        url: Some(url.clone()),
        trust_roots: roots,
        timeout_ms: 1000,
        ..RedisSettings::default()
    };
    let store = connect(&with(Some(files.path("ca.pem")))).await.unwrap();
    assert_eq!(store.health().await, StoreHealth::Ok);
    for roots in [None, Some(files.path("other-ca.pem"))] {
        let store = connect(&with(roots.clone())).await.unwrap();
        match store.health().await {
            StoreHealth::Degraded(reason) => assert!(
                reason.to_lowercase().contains("certificate")
                    || reason.to_lowercase().contains("tls"),
                "{roots:?}: {reason}"
            ),
            StoreHealth::Ok => panic!("{roots:?}: an untrusted server certificate was accepted"),
        }
    }
    // A private CA for a plaintext URL is a configuration mistake.
    let err = connect(&RedisSettings {
        url: Some(format!("redis://127.0.0.1:{}", redis.port())),
        ..with(Some(files.path("ca.pem")))
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("rediss://"), "{err}");

    // Fleet level, through the broker's own config (`store.trust_roots`).
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &format!(
            "backend = \"redis\"\nurl = \"{url}\"\ntrust_roots = \"{}\"",
            files.path("ca.pem").display()
        ),
    );
    let (a, _b) = one_order_across_two(&env, &s, "4101").await;
    wait_store_health(&a, "Serving", 10).await;
}

/// The ACL lines of the README's "ACL user" paragraph, `PASSWORD` replaced.
fn documented_acl(password: &str) -> Vec<Vec<String>> {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    let lines: Vec<Vec<String>> = readme
        .lines()
        .filter(|l| l.starts_with("user certbroker on ") || *l == "user default off")
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|w| w.replace("PASSWORD", password))
                .collect()
        })
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "the README documents the certbroker and default users"
    );
    lines
}

/// `redis-cli` as the test's admin user.
fn admin(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "admin", "--pass", "adminpw", "--no-auth-warning"])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acl_user_with_exactly_the_documented_commands_and_a_wrong_password() {
    let mut args: Vec<String> = vec![];
    for user in documented_acl("s3cret-pw") {
        args.push("--user".into());
        args.extend(user);
    }
    // An admin for the checks below (the broker never uses it).
    args.extend(
        ["--user", "admin", "on", ">adminpw", "~*", "&*", "+@all"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = RedisServer::start_with(&argv);
    assert!(
        redis.raw("PING").starts_with("-NOAUTH"),
        "the default user is disabled"
    );

    let env = DevEnv::start().await;
    let url = format!("redis://certbroker:s3cret-pw@127.0.0.1:{}", redis.port());
    let s = settings(&env, &format!("backend = \"redis\"\nurl = \"{url}\""));
    let (a, b) = one_order_across_two(&env, &s, "4201").await;
    // Revocation evicts and publishes an invalidation: more of the store's commands.
    let mut c = a.client().await;
    let r = c
        .get_certificate(spc_request("4201"))
        .await
        .unwrap()
        .into_inner();
    c.revoke(certbroker::pb::RevokeRequest {
        target: Some(certbroker::pb::revoke_request::Target::SerialHex(
            r.serial_hex.clone(),
        )),
        reason: certbroker::pb::RevocationReason::Superseded as i32,
    })
    .await
    .expect("revoke");
    wait_store_health(&a, "Serving", 10).await;
    wait_store_health(&b, "Serving", 10).await;
    let log = admin(redis.port(), &["ACL", "LOG"]);
    assert!(log.trim().is_empty(), "a command was refused: {log}");
    let clients = admin(redis.port(), &["CLIENT", "LIST"]);
    assert!(
        clients
            .lines()
            .any(|l| l.contains("user=certbroker") && l.contains("sub=2")),
        "a subscription as certbroker to both channels: {clients}"
    );
    drop((a, b));

    // A wrong password: start-up goes on, the store says why it is unusable.
    let wrong = RedisSettings {
        url: Some(format!(
            "redis://certbroker:wrong@127.0.0.1:{}",
            redis.port()
        )),
        timeout_ms: 500,
        ..RedisSettings::default()
    };
    match connect(&wrong).await.unwrap().health().await {
        StoreHealth::Degraded(reason) => {
            assert!(reason.contains("redis refused the credentials"), "{reason}")
        }
        StoreHealth::Ok => panic!("a wrong password was accepted"),
    }
    let s = settings(
        &env,
        &format!(
            "backend = \"redis\"\nurl = \"redis://certbroker:wrong@127.0.0.1:{}\"",
            redis.port()
        ),
    );
    let broker = TestBroker::start_settings(s).await;
    wait_store_health(&broker, "NotServing", 10).await;
    let r = broker
        .client()
        .await
        .get_certificate(spc_request("4202"))
        .await
        .expect("served without the store")
        .into_inner();
    assert_eq!(r.cache_status(), CacheStatus::Issued);
}

/// Polls `f` (blocking) until it is true, at most `secs` seconds.
fn poll(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the store health until it reads NotServing (how long that took) or `over` says
/// the outage ended first (`None`), at most `secs` seconds.
async fn not_serving_unless_over(
    broker: &TestBroker,
    secs: u64,
    mut over: impl FnMut() -> bool,
) -> Option<Duration> {
    let mut health = broker.health_client().await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: certbroker::api::STORE_HEALTH_SERVICE.into(),
            })
            .await
            .map(|r| r.into_inner().status());
        if matches!(
            status,
            Ok(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        ) {
            return Some(start.elapsed());
        }
        if over() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("store health never NotServing and the outage not over after {secs} s");
}

/// Polls the store health until it reads `want`; how long that took.
async fn time_until_store_health(broker: &TestBroker, want: &str, secs: u64) -> Duration {
    let start = Instant::now();
    wait_store_health(broker, want, secs).await;
    start.elapsed()
}

/// During a failover gap the broker still answers `spc` (from the CA directly, or from a
/// shared entry that survived).
async fn served_during_the_gap(broker: &TestBroker, spc: &str) {
    let during = broker
        .client()
        .await
        .get_certificate(spc_request(spc))
        .await
        .expect("served during the failover")
        .into_inner();
    assert!(matches!(
        during.cache_status(),
        CacheStatus::Issued | CacheStatus::HitShared | CacheStatus::Joined
    ));
}

/// Both brokers report the store SERVING again, within 20 s each.
async fn both_serving_again(a: &TestBroker, b: &TestBroker) {
    time_until_store_health(a, "Serving", 20).await;
    time_until_store_health(b, "Serving", 20).await;
}

/// `items` as the inside of a TOML array of strings: `"a", "b"`.
fn toml_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

/// Two GetCertificate calls for a new `spc`, one per broker: one order in all.
async fn coordinated(env: &DevEnv, a: &TestBroker, b: &TestBroker, spc: &str) -> CacheStatus {
    let before = env.ca.stats().new_orders;
    let issued = a
        .client()
        .await
        .get_certificate(spc_request(spc))
        .await
        .expect("served")
        .into_inner();
    let second = b
        .client()
        .await
        .get_certificate(spc_request(spc))
        .await
        .expect("served")
        .into_inner();
    assert_eq!(
        second.serial_hex, issued.serial_hex,
        "{spc}: one certificate"
    );
    assert_eq!(env.ca.stats().new_orders, before + 1, "{spc}: one order");
    second.cache_status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_keeps_serving_and_coordination_resumes() {
    let mut master = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
    poll(15, "the replica in sync", || {
        replica
            .raw("INFO replication")
            .contains("master_link_status:up")
    });
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start("certbroker-main", master.port()))
        .collect();
    poll(
        30,
        "the sentinels to know the replica and each other",
        || {
            sentinels.iter().all(|s| {
                s.raw("INFO sentinel")
                    .contains("status=ok,address=127.0.0.1:")
                    && s.raw("INFO sentinel").contains("slaves=1,sentinels=3")
            })
        },
    );

    let env = DevEnv::start().await;
    let nodes: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.url()))
        .collect();
    let s = settings(
        &env,
        &format!(
            "backend = \"redis\"\nsentinel = {{ master_name = \"certbroker-main\", nodes = [{}] }}",
            nodes.join(", ")
        ),
    );
    let (a, b) = one_order_across_two(&env, &s, "4301").await;

    let killed = Instant::now();
    master.kill();
    let gap_seen = time_until_store_health(&a, "NotServing", 15).await;
    // Still serving while the gap lasts (directly from the CA).
    served_during_the_gap(&a, "4302").await;
    poll(30, "the sentinels to promote the replica", || {
        replica.raw("INFO replication").contains("role:master")
    });
    let promoted = killed.elapsed();
    both_serving_again(&a, &b).await;
    let healthy = killed.elapsed();
    // Coordination resumed without a restart: a new SPC, one order across both brokers.
    let status = coordinated(&env, &a, &b, "4303").await;
    assert!(
        matches!(status, CacheStatus::HitShared | CacheStatus::Joined),
        "{status:?}"
    );
    eprintln!(
        "sentinel failover: NOT_SERVING after {gap_seen:?}, replica promoted after {promoted:?}, SERVING again after {healthy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_primary_killed_replica_promoted_coordination_resumes() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
        .await
        .unwrap();
    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &format!(
            "backend = \"redis-cluster\"\ncluster_nodes = [{}]",
            toml_strings(&cluster.urls())
        ),
    );
    let (a, b) = one_order_across_two(&env, &s, "4401").await;

    let victim = cluster.a_primary();
    let killed = Instant::now();
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != victim).collect();
    let nodes = &cluster.nodes;
    // The node timeout is 1 s and the broker probes the store every 2 s, so the cluster can
    // promote the replica before a probe ever sees `cluster_state:fail`: NOT_SERVING is
    // waited for until the failover is over, not required.
    let failover_over = || {
        let masters = survivors
            .iter()
            .filter(|i| nodes[**i].raw("INFO replication").contains("role:master"))
            .count();
        masters == 3
            && survivors
                .iter()
                .all(|i| nodes[*i].raw("CLUSTER INFO").contains("cluster_state:ok"))
    };
    let gap_seen = not_serving_unless_over(&a, 15, failover_over).await;
    served_during_the_gap(&a, "4402").await;
    poll(30, "a replica promoted and every slot served", || {
        survivors
            .iter()
            .all(|i| nodes[*i].raw("CLUSTER INFO").contains("cluster_state:ok"))
    });
    let promoted = killed.elapsed();
    both_serving_again(&a, &b).await;
    let healthy = killed.elapsed();
    // Every SPC asked for before the kill is still found (its data was replicated), and a
    // new SPC is ordered once across both brokers.
    let again = b
        .client()
        .await
        .get_certificate(spc_request("4401"))
        .await
        .expect("served")
        .into_inner();
    assert!(matches!(
        again.cache_status(),
        CacheStatus::HitLocal | CacheStatus::HitShared
    ));
    for spc in ["4403", "4404", "4405"] {
        let status = coordinated(&env, &a, &b, spc).await;
        assert!(
            matches!(status, CacheStatus::HitShared | CacheStatus::Joined),
            "{spc}: {status:?}"
        );
    }
    eprintln!(
        "cluster failover: NOT_SERVING after {gap_seen:?}, cluster_state:ok again after {promoted:?}, SERVING again after {healthy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_over_tls_with_a_private_ca() {
    let files = TlsFiles::new();
    let master = files.server();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| {
            Sentinel::start_tls(
                "certbroker-tls",
                master.port(),
                &files.path("redis.pem"),
                &files.path("redis.key"),
                &files.path("ca.pem"),
            )
        })
        .collect();
    let nodes: Vec<String> = sentinels
        .iter()
        .map(|s| format!("rediss://127.0.0.1:{}", s.port()))
        .collect();
    let store_settings = RedisSettings {
        sentinel: Some(certbroker::store::SentinelSettings {
            master_name: "certbroker-tls".into(),
            nodes: nodes.clone(),
            username: None,
            password: None,
        }),
        trust_roots: Some(files.path("ca.pem")),
        timeout_ms: 1000,
        ..RedisSettings::default()
    };
    let store = connect(&store_settings).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.health().await {
            StoreHealth::Ok => break,
            StoreHealth::Degraded(reason) => {
                assert!(Instant::now() < deadline, "never healthy: {reason}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Without the private CA the sentinels' certificates are refused.
    let untrusted = connect(&RedisSettings {
        trust_roots: None,
        ..store_settings.clone()
    })
    .await
    .unwrap();
    assert!(matches!(untrusted.health().await, StoreHealth::Degraded(_)));

    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &format!(
            "backend = \"redis\"\ntrust_roots = \"{}\"\nsentinel = {{ master_name = \"certbroker-tls\", nodes = [{}] }}",
            files.path("ca.pem").display(),
            toml_strings(&nodes)
        ),
    );
    one_order_across_two(&env, &s, "4501").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_over_tls_with_a_private_ca() {
    let files = TlsFiles::new();
    let (cert, key, ca) = (
        files.path("redis.pem"),
        files.path("redis.key"),
        files.path("ca.pem"),
    );
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_tls(&cert, &key, &ca))
        .await
        .unwrap();
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("rediss://127.0.0.1:{}", n.port()))
        .collect();
    let untrusted = connect(&RedisSettings {
        cluster_nodes: seeds.clone(),
        timeout_ms: 1000,
        ..RedisSettings::default()
    })
    .await
    .unwrap();
    assert!(matches!(untrusted.health().await, StoreHealth::Degraded(_)));

    let env = DevEnv::start().await;
    let s = settings(
        &env,
        &format!(
            "backend = \"redis-cluster\"\ntrust_roots = \"{}\"\ncluster_nodes = [{}]",
            files.path("ca.pem").display(),
            toml_strings(&seeds)
        ),
    );
    let (a, _b) = one_order_across_two(&env, &s, "4601").await;
    wait_store_health(&a, "Serving", 10).await;
}
