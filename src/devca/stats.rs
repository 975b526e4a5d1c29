//! `GET /devca/stats`: what the devca did, as JSON, so a CA-outage rehearsal or a test can
//! count orders, authorizations, challenges, certificates and revocations at the CA itself,
//! and, per STAR order, the short-term certificates issued and the star-certificate fetches.
//! Served next to the ACME API but outside its fault knobs: it always answers at once.

use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use super::{DevStarOrder, state::Inner};

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
        "star_orders": star_orders_json(inner),
        "identifiers": identifiers,
    })
}

/// Every STAR order, for [`super::DevCaHandle::star_orders`].
pub(crate) fn star_orders(inner: &Inner) -> Vec<DevStarOrder> {
    let state = inner.lock_state();
    let mut out: Vec<DevStarOrder> = state
        .orders
        .iter()
        .filter_map(|(id, o)| {
            let star = o.star.as_ref()?;
            Some(DevStarOrder {
                order_url: inner.url(&format!("/acme/order/{id}")).to_string(),
                status: o.status.as_str().to_owned(),
                certificates: star.certs.len() as u64,
                fetches: star.fetches,
                serials: star
                    .certs
                    .iter()
                    .filter_map(|c| state.certs.get(&c.id).map(|c| c.serial_hex.clone()))
                    .collect(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.order_url.cmp(&b.order_url));
    out
}

/// The STAR orders as `/devca/stats` shows them: by order URL.
fn star_orders_json(inner: &Inner) -> Value {
    let map: serde_json::Map<String, Value> = star_orders(inner)
        .into_iter()
        .map(|o| {
            let v = json!({
                "status": o.status,
                "certificates": o.certificates,
                "fetches": o.fetches,
            });
            (o.order_url, v)
        })
        .collect();
    Value::Object(map)
}
