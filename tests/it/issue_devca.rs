//! The full issuance flow (account, order, tkauth-01 with an SPC token from the STI-PA,
//! finalize, download, profile check) against the devca over real HTTPS, and every client
//! error path against a misbehaving devca, each with its precise error.

use crate::support::common;

use std::time::Duration;

use certbroker::{
    broker::{FailureKind, Identifiers, IssueError},
    ca::{CertKind, Upstream},
    challenge::{FingerprintAlgorithm, ResponseField},
    config::CaSettings,
    devca::{DevCaSettings, DevFingerprint, DevResponseField, TokenFault},
    shaken::{CertInfo, TnAuthList, TnEntry},
};
use common::{DevEnv, openssl_verify};

const UNAUTHORIZED: &str = "urn:ietf:params:acme:error:unauthorized";

fn spc(s: &str) -> Identifiers {
    Identifiers::TnAuthList(TnAuthList::from_spc(s).unwrap())
}

fn upstream(env: &DevEnv, tweak: impl FnOnce(&mut CaSettings)) -> Upstream {
    let mut settings = env.ca_settings("devca");
    tweak(&mut settings);
    certbroker::app::build_upstream(&settings, None).expect("upstream builds")
}

async fn issue_err(up: &Upstream, ids: &Identifiers) -> IssueError {
    let err = up
        .issue(ids, None, CertKind::EndEntity)
        .await
        .expect_err("issuance must fail");
    err.to_issue_error(up.name())
}

#[tokio::test]
async fn spc_1234_end_to_end() {
    let env = DevEnv::start().await;
    let up = upstream(&env, |_| {});
    let issued = up
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("issued");

    let leaf = &issued.leaf;
    assert_eq!(
        hex::encode(leaf.tn_auth_list.as_ref().unwrap().to_der()),
        "3008a006160431323334",
        "leaf carries TNAuthList MAigBhYEMTIzNA=="
    );
    assert!(!leaf.tn_auth_list_critical);
    assert_eq!(leaf.subject.common_name, "SHAKEN 1234");
    assert_eq!(issued.chain_der.len(), 2);
    openssl_verify(&issued.chain_pem, &env.ca.issuing_root_pem())
        .expect("verifies to the devca root");

    // key.pem matches the leaf.
    let key = rcgen::KeyPair::try_from(issued.key_pkcs8.as_deref().unwrap()).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        leaf.public_key_spki_der
    );
    let stats = env.ca.stats();
    assert_eq!(
        (stats.new_orders, stats.finalizes, stats.tokens_issued),
        (1, 1, 1)
    );

    // The account is reused, and so is the SPC token (cached until shortly before exp).
    up.issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("second issuance");
    assert_eq!(env.ca.stats().tokens_issued, 1, "token served from cache");
}

#[tokio::test]
async fn telephone_numbers_and_ranges() {
    // ATIS-1000080 v005 allows one SPC only; the devca's allow_tn_lists accepts the rest, as
    // an ACME-based SCA would.
    let env = DevEnv::start_with(DevCaSettings {
        allow_tn_lists: true,
        ..DevCaSettings::default()
    })
    .await;
    let up = upstream(&env, |_| {});
    let list = TnAuthList::new(vec![
        TnEntry::spc("818H").unwrap(),
        TnEntry::one("12155551212").unwrap(),
        TnEntry::range("12155551000", 100).unwrap(),
    ])
    .unwrap();
    let issued = up
        .issue(
            &Identifiers::TnAuthList(list.clone()),
            None,
            CertKind::EndEntity,
        )
        .await
        .expect("issued");
    assert_eq!(issued.leaf.tn_auth_list.as_ref(), Some(&list));
}

#[tokio::test]
async fn strict_profile_rejects_tn_lists_at_new_order() {
    let env = DevEnv::start().await;
    let up = upstream(&env, |_| {});
    for list in [
        TnAuthList::new(vec![TnEntry::one("12155551212").unwrap()]).unwrap(),
        TnAuthList::new(vec![
            TnEntry::spc("818H").unwrap(),
            TnEntry::spc("1234").unwrap(),
        ])
        .unwrap(),
    ] {
        let err = issue_err(&up, &Identifiers::TnAuthList(list)).await;
        assert_eq!(err.kind, FailureKind::Refused, "{err}");
        assert_eq!(
            err.problem_type.as_deref(),
            Some("urn:ietf:params:acme:error:rejectedIdentifier"),
            "{err}"
        );
        assert!(err.detail.contains("exactly one SPC"), "{err}");
    }
    let stats = env.ca.stats();
    assert_eq!(
        (stats.tokens_issued, stats.finalizes),
        (0, 0),
        "no token work"
    );
}

#[tokio::test]
async fn badnonce_storm_is_absorbed() {
    let env = DevEnv::start().await;
    // Half of all good nonces rejected. Two issuances (about 20 POSTs) make a storm-free run
    // vanishingly unlikely (0.5^20), and the client's 20 retries per POST make exhausting
    // them as unlikely (0.5^21 per POST).
    env.ca.behaviour().set_nonce_reject_percent(50);
    let up = upstream(&env, |_| {});
    for spc_value in ["1234", "5678"] {
        up.issue(&spc(spc_value), None, CertKind::EndEntity)
            .await
            .expect("issued despite badNonce");
    }
    assert!(env.ca.stats().bad_nonces > 0, "the storm really happened");
}

#[tokio::test]
async fn wrong_token_signature_is_refused_by_the_ca() {
    let env = DevEnv::start().await;
    env.ca
        .behaviour()
        .set_token_fault(Some(TokenFault::WrongKey));
    let err = issue_err(&upstream(&env, |_| {}), &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert_eq!(err.problem_type.as_deref(), Some(UNAUTHORIZED), "{err}");
    assert!(err.detail.contains("token signature invalid"), "{err}");
    assert_eq!(env.ca.stats().finalizes, 0);
}

#[tokio::test]
async fn expired_token_is_caught_before_it_is_sent() {
    let env = DevEnv::start().await;
    env.ca
        .behaviour()
        .set_token_fault(Some(TokenFault::Expired));
    let err = issue_err(&upstream(&env, |_| {}), &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert!(err.detail.contains("expired"), "{err}");
    assert_eq!(env.ca.stats().challenges_validated, 0);
}

#[tokio::test]
async fn token_with_wrong_fingerprint_or_tkvalue_is_caught() {
    for (fault, word) in [
        (TokenFault::WrongFingerprint, "fingerprint"),
        (TokenFault::WrongTkValue, "tkvalue"),
    ] {
        let env = DevEnv::start().await;
        env.ca.behaviour().set_token_fault(Some(fault));
        let err = issue_err(&upstream(&env, |_| {}), &spc("1234")).await;
        assert_eq!(err.kind, FailureKind::Refused, "{err}");
        assert!(err.detail.contains(word), "{word}: {err}");
    }
}

#[tokio::test]
async fn fingerprint_algorithm_mismatch_is_refused_by_the_ca() {
    let env = DevEnv::start_with(DevCaSettings {
        fingerprint: DevFingerprint::SpkiSha256,
        ..Default::default()
    })
    .await;
    let err = issue_err(&upstream(&env, |_| {}), &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert_eq!(
        err.problem_type.as_deref(),
        Some("urn:ietf:params:acme:error:incorrectResponse"),
        "{err}"
    );
    assert!(err.detail.contains("fingerprint mismatch"), "{err}");

    // Configured the CA's way, it works.
    let up = upstream(&env, |s| {
        s.challenge.fingerprint = FingerprintAlgorithm::SpkiSha256;
        s.account_key = s.account_key.with_file_name("spki-account.pem");
    });
    up.issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("spki fingerprint accepted");
}

#[tokio::test]
async fn response_field_follows_the_ca() {
    let env = DevEnv::start_with(DevCaSettings {
        response_field: DevResponseField::Tkauth,
        ..Default::default()
    })
    .await;
    let err = issue_err(&upstream(&env, |_| {}), &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert_eq!(
        err.problem_type.as_deref(),
        Some("urn:ietf:params:acme:error:malformed"),
        "{err}"
    );
    assert!(err.detail.contains("lacks the token field"), "{err}");
    let up = upstream(&env, |s| s.challenge.response_field = ResponseField::Tkauth);
    up.issue(&spc("1235"), None, CertKind::EndEntity)
        .await
        .expect("tkauth field accepted");
}

#[tokio::test]
async fn one_time_jti_needs_fresh_tokens() {
    let env = DevEnv::start_with(DevCaSettings {
        one_time_jti: true,
        ..Default::default()
    })
    .await;
    let up = upstream(&env, |s| s.challenge.reuse_tokens = false);
    up.issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("first");
    up.issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .expect("second, with a new token");
    assert_eq!(env.ca.stats().tokens_issued, 2);
}

#[tokio::test]
async fn unavailable_ca_is_retryable() {
    let env = DevEnv::start().await;
    let up = upstream(&env, |_| {});
    up.account().await.expect("account before the outage");
    env.ca.behaviour().set_unavailable(true);
    let err = issue_err(&up, &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Unavailable, "{err}");
    assert_eq!(
        err.problem_type.as_deref(),
        Some("urn:ietf:params:acme:error:serverInternal")
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn rate_limit_carries_retry_after() {
    let env = DevEnv::start().await;
    env.ca
        .behaviour()
        .set_rate_limit(Some(Duration::from_secs(7)));
    let err = issue_err(&upstream(&env, |_| {}), &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::RateLimited, "{err}");
    assert_eq!(
        err.problem_type.as_deref(),
        Some("urn:ietf:params:acme:error:rateLimited")
    );
    let after = err.retry_after.expect("Retry-After is passed on");
    assert!(
        after <= Duration::from_secs(7) && after >= Duration::from_secs(5),
        "{after:?}"
    );
}

#[tokio::test]
async fn slow_ca_hits_the_attempt_timeout() {
    let env = DevEnv::start().await;
    let up = upstream(&env, |s| s.attempt_timeout = Duration::from_secs(1));
    up.account().await.expect("account");
    env.ca.behaviour().set_delay(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = issue_err(&up, &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn missing_token_source_is_a_precise_setup_error() {
    let env = DevEnv::start().await;
    let up = upstream(&env, |s| s.sti_pa = None);
    let err = issue_err(&up, &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.detail.contains("sti_pa or token_file"), "{err}");
}

#[tokio::test]
async fn wrong_sti_pa_password_is_refused() {
    let env = DevEnv::start().await;
    let up = upstream(&env, |s| {
        s.sti_pa.as_mut().unwrap().password = Some("wrong".to_owned().into());
    });
    let err = issue_err(&up, &spc("1234")).await;
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert!(err.detail.to_lowercase().contains("login"), "{err}");
}

#[tokio::test]
async fn leaf_profile_is_checked() {
    // A sanity check that the profile checker is wired in: the issued leaf passes it, and
    // the info it returns matches an independent parse.
    let env = DevEnv::start().await;
    let issued = upstream(&env, |_| {})
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .unwrap();
    assert_eq!(CertInfo::parse(&issued.chain_der[0]).unwrap(), issued.leaf);
}
