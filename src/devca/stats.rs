//! `GET /devca/stats`: what the devca did, as JSON, so a CA-outage rehearsal or a test can
//! count orders, authorizations, challenges, certificates and revocations at the CA itself,
//! and, per STAR order, the short-term certificates issued and the star-certificate fetches.
//! Served next to the ACME API but outside its fault knobs: it always answers at once.

use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use super::state::Inner;

/// Path of the counters endpoint.
pub(crate) const STATS_PATH: &str = "/devca/stats";

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route(STATS_PATH, get(stats))
        .with_state(inner)
}

async fn stats(State(inner): State<Arc<Inner>>) -> Json<Value> {
    Json(report(&inner))
}

#[derive(Default)]
struct PerIdentifier {
    orders: u64,
    certificates: u64,
    revocations: u64,
}

/// The counters, and orders, certificates and revocations per identifier (`spc:<SPC>`,
/// `dns:<name>`).
fn report(inner: &Inner) -> Value {
    let s = inner.behaviour.stats();
    let mut per: BTreeMap<String, PerIdentifier> = BTreeMap::new();
    {
        let state = inner.lock_state();
        for order in state.orders.values() {
            for name in order.identifiers.iter().flat_map(|i| i.names()) {
                per.entry(name).or_default().orders += 1;
            }
        }
        for cert in state.certs.values() {
            for name in cert.identifiers.iter().flat_map(|i| i.names()) {
                let e = per.entry(name).or_default();
                e.certificates += 1;
                e.revocations += u64::from(cert.revoked.is_some());
            }
        }
    }
    let identifiers: serde_json::Map<String, Value> = per
        .into_iter()
        .map(|(name, c)| {
            let v = json!({
                "orders": c.orders,
                "certificates": c.certificates,
                "revocations": c.revocations,
            });
            (name, v)
        })
        .collect();
    json!({
        "orders": s.new_orders,
        "authorizations": s.authorizations,
        "challenges_validated": s.challenges_validated,
        "challenges_invalid": s.challenges_invalid,
        "finalizes": s.finalizes,
        "certificates": s.certificates_issued,
        "revocations": s.revocations,
        "sti_pa_tokens": s.tokens_issued,
        "acme_requests": s.acme_requests,
        "bad_nonces": s.bad_nonces,
        "rate_limited": s.rate_limited,
        "injected_errors": s.injected_errors,
        "hung_requests": s.hung_requests,
        "renewal_info_requests": s.renewal_info_requests,
        "already_replaced": s.already_replaced,
        "new_authz": s.new_authz,
        "star_certificates": s.star_certificates,
        "star_fetches": s.star_fetches,
        "star_orders": super::star::report_json(inner),
        "identifiers": identifiers,
    })
}
