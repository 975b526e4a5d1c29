//! STAR (RFC 8739) and pre-authorization (newAuthz, RFC 8555 §7.4.1) at the devca, driven
//! through the crate's ACME client over real HTTPS with SPC tokens from the devca's STI-PA:
//! consecutive short-term certificates with second-scale lifetimes, their headers, every
//! §3.1.1 refusal, cancellation and the four autoRenewal problems, unauthenticated GET, a CA
//! without STAR, orders that need no challenge after pre-authorization, and the
//! `certbroker devca` flags that shape all of it.

use crate::support::common;

use std::time::{Duration, Instant};

use certbroker::{
    acme::{
        self, Account, AccountKey, AcmeError, AutoRenewal, Client, ClientSettings, Endpoint,
        Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy, StarCertificate,
    },
    challenge::{
        FingerprintAlgorithm, StiPaClient, StiPaSettings, TokenProvider, TokenRequest, fingerprint,
    },
    devca::{DevCa, DevCaHandle, DevCaSettings, DevStar},
    shaken::{
        CertInfo, CsrSpec, Subject, TkValueEncoding, TnAuthList, build_csr, generate_key,
        parse_pem_chain,
    },
    tls,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

struct Env {
    ca: DevCaHandle,
    client: Client,
    account: Account,
    stipa: StiPaClient,
}

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(500))
        .timeout(Duration::from_secs(30))
}

async fn env(settings: DevCaSettings) -> Env {
    let ca = DevCa::start(DevCaSettings {
        state_dir: Some(tempfile::tempdir().unwrap().keep()),
        ..settings
    })
    .await
    .expect("devca starts");
    let roots = tls::read_roots(ca.trust_root_path()).unwrap();
    let client = Client::new(ClientSettings {
        trust_roots: Some(roots.clone()),
        ..ClientSettings::new(ca.directory_url())
    })
    .await
    .expect("directory");
    let account = new_account(&client).await;
    let (user_id, password) = ca.sti_pa_credentials();
    let stipa = StiPaClient::new(StiPaSettings {
        base_url: ca.sti_pa_url(),
        user_id,
        password,
        trust_roots: Some(roots),
        tkvalue_encoding: TkValueEncoding::Base64,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    Env {
        ca,
        client,
        account,
        stipa,
    }
}

async fn new_account(client: &Client) -> Account {
    client
        .new_account(
            AccountKey::generate().unwrap(),
            &NewAccount {
                terms_of_service_agreed: true,
                ..NewAccount::default()
            },
        )
        .await
        .expect("account")
}

fn spc(s: &str) -> TnAuthList {
    TnAuthList::from_spc(s).unwrap()
}

fn identifier(list: &TnAuthList) -> Identifier {
    Identifier::new("TNAuthList", list.encode(TkValueEncoding::Base64Url))
}

/// Answers the tkauth-01 challenge of `authz_url` with a fresh SPC token for `account`.
async fn authorize(env: &Env, account: &Account, authz_url: &str, list: &TnAuthList) {
    let authz = account.authorization(authz_url).await.unwrap();
    let chall = authz
        .challenges
        .iter()
        .find(|c| c.r#type == "tkauth-01")
        .expect("tkauth-01 offered");
    let token = env
        .stipa
        .token(&TokenRequest {
            tn_auth_list: list.clone(),
            ca: false,
            fingerprint: fingerprint(
                FingerprintAlgorithm::JwkThumbprint,
                &account.key().public_jwk(),
            )
            .unwrap(),
        })
        .await
        .expect("SPC token");
    account
        .respond_challenge(&chall.url, &json!({"atc": token.jwt()}))
        .await
        .unwrap();
    account
        .poll_authorization(authz_url, &policy())
        .await
        .expect("authorization valid");
}

fn csr(list: &TnAuthList, spc: &str) -> Vec<u8> {
    let subject = Subject::shaken("Example Telecom", spc);
    build_csr(
        &generate_key().unwrap(),
        &CsrSpec {
            subject: &subject,
            tn_auth_list: Some(list),
            dns_names: &[],
            ca: false,
        },
    )
    .unwrap()
}

/// Places an order (STAR when `ar` is set), authorizes it, finalizes and waits for `valid`.
async fn valid_order(env: &Env, code: &str, ar: Option<AutoRenewal>) -> Order {
    let list = spc(code);
    let order = env
        .account
        .new_order(&NewOrder {
            identifiers: vec![identifier(&list)],
            auto_renewal: ar,
            ..NewOrder::default()
        })
        .await
        .expect("newOrder");
    for authz in &order.state.authorizations {
        authorize(env, &env.account, authz, &list).await;
    }
    let ready = env.account.poll_order(&order.url, &policy()).await.unwrap();
    assert_eq!(ready.state.status, OrderStatus::Ready);
    env.account
        .finalize(&ready, &csr(&list, code))
        .await
        .unwrap();
    let valid = env.account.poll_order(&order.url, &policy()).await.unwrap();
    assert_eq!(valid.state.status, OrderStatus::Valid, "{valid:?}");
    valid
}

fn problem_of(err: &AcmeError) -> (String, String) {
    let p = err
        .problem()
        .unwrap_or_else(|| panic!("a problem: {err:?}"));
    (
        p.r#type.clone().unwrap_or_default(),
        p.detail.clone().unwrap_or_default(),
    )
}

fn assert_problem(err: &AcmeError, name: &str, detail: &str) {
    let (kind, got) = problem_of(err);
    assert_eq!(kind, format!("urn:ietf:params:acme:error:{name}"), "{got}");
    assert!(got.contains(detail), "detail {got:?} lacks {detail:?}");
}

fn leaf(cert: &StarCertificate) -> CertInfo {
    CertInfo::parse(&parse_pem_chain(&cert.pem).unwrap()[0]).unwrap()
}

fn in_secs(s: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::seconds(s)
}

#[tokio::test]
async fn three_consecutive_short_term_certificates_then_cancel() {
    let env = env(DevCaSettings::default()).await;
    let meta = env
        .client
        .directory()
        .meta
        .auto_renewal
        .expect("STAR offered");
    assert_eq!(meta.min_lifetime, 1);
    assert!(meta.allow_certificate_get);

    let (lifetime, adjust) = (4_i64, 1_i64);
    let end = in_secs(120);
    let order = valid_order(
        &env,
        "1234",
        Some(AutoRenewal {
            lifetime_adjust: Some(adjust as u64),
            allow_certificate_get: Some(true),
            ..AutoRenewal::new(end, Duration::from_secs(lifetime as u64))
        }),
    )
    .await;
    assert_eq!(order.state.certificate, None, "STAR: no certificate URL");
    let echoed = order
        .state
        .auto_renewal
        .clone()
        .expect("auto-renewal echoed");
    assert_eq!((echoed.lifetime, echoed.lifetime_adjust), (4, Some(1)));
    assert_eq!(echoed.end_date.unix_timestamp(), end.unix_timestamp());
    let star_url = order
        .state
        .star_certificate
        .clone()
        .expect("star-certificate");

    // Poll (POST-as-GET) until three distinct certificates were served.
    let mut seen: Vec<(StarCertificate, CertInfo)> = Vec::new();
    let mut fetches = 0_u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} certificates",
            seen.len()
        );
        let cert = env.account.star_certificate(&star_url).await.unwrap();
        fetches += 1;
        let info = leaf(&cert);
        if seen
            .last()
            .is_none_or(|(_, prev)| prev.serial_hex != info.serial_hex)
        {
            let now = OffsetDateTime::now_utc();
            if let Some((_, prev)) = seen.last() {
                assert!(
                    now < prev.not_after,
                    "next certificate before the current expires"
                );
                assert!(
                    info.not_before <= prev.not_before + time::Duration::seconds(lifetime / 2 + 1),
                    "issued at the latest halfway: {} then {}",
                    prev.not_before,
                    info.not_before
                );
            }
            assert!(
                info.not_before <= now && now < info.not_after,
                "current is valid now"
            );
            seen.push((cert, info));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let serials: Vec<&str> = seen.iter().map(|(_, i)| i.serial_hex.as_str()).collect();
    for (cert, info) in &seen {
        assert_eq!(
            (info.not_after - info.not_before).whole_seconds(),
            lifetime + adjust,
            "validity = lifetime + lifetime-adjust"
        );
        let nb = cert.not_before.expect("Cert-Not-Before");
        let na = cert.not_after.expect("Cert-Not-After");
        assert_eq!(nb.unix_timestamp(), info.not_before.unix_timestamp());
        assert_eq!(na.unix_timestamp(), info.not_after.unix_timestamp());
        assert_eq!(
            cert.cache_control.as_deref(),
            Some("no-store"),
            "POST-as-GET"
        );
    }
    let devca = env.ca.star_orders();
    assert_eq!(devca.len(), 1);
    assert_eq!(devca[0].order_url, order.url);
    assert_eq!(
        devca[0].fetches, fetches,
        "every fetch counted at the devca"
    );
    for s in &serials {
        assert!(
            devca[0].serials.iter().any(|d| d == s),
            "{s} issued for the order"
        );
    }

    // Unauthenticated GET (negotiated), with cache directives that end before notAfter; HEAD
    // answers the headers and is not counted.
    let got = env.client.star_certificate_get(&star_url).await.unwrap();
    let current = leaf(&got);
    let max_age: i64 = got
        .cache_control
        .as_deref()
        .and_then(|c| c.strip_prefix("public, max-age="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cache directives: {:?}", got.cache_control));
    assert!(max_age <= (current.not_after - OffsetDateTime::now_utc()).whole_seconds() + 1);
    let http = tls::http_client(
        Some(&tls::read_roots(env.ca.trust_root_path()).unwrap()),
        Duration::from_secs(10),
    )
    .unwrap();
    let head = http.head(&star_url).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert!(head.headers().contains_key("cert-not-after"));
    assert_eq!(
        env.ca.star_orders()[0].fetches,
        fetches + 1,
        "GET counted, HEAD not"
    );

    // revokeCert of a STAR certificate: 403 autoRenewalRevocationNotSupported.
    let der = parse_pem_chain(&got.pem).unwrap().remove(0);
    let err = env.account.revoke(&der, None).await.unwrap_err();
    assert_problem(
        &err,
        acme::AUTO_RENEWAL_REVOCATION_NOT_SUPPORTED,
        "cancel the order",
    );
    assert_eq!(err.problem().unwrap().status, Some(403));

    // Cancel: the order is canceled; star-certificate then 403 autoRenewalCanceled, by POST
    // and by GET; a second cancel is autoRenewalCancellationInvalid.
    let canceled = env.account.cancel_star_order(&order.url).await.unwrap();
    assert_eq!(canceled.state.status, OrderStatus::Canceled);
    let err = env.account.star_certificate(&star_url).await.unwrap_err();
    assert_problem(&err, acme::AUTO_RENEWAL_CANCELED, "canceled");
    assert_eq!(err.problem().unwrap().status, Some(403));
    let err = env
        .client
        .star_certificate_get(&star_url)
        .await
        .unwrap_err();
    assert_problem(&err, acme::AUTO_RENEWAL_CANCELED, "canceled");
    let err = env.account.cancel_star_order(&order.url).await.unwrap_err();
    assert_problem(&err, acme::AUTO_RENEWAL_CANCELLATION_INVALID, "is canceled");
    assert_eq!(err.problem().unwrap().status, Some(400));
    let again = env.account.order(&order.url).await.unwrap();
    assert_eq!(again.state.status, OrderStatus::Canceled);
    assert_eq!(env.ca.star_orders()[0].status, "canceled");

    let stats = env.ca.stats();
    assert!(stats.star_certificates >= 3, "{stats:?}");
    assert_eq!(stats.star_fetches, fetches + 1);
    let json: Value = http
        .get(env.ca.stats_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["star_orders"][&order.url]["fetches"], fetches + 1);
    assert_eq!(json["star_orders"][&order.url]["status"], "canceled");
    env.ca.shutdown().await;
}

#[tokio::test]
async fn auto_renewal_outside_the_rules_is_refused_with_a_precise_detail() {
    let env = env(DevCaSettings {
        star: Some(DevStar {
            min_lifetime: Duration::from_secs(2),
            max_duration: Duration::from_secs(3600),
            allow_certificate_get: false,
        }),
        ..DevCaSettings::default()
    })
    .await;
    let meta = env.client.directory().meta.auto_renewal.unwrap();
    assert_eq!(
        (
            meta.min_lifetime,
            meta.max_duration,
            meta.allow_certificate_get
        ),
        (2, 3600, false)
    );
    let value = identifier(&spc("1234")).value;
    let end = time::format_description::well_known::Rfc3339;
    let at = |s: i64| in_secs(s).format(&end).unwrap();
    let ok = json!({"end-date": at(600), "lifetime": 60});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"notBefore": at(1), "auto-renewal": ok.clone()}),
            "notBefore must not be present",
        ),
        (
            json!({"notAfter": at(60), "auto-renewal": ok.clone()}),
            "notAfter must not be present",
        ),
        (json!({"auto-renewal": 5}), "must be a JSON object"),
        (
            json!({"auto-renewal": {"lifetime": 60}}),
            "end-date is required",
        ),
        (
            json!({"auto-renewal": {"end-date": "tomorrow", "lifetime": 60}}),
            "not an RFC 3339",
        ),
        (
            json!({"auto-renewal": {"end-date": at(600)}}),
            "lifetime is required",
        ),
        (
            json!({"auto-renewal": {"end-date": at(600), "lifetime": "60"}}),
            "lifetime \"60\" is not a non-negative integer",
        ),
        (
            json!({"auto-renewal": {"end-date": at(600), "lifetime": 60, "lifetime-adjust": -1}}),
            "lifetime-adjust -1 is not a non-negative integer",
        ),
        (
            json!({"auto-renewal": {"end-date": at(-10), "lifetime": 60}}),
            "is in the past",
        ),
        (
            json!({"auto-renewal": {"start-date": at(900), "end-date": at(600), "lifetime": 60}}),
            "is not after start-date",
        ),
        (
            json!({"auto-renewal": {"end-date": at(600), "lifetime": 1}}),
            "lifetime 1 s is below this CA's min-lifetime of 2 s",
        ),
        (
            json!({"auto-renewal": {"end-date": at(7200), "lifetime": 60}}),
            "exceeds this CA's max-duration of 3600 s",
        ),
        (
            json!({"auto-renewal": {"end-date": at(600), "lifetime": 60,
                "allow-certificate-get": true}}),
            "this CA does not allow unauthenticated GET",
        ),
        (
            json!({"auto-renewal": {"end-date": at(600), "lifetime": 60,
                "allow-certificate-get": "yes"}}),
            "allow-certificate-get \"yes\" is not a boolean",
        ),
    ];
    let new_order = env.client.directory().new_order.clone();
    for (extra, detail) in cases {
        let mut payload = json!({"identifiers": [{"type": "TNAuthList", "value": value}]});
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        let err = env
            .account
            .post_json(Endpoint::NewOrder, &new_order, &payload)
            .await
            .expect_err(detail);
        assert_problem(&err, "malformed", detail);
        assert_eq!(err.problem().unwrap().status, Some(400), "{detail}");
    }
    assert_eq!(env.ca.stats().new_orders, 0, "no order created");
    // Inside the limits: accepted.
    let payload = json!({"identifiers": [{"type": "TNAuthList", "value": value}],
        "auto-renewal": ok});
    let order = env
        .account
        .post_json(Endpoint::NewOrder, &new_order, &payload)
        .await
        .expect("valid auto-renewal accepted");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["auto-renewal"]["lifetime"], 60);
}

#[tokio::test]
async fn post_as_get_only_start_date_end_date_and_expiry() {
    let env = env(DevCaSettings::default()).await;
    let start = in_secs(2);
    let end = start + time::Duration::seconds(5);
    let order = valid_order(
        &env,
        "5678",
        Some(AutoRenewal {
            start_date: Some(start),
            ..AutoRenewal::new(end, Duration::from_secs(2))
        }),
    )
    .await;
    let url = order.state.star_certificate.clone().unwrap();
    let first = env.account.star_certificate(&url).await.unwrap();
    let info = leaf(&first);
    assert!(
        info.not_before.unix_timestamp() >= start.unix_timestamp(),
        "not before start-date"
    );
    assert_eq!((info.not_after - info.not_before).whole_seconds(), 2);

    // allow-certificate-get not negotiated: GET refused, POST-as-GET works.
    let err = env.client.star_certificate_get(&url).await.unwrap_err();
    assert_problem(
        &err,
        "unauthorized",
        "did not negotiate allow-certificate-get",
    );

    // A pending STAR order (which expires no earlier than its end-date, a month away) and
    // a non-STAR order cannot be canceled.
    let month = in_secs(30 * 24 * 3600);
    let pending = env
        .account
        .new_order(&NewOrder {
            identifiers: vec![identifier(&spc("5678"))],
            auto_renewal: Some(AutoRenewal::new(month, Duration::from_secs(10))),
            ..NewOrder::default()
        })
        .await
        .unwrap();
    let expires = pending.state.expires.expect("expires");
    assert!(
        expires >= month - time::Duration::seconds(1),
        "lives until end-date: {expires}"
    );
    let err = env
        .account
        .cancel_star_order(&pending.url)
        .await
        .unwrap_err();
    assert_problem(
        &err,
        acme::AUTO_RENEWAL_CANCELLATION_INVALID,
        "this one is pending",
    );
    let plain = valid_order(&env, "5678", None).await;
    assert!(plain.state.certificate.is_some());
    let err = env.account.cancel_star_order(&plain.url).await.unwrap_err();
    assert_problem(
        &err,
        acme::AUTO_RENEWAL_CANCELLATION_INVALID,
        "not a STAR order",
    );

    // Until end-date each next certificate comes; the last ends at end-date. Afterwards:
    // 403 autoRenewalExpired for the certificate and for a cancellation.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_not_after = info.not_after;
    let expired = loop {
        assert!(Instant::now() < deadline, "end-date never reached");
        match env.account.star_certificate(&url).await {
            Ok(cert) => last_not_after = leaf(&cert).not_after,
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_problem(&expired, acme::AUTO_RENEWAL_EXPIRED, "end-date");
    assert_eq!(expired.problem().unwrap().status, Some(403));
    assert!(last_not_after.unix_timestamp() <= end.unix_timestamp());
    let devca = env.ca.star_orders();
    let ours = devca.iter().find(|o| o.order_url == order.url).unwrap();
    assert!(ours.certificates >= 3, "{devca:?}");
    let err = env.account.cancel_star_order(&order.url).await.unwrap_err();
    assert_problem(&err, acme::AUTO_RENEWAL_EXPIRED, "has passed");
}

#[tokio::test]
async fn a_ca_without_star_refuses_auto_renewal() {
    let env = env(DevCaSettings {
        star: None,
        new_authz: false,
        ..DevCaSettings::default()
    })
    .await;
    let dir = env.client.directory();
    assert_eq!(dir.meta.auto_renewal, None, "no meta.auto-renewal");
    assert_eq!(dir.new_authz, None, "no newAuthz");
    let err = env
        .account
        .new_order(&NewOrder {
            identifiers: vec![identifier(&spc("1234"))],
            auto_renewal: Some(AutoRenewal::new(in_secs(60), Duration::from_secs(10))),
            ..NewOrder::default()
        })
        .await
        .unwrap_err();
    assert_problem(&err, "malformed", "does not offer STAR");
    let pre = env
        .account
        .new_authorization(&identifier(&spc("1234")))
        .await
        .unwrap();
    assert!(pre.is_none(), "no newAuthz: nothing to pre-authorize");
    assert_eq!(env.ca.stats().new_orders, 0);
}

#[tokio::test]
async fn pre_authorization_makes_orders_need_no_challenge() {
    let env = env(DevCaSettings::default()).await;
    let dir = env.client.directory();
    assert!(dir.new_authz.is_some());
    assert_eq!(dir.meta.caa_identities, ["devca.certbroker.test"]);
    assert_eq!(
        env.account.caa_record_value(&["tkauth-01"]).unwrap(),
        format!(
            "devca.certbroker.test; accounturi={}; validationmethods=tkauth-01",
            env.account.url()
        )
    );

    let list = spc("4321");
    let (authz_url, authz) = env
        .account
        .new_authorization(&identifier(&list))
        .await
        .unwrap()
        .expect("newAuthz offered");
    assert_eq!(authz.status, acme::AuthorizationStatus::Pending);
    assert_eq!(authz.challenges[0].r#type, "tkauth-01");
    authorize(&env, &env.account, &authz_url, &list).await;
    let after_pre = env.ca.stats();
    assert_eq!(
        (after_pre.new_authz, after_pre.challenges_validated),
        (1, 1)
    );

    // Two orders (one plain, one STAR) for the identifier: ready at once, the
    // pre-authorization reused, no challenge validated.
    for ar in [
        None,
        Some(AutoRenewal::new(in_secs(60), Duration::from_secs(10))),
    ] {
        let order = env
            .account
            .new_order(&NewOrder {
                identifiers: vec![identifier(&list)],
                auto_renewal: ar.clone(),
                ..NewOrder::default()
            })
            .await
            .unwrap();
        assert_eq!(order.state.status, OrderStatus::Ready, "{order:?}");
        assert_eq!(order.state.authorizations, std::slice::from_ref(&authz_url));
        env.account
            .finalize(&order, &csr(&list, "4321"))
            .await
            .unwrap();
        let valid = env.account.poll_order(&order.url, &policy()).await.unwrap();
        assert_eq!(valid.state.status, OrderStatus::Valid);
        assert_eq!(
            valid.state.star_certificate.is_some(),
            ar.is_some(),
            "{valid:?}"
        );
    }
    let stats = env.ca.stats();
    assert_eq!(
        stats.challenges_validated, 1,
        "no challenge after pre-authorization"
    );
    assert_eq!(stats.authorizations, 1, "no new authorization either");

    // Another account, or another SPC, is not covered by it.
    let other = new_account(&env.client).await;
    let order = other
        .new_order(&NewOrder {
            identifiers: vec![identifier(&list)],
            ..NewOrder::default()
        })
        .await
        .unwrap();
    assert_eq!(order.state.status, OrderStatus::Pending);
    let order = env
        .account
        .new_order(&NewOrder {
            identifiers: vec![identifier(&spc("4322"))],
            ..NewOrder::default()
        })
        .await
        .unwrap();
    assert_eq!(order.state.status, OrderStatus::Pending);
    authorize(
        &env,
        &env.account,
        &order.state.authorizations[0],
        &spc("4322"),
    )
    .await;
    assert_eq!(env.ca.stats().challenges_validated, 2);
}

#[tokio::test]
async fn certbroker_devca_flags_shape_star_new_authz_and_caa() {
    async fn directory(p: &common::DevcaProcess) -> Value {
        let roots = tls::read_roots(std::path::Path::new(&p.trust_root)).unwrap();
        let http = tls::http_client(Some(&roots), Duration::from_secs(10)).unwrap();
        http.get(&p.directory)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    let on = common::DevcaProcess::start(
        &[
            "--star-min-lifetime",
            "30s",
            "--star-max-duration",
            "2h",
            "--star-no-certificate-get",
            "--caa-identity",
            "ca.example.test",
        ],
        false,
        |_| {},
    );
    let dir = directory(&on).await;
    assert_eq!(
        dir["meta"]["auto-renewal"],
        json!({"min-lifetime": 30, "max-duration": 7200, "allow-certificate-get": false})
    );
    assert_eq!(dir["meta"]["caaIdentities"], json!(["ca.example.test"]));
    assert!(dir["newAuthz"].is_string(), "{dir}");
    let off = common::DevcaProcess::start(&["--no-star", "--no-new-authz"], false, |_| {});
    let dir = directory(&off).await;
    assert!(dir["meta"].get("auto-renewal").is_none(), "{dir}");
    assert!(dir.get("newAuthz").is_none(), "{dir}");
    assert_eq!(
        dir["meta"]["caaIdentities"],
        json!(["devca.certbroker.test"])
    );
}
