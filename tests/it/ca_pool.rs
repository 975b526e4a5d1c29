//! The upstream CA pool against two real devcas over HTTPS, through the gRPC service:
//! failover, Retry-After, the circuit breaker, hedging, weighted spread, refusals that must
//! not fail over, and per-CA quirks.

use crate::support::common;

use std::time::{Duration, Instant};

use certbroker::{
    ca::{BreakerState, CaStats},
    config::{CaSettings, PoolPolicy, PoolSettings, Settings},
    pb::{
        self, GetCertificateRequest, RevokeRequest, revoke_request::Target, tn_auth_entry::Entry,
    },
};
use common::{DevEnv, TestBroker};
use tonic::Code;
use tonic_types::StatusExt;

fn request(spc: &str, pool: &str) -> GetCertificateRequest {
    GetCertificateRequest {
        tn_auth_list: vec![pb::TnAuthEntry {
            entry: Some(Entry::Spc(spc.into())),
        }],
        ca_pool: pool.into(),
        ..Default::default()
    }
}

fn ca(env: &DevEnv, name: &str, priority: u32, tweak: impl FnOnce(&mut CaSettings)) -> CaSettings {
    let mut s = env.ca_settings(name);
    s.priority = priority;
    tweak(&mut s);
    s
}

async fn broker(cas: Vec<CaSettings>, pools: Vec<PoolSettings>) -> TestBroker {
    let mut settings = Settings::from_toml("").expect("defaults");
    settings.ca = cas;
    settings.pool = pools;
    TestBroker::start_settings(settings).await
}

fn stats_of(broker: &TestBroker, name: &str) -> CaStats {
    broker
        .app
        .ca_pool()
        .stats()
        .into_iter()
        .find(|s| s.name == name)
        .expect("CA is in the pool")
}

async fn issue(
    broker: &TestBroker,
    spc: &str,
    pool: &str,
) -> Result<pb::GetCertificateResponse, tonic::Status> {
    let mut client = broker.client().await;
    client
        .get_certificate(request(spc, pool))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_down_or_stalled_fails_over_within_the_attempt_timeout() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![
            ca(&one, "primary", 0, |s| {
                s.attempt_timeout = Duration::from_secs(2);
            }),
            ca(&two, "secondary", 10, |_| {}),
        ],
        vec![],
    )
    .await;

    one.ca.behaviour().set_unavailable(true);
    let t = Instant::now();
    let resp = issue(&b, "1001", "").await.expect("secondary issues");
    assert_eq!(resp.issuer_ca, "secondary");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "503 fails over at once: {:?}",
        t.elapsed()
    );

    // Revoke goes to the CA (and account) that issued it.
    let mut client = b.client().await;
    client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex(resp.serial_hex.clone())),
            reason: 0,
        })
        .await
        .expect("revoked");
    assert_eq!(
        (one.ca.stats().revocations, two.ca.stats().revocations),
        (0, 1)
    );

    // A stalled primary costs at most its attempt timeout.
    one.ca.behaviour().set_unavailable(false);
    one.ca.behaviour().set_delay(Duration::from_secs(30));
    let t = Instant::now();
    let resp = issue(&b, "1002", "").await.expect("secondary issues");
    assert_eq!(resp.issuer_ca, "secondary");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "waited {took:?}"
    );
    let s = stats_of(&b, "primary");
    assert_eq!(s.failures.get("timeout"), Some(&1), "{s:?}");
    assert_eq!(
        s.failures.get("urn:ietf:params:acme:error:serverInternal"),
        Some(&1),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_primary_gets_no_request_before_retry_after() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![
            ca(&one, "primary", 0, |s| {
                s.pools = vec!["default".into(), "solo".into()]
            }),
            ca(&two, "secondary", 10, |_| {}),
        ],
        vec![],
    )
    .await;
    one.ca
        .behaviour()
        .set_rate_limit(Some(Duration::from_secs(3)));

    let t0 = Instant::now();
    assert_eq!(issue(&b, "2001", "").await.unwrap().issuer_ca, "secondary");
    assert_eq!(one.ca.stats().rate_limited, 1);
    let seen = one.ca.stats().acme_requests;

    // Inside the window the primary is skipped...
    assert_eq!(issue(&b, "2002", "").await.unwrap().issuer_ca, "secondary");
    // ... and a pool with only the primary answers RESOURCE_EXHAUSTED with RetryInfo.
    let status = issue(&b, "2003", "solo").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = status
        .get_error_details()
        .retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(3),
        "{delay:?}"
    );
    assert_eq!(
        one.ca.stats().acme_requests,
        seen,
        "no request reached the primary"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the checks ran inside the window"
    );
    assert_eq!(stats_of(&b, "primary").skipped, 2);

    // After the instant it named, the primary is asked again.
    one.ca.behaviour().set_rate_limit(None);
    // Until then the solo pool answers RESOURCE_EXHAUSTED without asking it; after, it
    // issues from the primary.
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 5000.. {
        match issue(&b, &n.to_string(), "solo").await {
            Ok(cert) => {
                assert_eq!(cert.issuer_ca, "primary");
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(
                    one.ca.stats().acme_requests,
                    seen,
                    "asked inside the window"
                );
                assert!(Instant::now() < deadline, "the window never closed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "the primary was asked again only after the window"
    );
    assert_eq!(issue(&b, "2004", "").await.unwrap().issuer_ca, "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_opens_after_failures_and_closes_after_a_probe() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![
            ca(&one, "primary", 0, |s| {
                s.breaker.failure_threshold = std::num::NonZeroU32::new(2).unwrap();
                s.breaker.cool_down = Duration::from_secs(1);
            }),
            ca(&two, "secondary", 10, |_| {}),
        ],
        vec![],
    )
    .await;
    one.ca.behaviour().set_unavailable(true);
    for spc in ["3001", "3002"] {
        assert_eq!(issue(&b, spc, "").await.unwrap().issuer_ca, "secondary");
    }
    assert_eq!(stats_of(&b, "primary").breaker, BreakerState::Open);
    let seen = one.ca.stats().acme_requests;
    assert_eq!(issue(&b, "3003", "").await.unwrap().issuer_ca, "secondary");
    assert_eq!(
        one.ca.stats().acme_requests,
        seen,
        "open breaker: primary not asked"
    );
    assert_eq!(stats_of(&b, "primary").skipped, 1);

    one.ca.behaviour().set_unavailable(false);
    // cool_down_secs = 1 passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats_of(&b, "primary").breaker == BreakerState::Open {
        assert!(Instant::now() < deadline, "the breaker never cooled down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats_of(&b, "primary").breaker, BreakerState::HalfOpen);
    assert_eq!(
        issue(&b, "3004", "").await.unwrap().issuer_ca,
        "primary",
        "probe succeeds"
    );
    let s = stats_of(&b, "primary");
    assert_eq!(s.breaker, BreakerState::Closed);
    assert_eq!((s.attempts, s.successes), (3, 1), "{s:?}");
    assert_eq!(s.latency_count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hedging_returns_the_fast_certificate_when_the_slow_one_stalls() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![ca(&one, "slow", 0, |_| {}), ca(&two, "fast", 10, |_| {})],
        vec![PoolSettings {
            name: "default".into(),
            policy: PoolPolicy::Priority,
            hedge_after_ms: Some(300),
        }],
    )
    .await;
    one.ca.behaviour().set_delay(Duration::from_secs(3));
    let t = Instant::now();
    let resp = issue(&b, "4001", "").await.expect("issued");
    assert_eq!(resp.issuer_ca, "fast");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "did not wait for the slow CA: {:?}",
        t.elapsed()
    );
    // The slow CA's order is abandoned before finalize.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats_of(&b, "slow").abandoned == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats_of(&b, "slow").abandoned, 1);
    assert_eq!(one.ca.stats().finalizes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hedged_loser_past_finalize_is_revoked_as_superseded() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![ca(&one, "a", 0, |_| {}), ca(&two, "b", 0, |_| {})],
        vec![PoolSettings {
            name: "default".into(),
            policy: PoolPolicy::Priority,
            hedge_after_ms: Some(1),
        }],
    )
    .await;
    // Both run neck and neck, so the loser has usually sent finalize when the winner ends.
    for env in [&one, &two] {
        env.ca.behaviour().set_delay(Duration::from_millis(40));
    }
    let live = |rounds: u64| {
        let issued = one.ca.stats().certificates_issued + two.ca.stats().certificates_issued;
        let revoked = one.ca.stats().revocations + two.ca.stats().revocations;
        issued - revoked == rounds
    };
    let mut superseded = 0;
    for (round, spc) in (1..).zip(["5001", "5002", "5003"]) {
        issue(&b, spc, "").await.expect("issued");
        // Wait until every attempt has ended; then exactly one certificate per request is
        // left unrevoked.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(attempts_ended(&b) && live(round)) {
            assert!(
                Instant::now() < deadline,
                "losers not settled: {:?}",
                b.app.ca_pool().stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        superseded = b
            .app
            .ca_pool()
            .stats()
            .iter()
            .map(|s| s.superseded)
            .sum::<u64>();
        if superseded > 0 {
            break;
        }
    }
    assert!(
        superseded > 0,
        "no loser got past finalize in three neck-and-neck races"
    );
}

/// Every hedged attempt of every request has ended (won, failed or abandoned), and every
/// loser that won late was revoked.
fn attempts_ended(b: &TestBroker) -> bool {
    let stats = b.app.ca_pool().stats();
    let attempts: u64 = stats.iter().map(|s| s.attempts).sum();
    let ended: u64 = stats
        .iter()
        .map(|s| s.successes + s.abandoned + s.failures.values().sum::<u64>())
        .sum();
    attempts == ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_pool_spreads_across_equal_priorities() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![ca(&one, "a", 0, |_| {}), ca(&two, "b", 0, |_| {})],
        vec![PoolSettings {
            name: "default".into(),
            policy: PoolPolicy::Weighted,
            hedge_after_ms: None,
        }],
    )
    .await;
    for i in 0..16 {
        issue(&b, &format!("6{i:03}"), "").await.expect("issued");
    }
    let (a, bb) = (
        one.ca.stats().certificates_issued,
        two.ca.stats().certificates_issued,
    );
    assert_eq!(a + bb, 16);
    assert!(a > 0 && bb > 0, "both CAs used: {a} / {bb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusal_does_not_fail_over_and_names_the_problem_type() {
    let (one, two) = (DevEnv::start().await, DevEnv::start().await);
    let b = broker(
        vec![
            ca(&one, "primary", 0, |_| {}),
            ca(&two, "secondary", 10, |_| {}),
        ],
        vec![],
    )
    .await;
    one.ca
        .behaviour()
        .set_token_fault(Some(certbroker::devca::TokenFault::WrongKey));
    let seen = two.ca.stats().acme_requests;
    let status = issue(&b, "7001", "").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("problem_type").map(String::as_str),
        Some("urn:ietf:params:acme:error:unauthorized")
    );
    assert_eq!(two.ca.stats().acme_requests, seen, "secondary never asked");
    assert_eq!(two.ca.stats().new_orders, 0);
    let s = stats_of(&b, "primary");
    assert_eq!(
        s.breaker,
        BreakerState::Closed,
        "a refusal is not an outage"
    );
    assert_eq!(
        s.failures.get("urn:ietf:params:acme:error:unauthorized"),
        Some(&1)
    );
}

/// A CA that fails with 503 and `Retry-After` is backing off after an outage, not rate
/// limiting: a call inside its `Retry-After` is UNAVAILABLE (with RetryInfo), never
/// RESOURCE_EXHAUSTED, and does not reach the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unavailable_with_retry_after_stays_unavailable_inside_the_window() {
    let one = DevEnv::start().await;
    let b = broker(vec![ca(&one, "only", 0, |_| {})], vec![]).await;
    one.ca.behaviour().set_unavailable(true);
    one.ca
        .behaviour()
        .set_unavailable_retry_after(Some(Duration::from_secs(30)));
    let reason = |s: &tonic::Status| {
        s.get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default()
    };

    let first = issue(&b, "8101", "").await.unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert_eq!(reason(&first), "UPSTREAM_UNAVAILABLE");
    let seen = one.ca.stats().acme_requests;

    let second = issue(&b, "8102", "").await.unwrap_err();
    assert_eq!(second.code(), Code::Unavailable, "{second:?}");
    assert_eq!(reason(&second), "UPSTREAM_UNAVAILABLE");
    let delay = second
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(30),
        "{delay:?}"
    );
    assert_eq!(
        one.ca.stats().acme_requests,
        seen,
        "skipped inside Retry-After"
    );
    assert_eq!(stats_of(&b, "only").skipped, 1);
}

/// Start-up does not wait for the CAs: with one CA that accepts TCP and never answers, the
/// broker listens at once, serves from the healthy CA within the hung one's attempt
/// timeout, and readiness says what is known of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_ca_delays_neither_start_up_nor_requests_beyond_its_attempt_timeout() {
    let healthy = DevEnv::start().await;
    // A "CA" that accepts connections and never says a word.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let mut settings = Settings::from_toml("").expect("defaults");
    settings.ca = vec![
        ca(&healthy, "hung", 0, |s| {
            s.directory = format!("https://{hung_addr}/acme/directory")
                .parse()
                .unwrap();
            s.attempt_timeout = Duration::from_secs(2);
        }),
        ca(&healthy, "healthy", 10, |_| {}),
    ];
    let t0 = Instant::now();
    let b = TestBroker::start_unwarmed(settings).await;
    let mut health = b.health_client().await;
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let listening = t0.elapsed();
    assert!(
        listening < Duration::from_secs(1),
        "listening after {listening:?}"
    );

    let t1 = Instant::now();
    let resp = issue(&b, "8201", "").await.expect("the healthy CA issues");
    assert_eq!(resp.issuer_ca, "healthy");
    let took = t1.elapsed();
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(3),
        "a hung CA cost more than its attempt timeout: {took:?}"
    );

    // Readiness: the healthy CA is ready, the hung one failed its warm-up (bounded by its
    // attempt timeout), in gRPC health and in /readyz.
    use certbroker::broker::ReadyState;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = b.app.broker().ca_readiness();
        let of = |n: &str| states.iter().find(|c| c.name == n).unwrap().state.clone();
        if of("healthy") == ReadyState::Ready && matches!(of("hung"), ReadyState::Failed(_)) {
            break;
        }
        assert!(Instant::now() < deadline, "readiness: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: certbroker::api::CA_HEALTH_SERVICE.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status());
        if status == Some(tonic_health::pb::health_check_response::ServingStatus::Serving) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certbroker.ca health: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(b.app.clone().serve_admin(admin, std::future::pending()));
    let ready = reqwest::Client::new()
        .get(format!("http://{admin_addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success());
    let body = ready.text().await.unwrap();
    assert!(body.contains("ca healthy: ready"), "{body}");
    assert!(body.contains("ca hung: not ready"), "{body}");
}
