//! Crash takeover: the replica holding a certificate's fleet lock is killed (SIGKILL)
//! mid-issuance; another replica resumes the very same ACME order after the lock expires.

use crate::support::common;
use crate::support::redis as support_redis;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use certbroker::pb::{self, CacheStatus};
use common::{DevEnv, TestBroker, spc_request};
use support_redis::RedisServer;

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_order_is_resumed_not_repeated() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let (user, password) = env.ca.sti_pa_credentials();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[broker]
lock_ttl_secs = 3
[store]
backend = "redis"
url = "{redis}"
[store.keyring]
active = "k1"
[store.keyring.keys]
k1 = "{KEY1}"
[[ca]]
name = "devca"
directory = "{dir}"
trust_roots = "{roots}"
account_key = "{key}"
attempt_timeout_secs = 60
[ca.sti_pa]
base_url = "{pa}"
user_id = "{user}"
password = "{pw}"
"#,
        redis = redis.url(),
        dir = env.ca.directory_url(),
        roots = env.ca.trust_root_path().display(),
        key = env.dir.path().join("fleet-account.pem").display(),
        pa = env.ca.sti_pa_url(),
        pw = secrecy::ExposeSecret::expose_secret(&password),
    );
    let config_path = env.dir.path().join("broker.toml");
    std::fs::write(&config_path, &config).unwrap();

    // Replica A: a real process we can SIGKILL.
    let mut a = Command::new(common::bin())
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("replica A starts");
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("A prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("certbroker listening on ") {
            break addr.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    // Slow the CA so A is caught between placing the order and finalizing it.
    env.ca.behaviour().set_delay(Duration::from_millis(1500));
    let request = tokio::spawn(async move {
        let mut client =
            pb::certificate_broker_service_client::CertificateBrokerServiceClient::connect(
                format!("http://{addr}"),
            )
            .await
            .unwrap();
        client.get_certificate(spc_request("6060")).await
    });

    // Wait until A has recorded its in-flight order in Redis, then kill it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*:progress")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never recorded its order"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(request.await.unwrap().is_err(), "A's caller saw A die");
    assert_eq!(env.ca.stats().new_orders, 1);
    assert_eq!(env.ca.stats().finalizes, 0, "A died before finalizing");
    env.ca.behaviour().set_delay(Duration::ZERO);

    // Replica B takes over once A's lock expires, and resumes A's order.
    let mut settings = certbroker::config::Settings::from_toml(&config).unwrap();
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    let b = TestBroker::start_settings(settings).await;
    let resp = b
        .client()
        .await
        .get_certificate(spc_request("6060"))
        .await
        .expect("B finishes the issuance")
        .into_inner();
    assert_eq!(resp.cache_status(), CacheStatus::Issued);
    let stats = env.ca.stats();
    assert_eq!(
        (stats.new_orders, stats.finalizes),
        (1, 1),
        "one order, one finalize"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:progress")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "progress record cleared: {keys:?}");
}
