//! The `acme` client against the real Pebble ACME server. Each test starts its own pebble
//! on free ports. Requires `apt-get install pebble`; fails (never skips) without it.

use crate::support::pebble as support;

use std::time::Duration;

use certbroker::acme::{
    Account, AccountKey, AcmeError, ChallengeStatus, Client, ExternalAccountKey, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde_json::json;
use support::{Pebble, PebbleOptions, serial_hex};
use x509_parser::{extensions::GeneralName, pem::Pem};

const NAME: &str = "example.test";
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(50))
    .max_delay(Duration::from_millis(500))
    .timeout(Duration::from_secs(30));

fn agree() -> NewAccount {
    NewAccount {
        contact: vec!["mailto:ops@example.test".into()],
        terms_of_service_agreed: true,
        external_account_binding: None,
    }
}

async fn account(pebble: &Pebble) -> Account {
    let client = Client::new(pebble.settings()).await.expect("directory");
    client
        .new_account(AccountKey::generate().unwrap(), &agree())
        .await
        .expect("new account")
}

/// An issued certificate: chain, leaf DER, leaf key (PKCS#8 DER).
struct Issued {
    pem: String,
    alternates: Vec<String>,
    leaf_der: Vec<u8>,
    leaf_key: Vec<u8>,
}

/// The whole flow: order → authz → http-01 `{}` → poll → finalize → poll → download.
async fn issue(account: &Account, name: &str) -> Issued {
    let order = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns(name)],
            ..NewOrder::default()
        })
        .await
        .expect("new order");
    assert_eq!(order.state.status, OrderStatus::Pending);
    assert!(order.url.starts_with("https://127.0.0.1:"));
    assert_eq!(order.state.identifiers, vec![Identifier::dns(name)]);

    for authz_url in &order.state.authorizations {
        let authz = account.authorization(authz_url).await.expect("authz");
        assert_eq!(authz.identifier, Identifier::dns(name));
        let challenge = authz
            .challenges
            .iter()
            .find(|c| c.r#type == "http-01")
            .expect("pebble offers http-01");
        assert!(challenge.token.is_some());
        account
            .respond_challenge(&challenge.url, &json!({}))
            .await
            .expect("respond");
        let authz = account
            .poll_authorization(authz_url, &POLL)
            .await
            .expect("authz valid");
        assert!(authz.challenges.iter().any(|c| c.r#type == "http-01"));
    }

    let order = account.poll_order(&order.url, &POLL).await.expect("ready");
    assert_eq!(order.state.status, OrderStatus::Ready);

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .serialize_request(&leaf_key)
        .unwrap();
    let order = account.finalize(&order, csr.der()).await.expect("finalize");
    let order = account.poll_order(&order.url, &POLL).await.expect("valid");
    assert_eq!(order.state.status, OrderStatus::Valid);
    let cert_url = order.state.certificate.expect("certificate url");

    let chain = account
        .certificate_chain(&cert_url)
        .await
        .expect("download");
    let leaf_der = Pem::iter_from_buffer(chain.pem.as_bytes())
        .next()
        .expect("one PEM block")
        .expect("PEM")
        .contents;
    Issued {
        pem: chain.pem,
        alternates: chain.alternates,
        leaf_der,
        leaf_key: leaf_key.serialize_der(),
    }
}

fn leaf_serial_and_names(der: &[u8]) -> (String, Vec<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("leaf parses");
    let names = cert
        .subject_alternative_name()
        .expect("SAN ok")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    (serial_hex(cert.raw_serial()), names)
}

fn assert_problem(err: &AcmeError, kind: &str) {
    let problem = err
        .problem()
        .unwrap_or_else(|| panic!("expected a problem, got {err:?}"));
    assert!(problem.is_acme(kind), "expected {kind}, got {problem}");
}

#[tokio::test]
async fn account_create_find_and_not_found() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let client = Client::new(pebble.settings()).await.unwrap();
    assert!(client.directory().new_account.ends_with("/sign-me-up"));
    assert!(client.directory().meta.terms_of_service.is_some());

    let key = AccountKey::generate().unwrap();
    let created = client.new_account(key.clone(), &agree()).await.unwrap();
    assert!(created.url().starts_with("https://127.0.0.1:"));

    // newAccount again with the same key returns the same account.
    let again = client.new_account(key.clone(), &agree()).await.unwrap();
    assert_eq!(again.url(), created.url());

    let found = client.find_account(key.clone()).await.unwrap();
    assert_eq!(found.url(), created.url());
    assert_eq!(found.key(), &key);

    let err = client
        .find_account(AccountKey::generate().unwrap())
        .await
        .unwrap_err();
    assert_problem(&err, "accountDoesNotExist");
    assert!(!err.is_retryable());

    // A resumed account works without contacting newAccount.
    let key = AccountKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
    let resumed = Account::from_parts(client.clone(), key, created.url().to_owned());
    resumed
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns(NAME)],
            ..NewOrder::default()
        })
        .await
        .expect("order with resumed account");
}

#[tokio::test]
async fn full_flow_chain_alternates_and_revoke_by_account() {
    let pebble = Pebble::start(PebbleOptions {
        alternate_roots: 1,
        ..PebbleOptions::default()
    })
    .await;
    let account = account(&pebble).await;
    let issued = issue(&account, NAME).await;

    assert!(issued.pem.matches("-----BEGIN CERTIFICATE-----").count() >= 2);
    let (serial, names) = leaf_serial_and_names(&issued.leaf_der);
    assert_eq!(names, vec![NAME.to_owned()]);
    assert_eq!(issued.alternates.len(), 1, "one alternate chain");
    let alt = account
        .certificate_chain(&issued.alternates[0])
        .await
        .unwrap();
    assert_ne!(alt.pem, issued.pem);
    assert!(
        alt.pem.contains(issued.pem.lines().nth(1).unwrap()),
        "same leaf"
    );

    // Pebble's own issuing root is available from the management interface.
    let (status, root) = pebble.management("/roots/0").await;
    assert_eq!(status, 200);
    assert!(root.contains("BEGIN CERTIFICATE"));

    assert_eq!(pebble.cert_status(&serial).await["Status"], "Valid");
    account
        .revoke(&issued.leaf_der, Some(4))
        .await
        .expect("revoke");
    let status = pebble.cert_status(&serial).await;
    assert_eq!(status["Status"], "Revoked");
    assert_eq!(status["Reason"], 4);

    let err = account.revoke(&issued.leaf_der, None).await.unwrap_err();
    assert_problem(&err, "alreadyRevoked");
}

#[tokio::test]
async fn revoke_with_certificate_key() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let account = account(&pebble).await;
    let issued = issue(&account, NAME).await;
    let (serial, _) = leaf_serial_and_names(&issued.leaf_der);

    // Another key cannot revoke it: the JWS key must match the certificate.
    let wrong = rcgen::KeyPair::generate().unwrap().serialize_der();
    let err = account
        .client()
        .revoke_with_certificate_key(&wrong, &issued.leaf_der, None)
        .await
        .unwrap_err();
    assert!(err.problem().is_some(), "{err:?}");
    assert_eq!(pebble.cert_status(&serial).await["Status"], "Valid");

    account
        .client()
        .revoke_with_certificate_key(&issued.leaf_key, &issued.leaf_der, Some(1))
        .await
        .expect("revoke with certificate key");
    assert_eq!(pebble.cert_status(&serial).await["Status"], "Revoked");
}

#[tokio::test]
async fn key_change_moves_the_account_to_the_new_key() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let old = account(&pebble).await;
    let new_key = AccountKey::generate().unwrap();
    let new = old.key_change(new_key.clone()).await.expect("key change");
    assert_eq!(new.url(), old.url());
    assert_eq!(new.key(), &new_key);

    let client = old.client();
    let found = client
        .find_account(new_key)
        .await
        .expect("new key finds account");
    assert_eq!(found.url(), old.url());
    let err = client.find_account(old.key().clone()).await.unwrap_err();
    assert_problem(&err, "accountDoesNotExist");

    issue(&new, NAME).await;
    let err = old
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns(NAME)],
            ..NewOrder::default()
        })
        .await
        .unwrap_err();
    assert!(err.problem().is_some(), "old key rejected: {err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn deactivated_account_is_unusable() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let account = account(&pebble).await;
    account.deactivate().await.expect("deactivate");
    let err = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns(NAME)],
            ..NewOrder::default()
        })
        .await
        .unwrap_err();
    assert_problem(&err, "unauthorized");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn bad_nonce_storm_still_completes_a_full_flow() {
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject_percent: 50,
        ..PebbleOptions::default()
    })
    .await;
    let mut settings = pebble.settings();
    settings.max_bad_nonce_retries = 40;
    let client = Client::new(settings).await.unwrap();
    let account = client
        .new_account(AccountKey::generate().unwrap(), &agree())
        .await
        .expect("new account despite badNonce");
    let issued = issue(&account, NAME).await;
    account
        .revoke(&issued.leaf_der, None)
        .await
        .expect("revoke");

    // With no retries allowed, the storm surfaces as a retryable badNonce sooner or later.
    let mut settings = pebble.settings();
    settings.max_bad_nonce_retries = 0;
    let strict = Client::new(settings).await.unwrap();
    let mut seen = None;
    for _ in 0..60 {
        if let Err(err) = strict.find_account(account.key().clone()).await {
            assert_problem(&err, "badNonce");
            seen = Some(err);
            break;
        }
    }
    let err = seen.expect("a badNonce with retries disabled");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn external_account_binding_required() {
    let mac_b64 = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start(PebbleOptions {
        eab_keys: vec![("kid-1".into(), mac_b64.into())],
        ..PebbleOptions::default()
    })
    .await;
    let client = Client::new(pebble.settings()).await.unwrap();
    assert!(client.directory().meta.external_account_required);

    let err = client
        .new_account(AccountKey::generate().unwrap(), &agree())
        .await
        .unwrap_err();
    assert!(matches!(err, AcmeError::ExternalAccountRequired), "{err:?}");
    assert!(err.to_string().contains("external account binding"));

    let wrong = NewAccount {
        external_account_binding: Some(ExternalAccountKey::new("kid-1", vec![9; 48])),
        ..agree()
    };
    let err = client
        .new_account(AccountKey::generate().unwrap(), &wrong)
        .await
        .unwrap_err();
    assert!(err.problem().is_some(), "wrong MAC rejected: {err:?}");
    assert!(!err.is_retryable());

    let good = NewAccount {
        external_account_binding: Some(
            ExternalAccountKey::from_base64url("kid-1", mac_b64).unwrap(),
        ),
        ..agree()
    };
    let account = client
        .new_account(AccountKey::generate().unwrap(), &good)
        .await
        .expect("EAB account");
    issue(&account, NAME).await;
}

#[tokio::test]
async fn csr_for_other_name_is_a_final_problem() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let account = account(&pebble).await;
    let order = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns(NAME)],
            ..NewOrder::default()
        })
        .await
        .unwrap();
    for url in &order.state.authorizations {
        let authz = account.authorization(url).await.unwrap();
        let ch = authz
            .challenges
            .iter()
            .find(|c| c.r#type == "http-01")
            .unwrap();
        account
            .respond_challenge(&ch.url, &json!({}))
            .await
            .unwrap();
        account.poll_authorization(url, &POLL).await.unwrap();
    }
    let order = account.poll_order(&order.url, &POLL).await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["other.test".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let err = account.finalize(&order, csr.der()).await.unwrap_err();
    assert!(err.problem().is_some(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn failed_validation_surfaces_the_challenge_problem() {
    // Real validation of http-01 for `localhost`: nothing listens on pebble's httpPort, so
    // the challenge fails and the authorization goes invalid.
    let pebble = Pebble::start(PebbleOptions {
        real_validation: true,
        ..PebbleOptions::default()
    })
    .await;
    let account = account(&pebble).await;
    let order = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns("localhost")],
            ..NewOrder::default()
        })
        .await
        .unwrap();
    let url = &order.state.authorizations[0];
    let authz = account.authorization(url).await.unwrap();
    let ch = authz
        .challenges
        .iter()
        .find(|c| c.r#type == "http-01")
        .unwrap();
    account
        .respond_challenge(&ch.url, &json!({}))
        .await
        .unwrap();
    let err = account.poll_authorization(url, &POLL).await.unwrap_err();
    let problem = err.problem().unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        problem.r#type.is_some(),
        "the challenge's own problem: {problem}"
    );
    assert!(!err.is_retryable(), "{err:?}");

    let err = account.poll_order(&order.url, &POLL).await.unwrap_err();
    assert!(err.problem().is_some(), "{err:?}");
    let challenge = account.challenge(&ch.url).await.unwrap();
    assert_eq!(challenge.status, ChallengeStatus::Invalid);
    assert!(challenge.error.is_some());
}

#[tokio::test]
async fn polling_gives_up_at_the_deadline() {
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let account = account(&pebble).await;
    let order = account
        .new_order(&NewOrder {
            identifiers: vec![Identifier::dns(NAME)],
            ..NewOrder::default()
        })
        .await
        .unwrap();
    // Nobody answers the challenge, so the order stays pending.
    let quick = POLL.timeout(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let err = account.poll_order(&order.url, &quick).await.unwrap_err();
    assert!(matches!(err, AcmeError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
}
