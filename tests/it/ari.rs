//! ACME Renewal Information (RFC 9773) end to end, against the devca over real HTTPS: the
//! broker renews inside the window the CA suggests and names the old certificate in
//! `replaces`; `alreadyReplaced` is answered by ordering again without it; the devca's own
//! `renewalInfo` and `replaces` checks.

use crate::support::common;

use std::time::Duration;

use certbroker::{
    acme::{AcmeError, CertificateId, NewOrder},
    broker::{Identifiers, Replaces},
    ca::{CertKind, Tracking},
    config::Settings,
    devca::{DevCaSettings, DevRenewalInfo, ReplacesOutcome},
    pb,
    shaken::TnAuthList,
};
use common::{DevEnv, TestBroker, spc_request};
use time::OffsetDateTime;

/// One broker, in-memory store, checking renewals every second.
fn broker_settings(env: &DevEnv) -> Settings {
    let mut s = Settings::from_toml(
        r#"
[broker]
default_min_remaining_secs = 2
[renewal]
check_interval_secs = 1
retry_base_secs = 1
"#,
    )
    .expect("settings");
    s.ca = vec![env.ca_settings("devca")];
    s
}

fn ari(window_start: f64, window_end: f64) -> Option<DevRenewalInfo> {
    Some(DevRenewalInfo {
        window_start,
        window_end,
        retry_after: Duration::from_secs(3600),
    })
}

/// The current certificate for `spc`, then the first one that replaces it.
async fn first_renewal(
    broker: &TestBroker,
    spc: &str,
    within: Duration,
) -> (pb::GetCertificateResponse, pb::GetCertificateResponse) {
    let mut stream = broker
        .client()
        .await
        .watch_certificate(pb::WatchCertificateRequest::from(spc_request(spc)))
        .await
        .expect("watch starts")
        .into_inner();
    let first = stream
        .message()
        .await
        .unwrap()
        .expect("current certificate");
    let next = tokio::time::timeout(within, stream.message())
        .await
        .expect("renewed in time")
        .unwrap()
        .expect("a renewed certificate");
    (first.into(), next.into())
}

fn secs(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// 40-second certificates with a suggested window at 35–50 % of their life (14–20 s): the
/// broker places the renewal order inside that window, not at the default 2/3 point
/// (26.7 s), with `replaces` naming the old certificate; `status` shows the chosen time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_inside_the_suggested_window_with_replaces() {
    let env = DevEnv::start_with(DevCaSettings {
        cert_lifetime: Duration::from_secs(40),
        renewal_info: ari(0.35, 0.5),
        ..Default::default()
    })
    .await;
    let broker = TestBroker::start_settings(broker_settings(&env)).await;

    let watch = first_renewal(&broker, "4242", Duration::from_secs(35));
    tokio::pin!(watch);
    // While waiting: once the broker fetched the window, `status` shows a time inside it.
    let mut shown = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (old, new) = loop {
        tokio::select! {
            done = &mut watch => break done,
            () = tokio::time::sleep(Duration::from_millis(250)), if shown.is_none() => {
                let list = broker.client().await
                    .list_renewals(pb::ListRenewalsRequest {}).await.unwrap().into_inner();
                if let Some(e) = list.entries.first() {
                    let Some(window) = env.ca.renewal_window(&e.serial_hex) else { continue };
                    let next = e.next_renewal.as_ref().map_or(0, |t| t.seconds);
                    if (window.0.unix_timestamp()..=window.1.unix_timestamp()).contains(&next) {
                        shown = Some(next);
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "status never showed the ARI time");
            }
        }
    };
    assert!(shown.is_some(), "status showed a time inside the window");

    let (start, end) = env.ca.renewal_window(&old.serial_hex).expect("window");
    let issued = env.ca.issued_at(&old.serial_hex).expect("old issued");
    let default_point = secs(issued) + 40.0 * 2.0 / 3.0;

    // The renewal order named the old certificate, by the devca's own identifier.
    let replacements = env.ca.replacements();
    assert_eq!(replacements.len(), 1, "{replacements:?}");
    let r = &replacements[0];
    assert_eq!(r.outcome, ReplacesOutcome::Accepted);
    assert_eq!(Some(&r.cert_id), env.ca.cert_id(&old.serial_hex).as_ref());
    assert_eq!(
        r.replaced_serial_hex.as_deref(),
        Some(old.serial_hex.as_str())
    );

    // Placed inside the window (slack for the 1 s check interval on a loaded machine), well
    // before the 2/3 point the fraction rule would have used.
    let at = secs(r.at);
    assert!(
        at >= secs(start) && at <= secs(end) + 3.0,
        "order at {:.1}s, window {:.1}..{:.1}s after issuance",
        at - secs(issued),
        secs(start) - secs(issued),
        secs(end) - secs(issued)
    );
    assert!(
        at < default_point - 3.0,
        "order at {:.1}s after issuance, the fraction rule says {:.1}s",
        at - secs(issued),
        default_point - secs(issued)
    );
    let renewed = env.ca.issued_at(&new.serial_hex).expect("new issued");
    let old_not_after = old.not_after.as_ref().map_or(0, |t| t.seconds);
    assert!(
        renewed > issued && renewed.unix_timestamp() < old_not_after,
        "the new certificate came before the old one expired"
    );
    assert_ne!(new.serial_hex, old.serial_hex);
    let stats = env.ca.stats();
    assert_eq!(stats.new_orders, 2);
    assert!(stats.renewal_info_requests >= 1);
    assert_eq!(broker.app.broker().stats().renewal_failures(), 0);
}

/// A CA that answers `alreadyReplaced`: the renewal orders again without `replaces` and
/// succeeds, without counting as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_replaced_is_ordered_again_without_replaces() {
    let env = DevEnv::start_with(DevCaSettings {
        cert_lifetime: Duration::from_secs(30),
        renewal_info: ari(0.3, 0.4),
        ..Default::default()
    })
    .await;
    env.ca.behaviour().set_already_replaced(true);
    let broker = TestBroker::start_settings(broker_settings(&env)).await;

    let (old, new) = first_renewal(&broker, "4343", Duration::from_secs(25)).await;
    assert_ne!(new.serial_hex, old.serial_hex);

    let replacements = env.ca.replacements();
    assert_eq!(
        replacements.len(),
        1,
        "one order with replaces: {replacements:?}"
    );
    assert_eq!(replacements[0].outcome, ReplacesOutcome::AlreadyReplaced);
    assert_eq!(
        Some(&replacements[0].cert_id),
        env.ca.cert_id(&old.serial_hex).as_ref()
    );
    let stats = env.ca.stats();
    assert_eq!(stats.already_replaced, 1);
    assert_eq!(
        stats.new_orders, 2,
        "first issuance and the retried renewal"
    );
    assert_eq!(broker.app.broker().stats().renewal_failures(), 0);
}

/// `renewalInfo` failing (503): the broker renews by the fraction rule (2/3 of the life,
/// after the window the CA would have suggested), still naming the old certificate, and
/// the failed fetch does not count as a renewal failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_renewal_info_falls_back_to_the_fraction_rule() {
    let env = DevEnv::start_with(DevCaSettings {
        cert_lifetime: Duration::from_secs(30),
        renewal_info: ari(0.35, 0.5),
        ..Default::default()
    })
    .await;
    env.ca.behaviour().set_renewal_info_unavailable(true);
    let broker = TestBroker::start_settings(broker_settings(&env)).await;

    let (old, new) = first_renewal(&broker, "4444", Duration::from_secs(28)).await;
    assert_ne!(new.serial_hex, old.serial_hex);
    assert!(
        env.ca.stats().renewal_info_requests >= 1,
        "the broker asked"
    );

    let issued = secs(env.ca.issued_at(&old.serial_hex).unwrap());
    let (_, window_end) = env.ca.renewal_window(&old.serial_hex).unwrap();
    let replacements = env.ca.replacements();
    assert_eq!(replacements.len(), 1, "{replacements:?}");
    assert_eq!(replacements[0].outcome, ReplacesOutcome::Accepted);
    let at = replacements[0].at;
    assert!(
        secs(at) > secs(window_end) + 2.0 && secs(at) >= issued + 30.0 * 2.0 / 3.0 - 1.0,
        "order at {:.1}s after issuance; window ended at {:.1}s, the fraction rule says 20s",
        secs(at) - issued,
        secs(window_end) - issued
    );
    assert_eq!(broker.app.broker().stats().renewal_failures(), 0);
}

fn spc(s: &str) -> Identifiers {
    Identifiers::TnAuthList(TnAuthList::from_spc(s).unwrap())
}

/// The devca's side, driven through one upstream: `renewalInfo` answers the configured
/// window; a certificate can be replaced once (then `alreadyReplaced`, which the upstream
/// answers by ordering without `replaces`); `replaces` goes only to the CA that issued the
/// certificate; unknown identifiers are 404 and `malformed`.
#[tokio::test]
async fn devca_renewal_info_and_replaces_rules() {
    let env = DevEnv::start_with(DevCaSettings {
        renewal_info: ari(0.5, 0.6),
        ..Default::default()
    })
    .await;
    let up = certbroker::app::build_upstream(&env.ca_settings("devca"), None).unwrap();
    let a = up
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .unwrap();
    let a_leaf = a.chain_der[0].clone();
    let a_serial = a.leaf.serial_hex.trim_start_matches('0').to_owned();

    // The window, through the ACME client, is the one the devca computes (in whole seconds,
    // rounded inwards).
    let w = up
        .renewal_window(&a_leaf)
        .await
        .unwrap()
        .expect("ARI offered");
    let (start, end) = env.ca.renewal_window(&a_serial).unwrap();
    let ceil = |t: OffsetDateTime| t.unix_timestamp() + i64::from(t.nanosecond() > 0);
    assert_eq!((w.start, w.end), (ceil(start), end.unix_timestamp()));
    assert_eq!(w.retry_after, Some(Duration::from_secs(3600)));
    assert!(w.explanation_url.is_some());
    let id = CertificateId::from_der(&a_leaf).unwrap();
    assert_eq!(Some(id.to_string()), env.ca.cert_id(&a_serial));

    let replaces_a = Replaces {
        issuer_ca: "devca".into(),
        leaf_der: a_leaf.clone(),
    };
    let with = |r| Tracking {
        replaces: Some(r),
        ..Tracking::default()
    };
    up.issue_tracked(&spc("1234"), None, CertKind::EndEntity, with(&replaces_a))
        .await
        .expect("first replacement");
    up.issue_tracked(&spc("1234"), None, CertKind::EndEntity, with(&replaces_a))
        .await
        .expect("second replacement, ordered again without replaces");
    let outcomes: Vec<_> = env.ca.replacements().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![ReplacesOutcome::Accepted, ReplacesOutcome::AlreadyReplaced]
    );

    // Issued by another CA (by name): the order does not mention it.
    let elsewhere = Replaces {
        issuer_ca: "another-ca".into(),
        leaf_der: a_leaf.clone(),
    };
    up.issue_tracked(&spc("1234"), None, CertKind::EndEntity, with(&elsewhere))
        .await
        .unwrap();
    assert_eq!(env.ca.replacements().len(), 2, "no replaces sent");
    assert_eq!(env.ca.stats().new_orders, 4);

    // Unknown certificates: 404 from renewalInfo, malformed from newOrder.
    let account = up.account().await.unwrap();
    let unknown = CertificateId::from_parts(b"not-a-key-id", &[0x01]);
    match account.client().renewal_info(&unknown).await {
        Err(AcmeError::Problem { problem, .. }) => assert_eq!(problem.status, Some(404)),
        other => panic!("expected 404, got {other:?}"),
    }
    let err = account
        .new_order(&NewOrder {
            identifiers: vec![certbroker::acme::Identifier::new(
                "TNAuthList",
                "MAigBhYEMTIzNA==",
            )],
            replaces: Some(unknown.to_string()),
            ..NewOrder::default()
        })
        .await
        .expect_err("unknown replaces");
    assert!(
        err.problem().is_some_and(|p| p.is_acme("malformed")),
        "{err}"
    );
}

/// A CA without ARI: no window (the fraction rule applies) and no `replaces` sent (the
/// devca would reject it).
#[tokio::test]
async fn no_renewal_info_no_replaces() {
    let env = DevEnv::start().await;
    let up = certbroker::app::build_upstream(&env.ca_settings("devca"), None).unwrap();
    let a = up
        .issue(&spc("1234"), None, CertKind::EndEntity)
        .await
        .unwrap();
    assert_eq!(up.renewal_window(&a.chain_der[0]).await.unwrap(), None);
    let replaces = Replaces {
        issuer_ca: "devca".into(),
        leaf_der: a.chain_der[0].clone(),
    };
    up.issue_tracked(
        &spc("1234"),
        None,
        CertKind::EndEntity,
        Tracking {
            replaces: Some(&replaces),
            ..Tracking::default()
        },
    )
    .await
    .expect("renewal without replaces");
    assert!(env.ca.replacements().is_empty());
}
