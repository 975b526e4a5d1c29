//! Account lifecycle against a real devca over HTTPS and a real `redis-server`: key rollover
//! through the `certbroker account` binary while a broker runs, the fleet-wide SPC token
//! cache shared by two replicas, and deactivation.

use crate::support::common;
use crate::support::redis as support_redis;

use std::{path::Path, process::Output};

use certbroker::{
    acme::AccountKey,
    ca::AccountSource,
    challenge::{self, AuthorityToken, FingerprintAlgorithm},
    config::Settings,
    pb::{CacheStatus, GetCertificateResponse},
    store::{Keyring, KeyringSettings},
};
use common::{DevEnv, TestBroker, bin, spc_request};
use secrecy::{ExposeSecret, SecretString};
use support_redis::RedisServer;

const KEYRING_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
const PASSWORD_ENV: &str = "ACCOUNT_TEST_STI_PA_PASSWORD";

/// A config file for the devca (STI-PA password from `PASSWORD_ENV`) on `store`.
fn write_config(env: &DevEnv, store: &str) -> std::path::PathBuf {
    let (user, _) = env.ca.sti_pa_credentials();
    let text = format!(
        r#"
[store]
{store}

[[ca]]
name = "devca"
directory = "{dir}"
trust_roots = "{roots}"
account_key = "{key}"
request_timeout_secs = 10
attempt_timeout_secs = 20
[ca.sti_pa]
base_url = "{pa}"
user_id = "{user}"
password_env = "{PASSWORD_ENV}"
"#,
        dir = env.ca.directory_url(),
        roots = env.ca.trust_root_path().display(),
        key = key_path(env).display(),
        pa = env.ca.sti_pa_url(),
    );
    let path = env.dir.path().join("broker.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

fn redis_store(redis: &RedisServer) -> String {
    format!(
        "backend = \"redis\"\nurl = \"{}\"\n[store.keyring]\nactive = \"k1\"\n[store.keyring.keys]\nk1 = \"{KEYRING_KEY}\"",
        redis.url()
    )
}

fn key_path(env: &DevEnv) -> std::path::PathBuf {
    env.dir.path().join("devca-account.pem")
}

/// The settings of the config file, with the STI-PA password inline (the test process
/// does not set environment variables).
fn settings(env: &DevEnv, config: &Path) -> Settings {
    let mut s = Settings::load(Some(config)).expect("config loads");
    let pa = s.ca[0].sti_pa.as_mut().expect("sti_pa");
    pa.password_env = None;
    pa.password = Some(env.ca.sti_pa_credentials().1);
    s
}

/// Runs `certbroker account ARGS --config CONFIG --ca devca`.
fn account_cli(env: &DevEnv, config: &Path, args: &[&str]) -> Output {
    let out = std::process::Command::new(bin())
        .arg("account")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--ca", "devca"])
        .env(PASSWORD_ENV, env.ca.sti_pa_credentials().1.expose_secret())
        .env("RUST_LOG", "warn")
        .output()
        .expect("certbroker runs");
    eprintln!(
        "certbroker account {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_key(path: &Path) -> AccountKey {
    AccountKey::from_pkcs8_pem(&std::fs::read(path).expect("key file")).expect("key parses")
}

fn token_fingerprint(key: &AccountKey) -> String {
    challenge::fingerprint(FingerprintAlgorithm::JwkThumbprint, &key.public_jwk()).unwrap()
}

async fn get(broker: &TestBroker, spc: &str, force_renew: bool) -> GetCertificateResponse {
    let mut req = spc_request(spc);
    req.force_renew = force_renew;
    broker
        .client()
        .await
        .get_certificate(req)
        .await
        .expect("certificate")
        .into_inner()
}

/// Every Redis key holding a shared SPC token, with its raw value.
fn token_entries(redis: &RedisServer) -> Vec<(String, Vec<u8>)> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*spc-token*:item:*")
        .query(&mut conn)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
            (k, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_makes_the_next_issuance_use_a_fresh_token_for_the_new_key() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let config = write_config(&env, &redis_store(&redis));
    let broker = TestBroker::start_settings(settings(&env, &config)).await;

    let first = get(&broker, "4321", false).await;
    assert_eq!(first.cache_status(), CacheStatus::Issued);
    let old_key = read_key(&key_path(&env));
    let old_fp = token_fingerprint(&old_key);
    assert_eq!(
        env.ca.behaviour().token_fingerprints(),
        vec![old_fp.clone()]
    );
    assert_eq!(token_entries(&redis).len(), 1, "the token is shared");

    let out = account_cli(&env, &config, &["rollover"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new_key = read_key(&key_path(&env));
    let new_fp = token_fingerprint(&new_key);
    assert_ne!(old_key, new_key);
    assert!(stdout.contains(&format!(
        "old key SPC token fingerprint (JwkThumbprint): {old_fp}"
    )));
    assert!(stdout.contains(&format!(
        "new key SPC token fingerprint (JwkThumbprint): {new_fp}"
    )));
    assert!(stdout.contains(&format!(
        "new key JWK thumbprint: {}",
        new_key.thumbprint_b64()
    )));
    assert!(stdout.contains("dropped from the store: 1"), "{stdout}");
    assert!(token_entries(&redis).is_empty(), "old tokens dropped");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(&env))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!env.dir.path().join("devca-account.pem.new").exists());

    // The CA no longer knows the old key, and refuses what it signs.
    let source = AccountSource::from_settings(&settings(&env, &config).ca[0]).unwrap();
    let client = source.client().await.unwrap();
    let err = client.find_account(old_key.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("accountDoesNotExist"),
        "old key: {err}"
    );
    let account = client.find_account(new_key.clone()).await.unwrap();
    let stale = certbroker::acme::Account::from_parts(
        client.clone(),
        old_key.clone(),
        account.url().to_owned(),
    );
    assert!(stale.state().await.is_err(), "the old key signs nothing");
    assert!(stdout.contains(account.url()), "{stdout}");

    // The running broker picks the new key file up: a fresh token bound to the new key.
    let second = get(&broker, "4321", true).await;
    assert_eq!(second.cache_status(), CacheStatus::Issued);
    assert_ne!(second.serial_hex, first.serial_hex);
    assert_eq!(
        env.ca.behaviour().token_fingerprints(),
        vec![old_fp, new_fp.clone()]
    );
    let shared = token_entries(&redis);
    assert_eq!(shared.len(), 1);
    assert!(shared[0].0.contains(&challenge::token_group(&new_fp)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_sealed_spc_token_through_redis() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let config = write_config(&env, &redis_store(&redis));
    let a = TestBroker::start_settings(settings(&env, &config)).await;
    let b = TestBroker::start_settings(settings(&env, &config)).await;

    assert_eq!(
        get(&a, "5555", false).await.cache_status(),
        CacheStatus::Issued
    );
    // Another replica issuing for the same SPC (a forced renewal) reuses the token.
    assert_eq!(
        get(&b, "5555", true).await.cache_status(),
        CacheStatus::Issued
    );
    let stats = env.ca.stats();
    assert_eq!(stats.certificates_issued, 2);
    assert_eq!(stats.challenges_validated, 2);
    assert_eq!(stats.tokens_issued, 1, "one STI-PA request for the fleet");

    // In Redis the token is sealed: no JWT, no claim in clear; the keyring opens it.
    let entries = token_entries(&redis);
    assert_eq!(entries.len(), 1);
    let (key, sealed) = &entries[0];
    let text = String::from_utf8_lossy(sealed);
    for clear in ["eyJ", "atc", "SHA256", "fingerprint"] {
        assert!(!text.contains(clear), "{clear:?} in clear in {key}");
    }
    let keyring = Keyring::new(&KeyringSettings {
        active: "k1".into(),
        keys: [("k1".to_owned(), SecretString::from(KEYRING_KEY.to_owned()))].into(),
    })
    .unwrap();
    let jwt = keyring
        .decrypt(sealed, key.as_bytes())
        .expect("sealed under k1");
    let token = AuthorityToken::parse(std::str::from_utf8(&jwt).unwrap()).unwrap();
    assert_eq!(
        token.fingerprint,
        token_fingerprint(&read_key(&key_path(&env)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_needs_yes_and_the_next_use_makes_a_new_account() {
    let env = DevEnv::start().await;
    let config = write_config(&env, "backend = \"memory\"");
    let broker = TestBroker::start_settings(settings(&env, &config)).await;
    get(&broker, "6666", false).await;
    let old_key = read_key(&key_path(&env));

    let out = account_cli(&env, &config, &["show"]);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("status: Valid"), "{shown}");
    let url = shown
        .lines()
        .find_map(|l| l.strip_prefix("account: "))
        .expect("account line")
        .to_owned();

    let out = account_cli(&env, &config, &["deactivate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(key_path(&env).exists(), "nothing happened without --yes");

    let out = account_cli(&env, &config, &["deactivate", "--yes"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("account: {url} (deactivated)"))
    );
    assert!(!key_path(&env).exists());
    assert_eq!(
        read_key(&env.dir.path().join("devca-account.pem.deactivated")),
        old_key
    );
    let source = AccountSource::from_settings(&settings(&env, &config).ca[0]).unwrap();
    let client = source.client().await.unwrap();
    let dead = certbroker::acme::Account::from_parts(client, old_key.clone(), url.clone());
    let err = dead.state().await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(!account_cli(&env, &config, &["show"]).status.success());

    // The broker notices the key file is gone: a new key, a new account, and it issues.
    let next = get(&broker, "6666", true).await;
    assert_eq!(next.cache_status(), CacheStatus::Issued);
    let new_key = read_key(&key_path(&env));
    assert_ne!(new_key, old_key);
    let out = account_cli(&env, &config, &["show"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("status: Valid") && !shown.contains(&url),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_ca_refused_is_not_offered_again_by_any_replica() {
    let redis = RedisServer::start();
    let env = DevEnv::start().await;
    let store = format!("{}\n[broker]\nnegative_ttl_secs = 1", redis_store(&redis));
    let config = write_config(&env, &store);
    let a = TestBroker::start_settings(settings(&env, &config)).await;
    let b = TestBroker::start_settings(settings(&env, &config)).await;

    // The STI-PA signs with the wrong key: the broker cannot tell, the CA can.
    env.ca
        .behaviour()
        .set_token_fault(Some(certbroker::devca::TokenFault::WrongKey));
    let refused = a
        .client()
        .await
        .get_certificate(spc_request("8888"))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("token signature invalid"),
        "{refused:?}"
    );
    env.ca.behaviour().set_token_fault(None);
    assert!(
        token_entries(&redis).is_empty(),
        "the refused token was discarded"
    );

    // The refusal is remembered fleet-wide for negative_ttl_secs (1 s): b answers with it
    // until it expires, then issues.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let issued = loop {
        match b.client().await.get_certificate(spc_request("8888")).await {
            Ok(resp) => break resp.into_inner(),
            Err(e) => {
                assert!(e.message().contains("remembered refusal"), "{e:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the refusal outlived negative_ttl_secs: {e:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(issued.cache_status(), CacheStatus::Issued);
    assert_eq!(env.ca.stats().tokens_issued, 2, "a fresh token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuance_in_flight_during_the_rollover_finishes_with_the_new_key() {
    let env = DevEnv::start().await;
    let config = write_config(&env, "backend = \"memory\"");
    let broker = TestBroker::start_settings(settings(&env, &config)).await;
    let old_fp = token_fingerprint(&read_key(&key_path(&env)));
    // Slow every ACME request so the rollover lands in the middle of the order.
    env.ca
        .behaviour()
        .set_delay(std::time::Duration::from_millis(400));
    let mut client = broker.client().await;
    let requests = env.ca.stats().acme_requests;
    let issuing = tokio::spawn(async move { client.get_certificate(spc_request("9191")).await });
    // The rollover starts once the order's first request is at the CA (held there by the
    // delay), so it lands in the middle of the order.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while env.ca.stats().acme_requests == requests {
        assert!(
            std::time::Instant::now() < deadline,
            "the issuance never reached the CA"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let rolled = tokio::task::spawn_blocking({
        let config = config.clone();
        let env_dir = env.dir.path().to_owned();
        let password = env.ca.sti_pa_credentials().1;
        move || {
            std::process::Command::new(bin())
                .args(["account", "rollover", "--ca", "devca", "--config"])
                .arg(&config)
                .env(PASSWORD_ENV, password.expose_secret())
                .current_dir(env_dir)
                .output()
                .expect("certbroker runs")
        }
    })
    .await
    .unwrap();
    assert!(rolled.status.success(), "{rolled:?}");
    assert!(
        !issuing.is_finished(),
        "the rollover came too late to test anything"
    );

    let cert = issuing.await.unwrap().expect("issued despite the rollover");
    assert_eq!(cert.into_inner().cache_status(), CacheStatus::Issued);
    let new_fp = token_fingerprint(&read_key(&key_path(&env)));
    let fps = env.ca.behaviour().token_fingerprints();
    assert_eq!(fps.first(), Some(&old_fp));
    assert_eq!(
        fps.last(),
        Some(&new_fp),
        "the retry used a token for the new key"
    );
}
