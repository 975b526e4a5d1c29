//! Pre-authorization (RFC 8555 §7.4.1 newAuthz) of configured SPCs, counted at the devca: at
//! start-up, a miss then needs no challenge; a token refresh pre-authorizes again; a CA
//! without newAuthz gets none and still issues. And the RFC 8657 CAA record of
//! `certbroker account show`, from the built binary.

use std::time::{Duration, Instant};

use crate::support::common::{DevEnv, TestBroker, spc_request};
use certbroker::{
    app::{build_pool, build_upstream},
    broker::Identifiers,
    ca::{CertKind, preauth},
    config::{CaSettings, Settings},
    devca::{DevCaSettings, Stats},
    pb::CacheStatus,
    shaken::TnAuthList,
};

/// Polls the devca's counters until `done` holds; fails after `within`.
async fn until(env: &DevEnv, within: Duration, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + within;
    loop {
        let stats = env.ca.stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn preauthorizing(env: &DevEnv, spcs: &[&str]) -> CaSettings {
    let mut s = env.ca_settings("devca");
    s.preauthorization.spcs = spcs.iter().map(|s| (*s).to_owned()).collect();
    s
}

#[tokio::test]
async fn a_miss_after_start_up_pre_authorization_runs_no_challenge() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![preauthorizing(&env, &["1234", "5678"])]).await;
    let before = until(
        &env,
        Duration::from_secs(30),
        "two pre-authorizations",
        |s| s.new_authz == 2 && s.challenges_validated == 2,
    )
    .await;
    assert_eq!(before.new_orders, 0, "pre-authorization places no order");

    let mut client = broker.client().await;
    let got = client
        .get_certificate(spc_request("1234"))
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(got.cache_status(), CacheStatus::Issued);
    assert!(!got.certificate_chain_pem.is_empty());
    let after = env.ca.stats();
    assert_eq!(after.new_orders, before.new_orders + 1);
    assert_eq!(after.finalizes, before.finalizes + 1);
    assert_eq!(
        after.challenges_validated, before.challenges_validated,
        "the order reused the pre-authorization: no challenge"
    );
    assert_eq!(
        after.authorizations, before.authorizations,
        "no new authorization for the order"
    );
    assert_eq!(after.new_authz, 2);

    // An SPC that was not pre-authorized still runs its challenge.
    client
        .get_certificate(spc_request("9999"))
        .await
        .expect("issued");
    let other = env.ca.stats();
    assert_eq!(other.challenges_validated, after.challenges_validated + 1);

    let text = broker.app.metrics().render(0, 0);
    assert!(
        text.contains("certbroker_ca_preauthorizations_total{ca=\"devca\",result=\"valid\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_ca_certificate_for_a_pre_authorized_spc_still_issues() {
    // The pre-authorization was answered with an end-entity token (atc.ca false): a CA
    // certificate needs its own authorization, with a ca token.
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![preauthorizing(&env, &["1234"])]).await;
    until(&env, Duration::from_secs(30), "pre-authorization", |s| {
        s.new_authz == 1 && s.challenges_validated == 1
    })
    .await;
    let mut client = broker.client().await;
    let got = client
        .get_certificate(certbroker::pb::GetCertificateRequest {
            ca_certificate: true,
            ..spc_request("1234")
        })
        .await
        .expect("CA certificate issued")
        .into_inner();
    assert_eq!(got.cache_status(), CacheStatus::Issued);
    // The order gave the pre-authorization up; the broker makes a new one, and the
    // end-entity miss finds it.
    let before = until(
        &env,
        Duration::from_secs(30),
        "pre-authorization again",
        |s| s.new_authz == 2 && s.challenges_validated == 3,
    )
    .await;
    client
        .get_certificate(spc_request("1234"))
        .await
        .expect("issued");
    let after = env.ca.stats();
    assert_eq!(after.challenges_validated, before.challenges_validated);
}

#[tokio::test]
async fn a_token_refresh_pre_authorizes_again() {
    // Tokens live 4 s and are refetched 1 s before exp: a refresh every ~3 s.
    let env = DevEnv::start_with(DevCaSettings {
        token_lifetime: Duration::from_secs(4),
        ..DevCaSettings::default()
    })
    .await;
    let mut s = preauthorizing(&env, &["1234"]);
    s.challenge.refresh_margin = Duration::from_secs(1);
    let _broker = TestBroker::start(vec![s]).await;
    let first = until(
        &env,
        Duration::from_secs(30),
        "first pre-authorization",
        |s| s.new_authz >= 1,
    )
    .await;
    assert_eq!((first.new_authz, first.tokens_issued), (1, 1));
    let second = until(
        &env,
        Duration::from_secs(30),
        "pre-authorization after the refresh",
        |s| s.new_authz >= 2,
    )
    .await;
    assert_eq!(second.new_authz, 2);
    assert!(
        second.tokens_issued >= 2,
        "the second pre-authorization came with a new token: {second:?}"
    );
    assert_eq!(second.new_orders, 0);
}

#[tokio::test]
async fn a_ca_without_new_authz_gets_none_and_still_issues() {
    let env = DevEnv::start_with(DevCaSettings {
        new_authz: false,
        ..DevCaSettings::default()
    })
    .await;
    let pool = build_pool(&[preauthorizing(&env, &["1234"])], &[], None).unwrap();
    // The task looks at the directory and ends: nothing else to wait for.
    for task in preauth::spawn(&pool, None) {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the pre-authorization task ends at a CA without newAuthz")
            .unwrap();
    }
    let stats = env.ca.stats();
    assert_eq!((stats.new_authz, stats.challenges_validated), (0, 0));

    let upstream = pool.upstreams().next().unwrap();
    let ids = Identifiers::TnAuthList(TnAuthList::from_spc("1234").unwrap());
    upstream
        .issue(&ids, None, CertKind::EndEntity)
        .await
        .expect("issued");
    let stats = env.ca.stats();
    assert_eq!((stats.new_authz, stats.challenges_validated), (0, 1));
}

#[tokio::test]
async fn turned_off_pre_authorizes_nothing() {
    let env = DevEnv::start().await;
    let mut s = preauthorizing(&env, &["1234"]);
    s.preauthorization.enabled = false;
    let pool = build_pool(&[s], &[], None).unwrap();
    assert!(preauth::spawn(&pool, None).is_empty());
}

#[test]
fn configuration_keys() {
    let base = "[[ca]]\nname = \"a\"\ndirectory = \"https://ca.example/dir\"\n\
                account_key = \"k.pem\"\ntoken_file = \"t.jwt\"\n";
    let s = Settings::from_toml(&format!(
        "{base}[ca.preauthorization]\nspcs = [\"1234\", \"567J\"]\n"
    ))
    .unwrap();
    assert!(s.ca[0].preauthorization.enabled, "on by default");
    assert_eq!(s.ca[0].preauthorization.spcs, ["1234", "567J"]);
    let err = |extra: &str| {
        Settings::from_toml(&format!("{base}{extra}"))
            .unwrap_err()
            .to_string()
    };
    let e = err("[ca.preauthorization]\nspcs = [\"12 34\"]\n");
    assert!(e.contains("ca[0].preauthorization.spcs"), "{e}");
    let e = err("[ca.preauthorization]\nspcs = [\"1234\", \"1234\"]\n");
    assert!(e.contains("listed twice"), "{e}");
    let no_tokens = "[[ca]]\nname = \"a\"\ndirectory = \"https://ca.example/dir\"\n\
                     account_key = \"k.pem\"\n[ca.preauthorization]\nspcs = [\"1234\"]\n";
    let e = Settings::from_toml(no_tokens).unwrap_err().to_string();
    assert!(e.contains("needs SPC tokens"), "{e}");
}

#[tokio::test]
async fn account_show_prints_the_caa_record() {
    let env = DevEnv::start_with(DevCaSettings {
        caa_identities: vec!["ca.test".into(), "ca-two.test".into()],
        ..DevCaSettings::default()
    })
    .await;
    let ca = env.ca_settings("devca");
    // `show` creates nothing: the account exists first.
    let upstream = build_upstream(&ca, None).unwrap();
    let account_url = upstream.account().await.unwrap().url().to_owned();
    let config = env.dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[[ca]]\nname = \"devca\"\ndirectory = \"{}\"\ntrust_roots = \"{}\"\n\
             account_key = \"{}\"\n",
            ca.directory,
            ca.trust_roots.unwrap().display(),
            ca.account_key.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let run = |extra: &[&str]| {
        let config = config.clone();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_certbroker"))
                .args(["account", "show", "--config", &config, "--ca", "devca"])
                .args(&extra)
                .output()
                .unwrap()
        })
    };
    let out = run(&["--domain", "example.test"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("account: {account_url}")),
        "{stdout}"
    );
    for identity in ["ca.test", "ca-two.test"] {
        let line = format!(
            "caa: example.test. IN CAA 0 issue \"{identity}; accounturi={account_url}; \
             validationmethods=http-01\""
        );
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line}:\n{stdout}"
        );
    }
    let out = run(&[]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("caa: <domain>. IN CAA 0 issue \"ca.test; accounturi="),
        "{stdout}"
    );
}
