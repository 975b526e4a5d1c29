//! Per-CA quirk settings, each against a devca configured the same way. (Challenge response
//! field, fingerprint algorithm, tkvalue encoding and EAB are covered in issue_devca.rs.)

use crate::support::common;

use certbroker::{
    acme::AccountKey,
    broker::{FailureKind, Identifiers},
    ca::{CertKind, Upstream},
    config::CaSettings,
    devca::{DevCaSettings, DevKeyReuse},
    shaken::TnAuthList,
};
use common::DevEnv;

const BAD_CSR: &str = "urn:ietf:params:acme:error:badCSR";

fn spc(s: &str) -> Identifiers {
    Identifiers::TnAuthList(TnAuthList::from_spc(s).unwrap())
}

fn upstream(env: &DevEnv, tweak: impl FnOnce(&mut CaSettings)) -> Upstream {
    let mut settings = env.ca_settings("devca");
    tweak(&mut settings);
    certbroker::app::build_upstream(&settings, None).expect("upstream builds")
}

fn account_spki(env: &DevEnv) -> Vec<u8> {
    let pem = std::fs::read(env.dir.path().join("devca-account.pem")).expect("account key");
    AccountKey::from_pkcs8_pem(&pem)
        .unwrap()
        .public_key_spki_der()
}

#[tokio::test]
async fn account_key_reuse_for_a_ca_that_requires_it() {
    let env = DevEnv::start_with(DevCaSettings {
        account_key_reuse: DevKeyReuse::Require,
        ..Default::default()
    })
    .await;

    // Default (fresh key): the CA refuses, naming the problem.
    let err = upstream(&env, |_| {})
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect_err("fresh key refused")
        .to_issue_error("devca");
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert_eq!(err.problem_type.as_deref(), Some(BAD_CSR), "{err}");
    assert!(err.detail.contains("does not match account"), "{err}");

    let issued = upstream(&env, |s| s.allow_account_key_reuse = true)
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("issued with the account key");
    assert_eq!(issued.leaf.public_key_spki_der, account_spki(&env));
    let key = rcgen::KeyPair::try_from(issued.key_pkcs8.as_deref().unwrap()).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        account_spki(&env),
        "the returned key is the account key"
    );
}

#[tokio::test]
async fn account_key_reuse_against_a_ca_that_forbids_it() {
    let env = DevEnv::start().await; // DevKeyReuse::Reject, like Boulder-style CAs.
    let err = upstream(&env, |s| s.allow_account_key_reuse = true)
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect_err("account key refused")
        .to_issue_error("devca");
    assert_eq!(err.problem_type.as_deref(), Some(BAD_CSR), "{err}");
    let issued = upstream(&env, |_| {})
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("fresh key accepted");
    assert_ne!(issued.leaf.public_key_spki_der, account_spki(&env));
}

#[tokio::test]
async fn lifetime_is_asked_for_with_not_after() {
    let env = DevEnv::start().await; // devca default lifetime: 24 hours.
    let default = upstream(&env, |_| {})
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .unwrap();
    let life = |i: &certbroker::ca::Issued| {
        (i.leaf.not_after - time::OffsetDateTime::now_utc()).whole_seconds()
    };
    assert!(life(&default) > 23 * 3600, "{}", life(&default));

    let short = upstream(&env, |s| {
        s.cert_lifetime = Some(std::time::Duration::from_secs(3600));
    })
    .issue(&spc("1234"), None, CertKind::EndEntity)
    .await
    .unwrap();
    assert!((3500..=3600).contains(&life(&short)), "{}", life(&short));
}

#[tokio::test]
async fn common_name_follows_the_template() {
    let env = DevEnv::start().await;
    let default = upstream(&env, |_| {})
        .issue(&spc("818H"), None, CertKind::EndEntity)
        .await
        .unwrap();
    assert_eq!(default.leaf.subject.common_name, "SHAKEN 818H");
    let custom = upstream(&env, |s| {
        s.csr.common_name_template = "Example Carrier SHAKEN {spc}".into();
        s.csr.organization = "Example Carrier LLC".into();
    })
    .issue(&spc("818H"), None, CertKind::EndEntity)
    .await
    .unwrap();
    assert_eq!(
        custom.leaf.subject.common_name,
        "Example Carrier SHAKEN 818H"
    );
    assert_eq!(custom.leaf.subject.organization, "Example Carrier LLC");
}
