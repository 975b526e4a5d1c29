//! The broker as a STAR client (RFC 8739) against the devca: a 3-replica fleet on a real
//! Redis follows one STAR order with second-scale lifetimes (one star-certificate fetch per
//! certificate fleet-wide, every watcher told within a second), Revoke cancels the order,
//! a restart of every replica continues the same order, and a CA without STAR gets
//! ordinary orders.

use crate::support::common;
use crate::support::redis as support_redis;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use certbroker::{
    config::{Settings, StarSettings},
    devca::{DevCaSettings, DevStarOrder},
    pb,
};
use common::{DevEnv, TestBroker, spc_request};
use support_redis::RedisServer;
use tokio::time::Instant;

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Short-term certificates of 10 s: the devca issues the next every 5 s.
const LIFETIME: u64 = 10;

fn fleet_settings(env: &DevEnv, redis_url: &str, duration_secs: u64) -> Settings {
    let mut s = Settings::from_toml(&format!(
        r#"
[broker]
default_min_remaining_secs = 1
lock_ttl_secs = 5
[renewal]
check_interval_secs = 1
retry_base_secs = 1
[store]
backend = "redis"
url = "{redis_url}"
[store.keyring]
active = "k1"
[store.keyring.keys]
k1 = "{KEY1}"
"#
    ))
    .expect("settings");
    let mut ca = env.ca_settings("devca");
    ca.star = Some(StarSettings {
        lifetime: Duration::from_secs(LIFETIME),
        duration: Duration::from_secs(duration_secs),
    });
    s.ca = vec![ca];
    s
}

async fn fleet(s: &Settings, n: usize) -> Vec<TestBroker> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(TestBroker::start_settings(s.clone()).await);
    }
    out
}

/// A watcher per replica; every certificate each one hears of, with when, on `tx`.
async fn watch_all(
    fleet: &[TestBroker],
    spc: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(usize, pb::WatchCertificateResponse, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, r) in fleet.iter().enumerate() {
        let mut client = r.client().await;
        let mut stream = client
            .watch_certificate(pb::WatchCertificateRequest::from(spc_request(spc)))
            .await
            .expect("watch starts")
            .into_inner();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(cert)) = stream.message().await {
                let _ = tx.send((i, cert, Instant::now()));
            }
        });
    }
    rx
}

/// Per serial: notAfter and (watcher, received at), until `want` serials were seen by all
/// `watchers` or the deadline.
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, pb::WatchCertificateResponse, Instant)>,
    watchers: usize,
    want: usize,
    within: Duration,
) -> BTreeMap<String, (i64, Vec<(usize, Instant)>)> {
    let deadline = Instant::now() + within;
    let mut seen: BTreeMap<String, (i64, Vec<(usize, Instant)>)> = BTreeMap::new();
    while seen.values().filter(|(_, w)| w.len() >= watchers).count() < want {
        let Ok(Some((i, cert, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            panic!("{want} certificates not seen by {watchers} watchers in time: {seen:?}");
        };
        let na = cert.not_after.unwrap().seconds;
        seen.entry(cert.serial_hex)
            .or_insert((na, vec![]))
            .1
            .push((i, at));
    }
    seen
}

fn the_star_order(env: &DevEnv) -> DevStarOrder {
    let orders = env.ca.star_orders();
    assert_eq!(orders.len(), 1, "one STAR order: {orders:?}");
    orders.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_follows_one_star_order_and_revoke_cancels_it() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = fleet_settings(&env, &redis.url(), 3600);
    let fleet = fleet(&s, 3).await;

    let first = fleet[0]
        .client()
        .await
        .get_certificate(spc_request("5150"))
        .await
        .expect("a STAR certificate")
        .into_inner();
    assert_eq!(first.cache_status(), pb::CacheStatus::Issued);
    let life = first.not_after.unwrap().seconds - first.not_before.unwrap().seconds;
    assert_eq!(
        life, LIFETIME as i64,
        "a short-term certificate of the lifetime asked for"
    );
    let order = the_star_order(&env);
    assert_eq!(order.serials.first(), Some(&first.serial_hex));
    assert_eq!(env.ca.stats().new_orders, 1);

    let mut rx = watch_all(&fleet, "5150").await;
    // The current one and three successors, each seen by every watcher.
    let seen = collect(&mut rx, 3, 4, Duration::from_secs(60)).await;
    let order = the_star_order(&env);
    assert_eq!(order.status, "valid");
    let serials: BTreeSet<&String> = seen.keys().collect();
    assert!(
        serials.iter().all(|s| order.serials.contains(s)),
        "every certificate is one of the order's: {serials:?} vs {order:?}"
    );
    // One fetch per certificate fleet-wide (the next is 5 s away).
    assert_eq!(
        order.fetches,
        seen.len() as u64,
        "one star-certificate fetch per certificate: {order:?}"
    );
    assert_eq!(env.ca.stats().new_orders, 1, "no new order meanwhile");
    for (serial, (not_after, watchers)) in &seen {
        if serial == &first.serial_hex {
            continue;
        }
        let first_at = watchers.iter().map(|(_, at)| *at).min().unwrap();
        let last_at = watchers.iter().map(|(_, at)| *at).max().unwrap();
        assert!(
            last_at - first_at <= Duration::from_secs(1),
            "every watcher has {serial} within a second: {watchers:?}"
        );
        let _ = not_after;
    }
    // Each successor arrived while its predecessor was still valid.
    let mut by_expiry: Vec<(i64, Instant)> = seen
        .values()
        .map(|(na, w)| (*na, w.iter().map(|(_, at)| *at).max().unwrap()))
        .collect();
    by_expiry.sort();
    for pair in by_expiry.windows(2) {
        let wall_now = time::OffsetDateTime::now_utc().unix_timestamp();
        let predecessor_left = pair[0].0 - wall_now;
        let since = Instant::now() - pair[1].1;
        assert!(
            predecessor_left as f64 + since.as_secs_f64() > 0.0,
            "successor after the predecessor expired: {by_expiry:?}"
        );
    }
    // ListRenewals shows the STAR order.
    let renewals = fleet[1].renewals().await;
    let entry = &renewals.entries[0];
    let star = entry.star.as_ref().expect("a STAR order in ListRenewals");
    assert_eq!(star.order_url, order.order_url);
    assert_eq!(star.lifetime_secs, LIFETIME);
    assert!(!star.last_certificate);

    // Revoke cancels the order; the certificate is gone from the cache.
    let current = fleet[2]
        .client()
        .await
        .get_certificate(spc_request("5150"))
        .await
        .unwrap()
        .into_inner();
    let revoked = fleet[1]
        .client()
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::SerialHex(
                current.serial_hex.clone(),
            )),
            reason: pb::RevocationReason::CessationOfOperation as i32,
        })
        .await
        .expect("revoke of a STAR certificate")
        .into_inner();
    assert!(revoked.star_order_canceled, "{revoked:?}");
    // The open watches hear of the cancellation too and may have placed the next order
    // already: the followed order is the one canceled, and there is at most one other.
    let orders = env.ca.star_orders();
    let followed = orders
        .iter()
        .find(|o| o.order_url == order.order_url)
        .expect("the followed order is still known");
    assert_eq!(followed.status, "canceled", "{orders:?}");
    assert!(orders.len() <= 2, "at most one new order: {orders:?}");
    assert_eq!(env.ca.stats().revocations, 0, "canceled, not revoked");
    let after = fleet[0]
        .client()
        .await
        .get_certificate(spc_request("5150"))
        .await
        .expect("a new certificate")
        .into_inner();
    // Issued here, or joined to the reissue an open watch started.
    assert_ne!(after.serial_hex, current.serial_hex);
    let orders = env.ca.star_orders();
    assert_eq!(orders.len(), 2, "a new STAR order: {orders:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_of_every_replica_continues_the_star_order() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let s = fleet_settings(&env, &redis.url(), 3600);
    let first = {
        let fleet = fleet(&s, 3).await;
        fleet[1]
            .client()
            .await
            .get_certificate(spc_request("6160"))
            .await
            .expect("a STAR certificate")
            .into_inner()
    };
    // Every replica is gone; a new fleet takes over from the store.
    let fleet = fleet(&s, 3).await;
    let again = fleet[2]
        .client()
        .await
        .get_certificate(spc_request("6160"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.serial_hex, first.serial_hex);
    assert_eq!(again.cache_status(), pb::CacheStatus::HitShared);
    let mut rx = watch_all(&fleet, "6160").await;
    let seen = collect(&mut rx, 3, 3, Duration::from_secs(40)).await;
    let order = the_star_order(&env);
    assert_eq!(order.status, "valid");
    assert!(
        seen.keys().all(|s| order.serials.contains(s)),
        "{seen:?} {order:?}"
    );
    assert_eq!(order.fetches, seen.len() as u64, "{order:?}");
    assert_eq!(env.ca.stats().new_orders, 1, "the same order continues");

    // `certbroker status` shows the STAR order.
    let addr = fleet[0].addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::bin())
            .args(["status", "--addr", &addr])
            .output()
            .expect("certbroker status runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("STAR order"))
        .unwrap_or_else(|| panic!("a STAR line in\n{stdout}"));
    assert!(line.contains(&order.order_url), "{line}");
    assert!(line.contains(&format!("lifetime {LIFETIME}s")), "{line}");
    assert!(line.contains("next certificate 20"), "{line}");
    assert!(line.contains("end-date 20"), "{line}");
}

/// `certbroker issue --star-lifetime` writes each short-term certificate as the CA issues
/// it, and on Ctrl-C (SIGINT) with `--cancel-on-exit` cancels the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_issue_follows_a_star_order_and_cancels_on_exit() {
    use std::io::{BufRead, BufReader};

    let env = DevEnv::start().await;
    let (user, password) = env.ca.sti_pa_credentials();
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::bin())
        .env_remove("RUST_LOG")
        .args(["issue", "--directory", env.ca.directory_url().as_str()])
        .arg("--trust-root")
        .arg(env.ca.trust_root_path())
        .args(["--spc", "9190", "--sti-pa", env.ca.sti_pa_url().as_str()])
        .args([
            "--sti-pa-user",
            &user,
            "--sti-pa-password-env",
            "STI_PA_PASSWORD",
        ])
        .args([
            "--star-lifetime",
            "6",
            "--star-duration",
            "600",
            "--cancel-on-exit",
        ])
        .arg("--out")
        .arg(out.path())
        .env(
            "STI_PA_PASSWORD",
            secrecy::ExposeSecret::expose_secret(&password),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("certbroker issue starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut serials = vec![];
    let mut lines = vec![];
    while serials.len() < 2 {
        let Ok(Some(line)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            panic!("two certificates not written in time: {lines:#?}");
        };
        if let Some(serial) = line.strip_prefix("serial:") {
            serials.push(serial.trim().to_owned());
            // The files hold the certificate just announced.
            let pem = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
            let der = certbroker::shaken::parse_pem_chain(&pem).unwrap();
            let info = certbroker::shaken::CertInfo::parse(&der[0]).unwrap();
            assert_eq!(
                info.serial_hex.trim_start_matches('0'),
                serials.last().unwrap().trim_start_matches('0')
            );
        }
        lines.push(line);
    }
    assert_ne!(serials[0], serials[1]);
    assert!(out.path().join("key.pem").exists());
    let order = the_star_order(&env);
    assert_eq!(order.status, "valid");
    assert_eq!(order.fetches, 2, "{order:?}");

    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        lines.push(line);
    }
    assert!(
        lines.iter().any(|l| l.starts_with("canceled:")),
        "{lines:#?}"
    );
    assert_eq!(the_star_order(&env).status, "canceled");
}

/// The last certificate of an order ends at its end-date; before that the fleet places
/// the next STAR order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn before_the_end_date_the_next_star_order_is_placed_once() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    // Two certificates per order: issued at 0 and 5 s, the second ends at 12 s.
    let s = fleet_settings(&env, &redis.url(), 12);
    let fleet = fleet(&s, 3).await;
    let mut rx = watch_all(&fleet, "7170").await;
    let seen = collect(&mut rx, 3, 4, Duration::from_secs(60)).await;
    let orders = env.ca.star_orders();
    assert_eq!(
        orders.len(),
        2,
        "two orders, one after the other: {orders:?}"
    );
    for o in &orders {
        assert!(
            o.serials.iter().any(|s| seen.contains_key(s)),
            "{o:?} {seen:?}"
        );
    }
    let fetched: u64 = orders.iter().map(|o| o.fetches).sum();
    assert_eq!(fetched, seen.len() as u64, "{orders:?} {seen:?}");
    assert_eq!(env.ca.stats().new_orders, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_without_star_gets_ordinary_orders() {
    let redis = RedisServer::start();
    let env = DevEnv::start_with(DevCaSettings {
        star: None,
        ..Default::default()
    })
    .await;
    let s = fleet_settings(&env, &redis.url(), 3600);
    let fleet = fleet(&s, 1).await;
    let cert = fleet[0]
        .client()
        .await
        .get_certificate(spc_request("8180"))
        .await
        .expect("an ordinary certificate")
        .into_inner();
    assert_eq!(cert.cache_status(), pb::CacheStatus::Issued);
    assert!(env.ca.star_orders().is_empty());
    assert_eq!(env.ca.stats().new_orders, 1);
    let renewals = fleet[0].renewals().await;
    assert!(renewals.entries[0].star.is_none());
    // A Revoke is a revocation there.
    let revoked = fleet[0]
        .client()
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::SerialHex(cert.serial_hex)),
            reason: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.star_order_canceled);
}
