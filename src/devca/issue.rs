//! finalize, issuance, certificate download and revocation (RFC 8555 §7.4, §7.4.2, §7.6).

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::{
    DevKeyReuse, ari,
    behaviour::Counter,
    jws::{AccountRequest, KeyRef, Problem, spki_der, verify_request},
    pki::IssueRequest,
    state::{Inner, IssuedCert, Order, Status, identifier_names, order_json, random_id},
};
use crate::shaken::{CertInfo, parse_csr};

fn bad_csr(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "badCSR", detail)
}

/// finalize (RFC 8555 §7.4): checks the CSR against the order and the SHAKEN rules, then
/// issues in the background.
pub(crate) async fn finalize(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let payload = req.json()?.unwrap_or_default();
    let csr_der = payload
        .get("csr")
        .and_then(Value::as_str)
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or_else(|| bad_csr("csr must be base64url DER"))?;
    let mut state = inner.lock_state();
    state.record_csr(csr_der.clone());
    let order = state
        .orders
        .get(&id)
        .ok_or_else(|| Problem::not_found("order"))?;
    if order.account != req.account_id()? {
        return Err(Problem::unauthorized("not your order"));
    }
    if order.status != Status::Ready {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "orderNotReady",
            format!("order is {}", order.status.as_str()),
        ));
    }
    let csr = parse_csr(&csr_der).map_err(|e| bad_csr(e.to_string()))?;
    if !csr.key_is_p256 {
        return Err(bad_csr("CSR key must be P-256"));
    }
    if !csr.is_ecdsa_sha256() {
        return Err(bad_csr("CSR must be signed with ecdsa-with-SHA256"));
    }
    let is_account_key = csr.public_key_spki_der == spki_der(&req.jwk);
    match inner.settings.account_key_reuse {
        DevKeyReuse::Reject if is_account_key => {
            return Err(bad_csr("CSR key must not be the account key"));
        }
        DevKeyReuse::Require if !is_account_key => {
            return Err(bad_csr("Public key does not match account"));
        }
        _ => {}
    }
    let ordered_list = order
        .identifiers
        .iter()
        .find_map(|i| i.tn_auth_list.clone());
    match (&ordered_list, &csr.tn_auth_list) {
        (Some(want), Some(got)) if want != got => {
            return Err(bad_csr(format!(
                "TNAuthList extension value does not match: CSR {got}, order {want}"
            )));
        }
        (Some(_), None) => return Err(bad_csr("CSR lacks the TNAuthList extension")),
        (None, Some(_)) => return Err(bad_csr("CSR has a TNAuthList the order lacks")),
        _ => {}
    }
    if csr.tn_auth_list_critical {
        return Err(bad_csr("Invalid TNAuthList extension - cannot be critical"));
    }
    // The subject is re-encoded into the certificate (countryName and serialNumber as
    // PrintableString), so it must be encodable.
    csr.subject
        .validate()
        .map_err(|e| bad_csr(format!("CSR {e}")))?;
    let mut ordered_dns: Vec<String> = order
        .identifiers
        .iter()
        .filter(|i| i.kind == "dns")
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    let mut csr_dns: Vec<String> = csr
        .dns_names
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    ordered_dns.sort();
    csr_dns.sort();
    if ordered_dns != csr_dns {
        return Err(bad_csr(format!(
            "CSR names {csr_dns:?} are not the order's {ordered_dns:?}"
        )));
    }
    let token_ca = order
        .authzs
        .iter()
        .filter_map(|a| state.authzs.get(a).and_then(|a| a.token_ca))
        .any(|ca| ca);
    if csr.ca && !ordered_dns.is_empty() {
        return Err(bad_csr("a CA certificate cannot carry dns names"));
    }
    if ordered_list.is_some() && csr.ca != token_ca {
        return Err(bad_csr(format!(
            "CSR basicConstraints CA={} does not match the token's atc.ca={token_ca}",
            csr.ca
        )));
    }
    let lifetime = Duration::try_from(inner.settings.cert_lifetime).unwrap_or(Duration::DAY);
    let max_after = OffsetDateTime::now_utc() + lifetime;
    let issue = IssueRequest {
        spki_der: csr.public_key_spki_der,
        subject: csr.subject,
        tn_auth_list: csr.tn_auth_list,
        dns_names: csr.dns_names,
        ca: csr.ca,
        not_before: None,
        not_after: order.not_after.map_or(max_after, |na| na.min(max_after)),
    };
    let account = order.account.clone();
    let is_star = order.star.is_some();
    if let Some(order) = state.orders.get_mut(&id) {
        order.status = Status::Processing;
    }
    let body = state.orders.get(&id).map(|o| order_json(o, &id, &inner));
    drop(state);
    inner.behaviour.count(Counter::Finalize);
    tracing::info!(target: "devca", order = %id, "order finalized; issuing");
    let inner2 = inner.clone();
    let order_id = id.clone();
    if is_star {
        // RFC 8739 §3.2: the CA issues each short-term certificate on its own schedule.
        tokio::spawn(super::star::run(inner2, order_id, account, issue));
    } else {
        tokio::spawn(async move { issue_for(&inner2, &order_id, &account, &issue) });
    }
    let mut resp = Json(body.unwrap_or_default()).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if let Ok(v) = HeaderValue::from_str(inner.url(&format!("/acme/order/{id}")).as_str()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn issue_for(inner: &Inner, order_id: &str, account: &str, req: &IssueRequest) {
    let result = issue_and_record(inner, order_id, account, req, false);
    let mut state = inner.lock_state();
    let Some(order) = state.orders.get_mut(order_id) else {
        return;
    };
    match result {
        Ok(cert_id) => {
            order.status = Status::Valid;
            order.cert = Some(cert_id);
        }
        Err(e) => fail_order(order_id, order, &e),
    }
}

/// Marks an order whose issuance failed `invalid` with a `serverInternal` problem.
pub(crate) fn fail_order(order_id: &str, order: &mut Order, e: &str) {
    tracing::info!(target: "devca", order = %order_id, error = %e, "issuance failed");
    order.status = Status::Invalid;
    order.error = Some(
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serverInternal",
            e.to_owned(),
        )
        .to_json(),
    );
}

/// Issues `req` (with the profile defect the behaviour asks for, if any) and records the
/// certificate for `order_id`; returns the certificate's id. `star` marks a short-term
/// certificate of a STAR order (RFC 8739), which revokeCert refuses.
pub(crate) fn issue_and_record(
    inner: &Inner,
    order_id: &str,
    account: &str,
    req: &IssueRequest,
    star: bool,
) -> Result<String, String> {
    let result = inner.pki.issue(req).map_err(|e| e.to_string());
    let issued = match (result, inner.behaviour.profile_defect()) {
        (Ok(issued), Some(defect)) if !req.ca => super::defect::apply(defect, issued, &inner.pki),
        (other, _) => other,
    }?;
    let mut state = inner.lock_state();
    let cert_id = random_id();
    let aki = CertInfo::parse(&issued.leaf_der)
        .ok()
        .and_then(|c| c.authority_key_id)
        .unwrap_or_default();
    let serial = hex::decode(&issued.serial_hex).unwrap_or_default();
    let identifiers = state
        .orders
        .get(order_id)
        .map(|o| o.identifiers.clone())
        .unwrap_or_default();
    tracing::info!(
        target: "devca",
        order = %order_id,
        serial = %issued.serial_hex,
        identifiers = %identifier_names(&identifiers),
        not_after = %super::state::rfc3339(req.not_after),
        star,
        "certificate issued"
    );
    state.certs.insert(
        cert_id.clone(),
        IssuedCert {
            account: account.to_owned(),
            chain_pem: issued.chain_pem,
            leaf_der: issued.leaf_der,
            revoked: None,
            revoked_at: None,
            cert_id: ari::cert_id(&aki, &serial),
            identifiers,
            issued_at: OffsetDateTime::now_utc(),
            not_after: req.not_after,
            replaced_by: None,
            serial_hex: issued.serial_hex,
            star_order: star.then(|| order_id.to_owned()),
        },
    );
    inner.behaviour.count(Counter::CertificateIssued);
    if star {
        inner.behaviour.count(Counter::StarCertificate);
    }
    Ok(cert_id)
}

/// Certificate download, POST-as-GET, `application/pem-certificate-chain` (RFC 8555 §7.4.2).
pub(crate) async fn certificate(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let state = inner.lock_state();
    let cert = state
        .certs
        .get(&id)
        .ok_or_else(|| Problem::not_found("certificate"))?;
    if cert.account != req.account_id()? {
        return Err(Problem::unauthorized("not your certificate"));
    }
    Ok((
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        cert.chain_pem.clone(),
    )
        .into_response())
}

/// revokeCert (RFC 8555 §7.6), signed by the issuing account (kid) or the certificate key
/// (jwk).
pub(crate) async fn revoke(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Either)?;
    let payload = req.json()?.unwrap_or_default();
    let der = payload
        .get("certificate")
        .and_then(Value::as_str)
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or_else(|| Problem::malformed("certificate must be base64url DER"))?;
    let reason = payload.get("reason").and_then(Value::as_u64).unwrap_or(0);
    if reason == 7 || reason > 10 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "badRevocationReason",
            format!("reason {reason} is not allowed"),
        ));
    }
    let info = CertInfo::parse(&der).map_err(|e| Problem::malformed(e.to_string()))?;
    let mut state = inner.lock_state();
    let cert = state
        .certs
        .values_mut()
        .find(|c| c.leaf_der == der)
        .ok_or_else(|| Problem::not_found("certificate issued by this CA"))?;
    let allowed = match &req.account {
        Some(acct) => *acct == cert.account,
        None => spki_der(&req.jwk) == info.public_key_spki_der,
    };
    if !allowed {
        return Err(Problem::unauthorized(
            "neither the issuing account nor the certificate key signed this request",
        ));
    }
    if let Some(order) = &cert.star_order {
        // RFC 8739 §3.1.2: STAR certificates are not revoked; the client cancels the order.
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "autoRenewalRevocationNotSupported",
            format!(
                "certificate {} is a short-term certificate of STAR order {}: cancel the \
                 order instead of revoking",
                cert.serial_hex,
                inner.url(&format!("/acme/order/{order}"))
            ),
        ));
    }
    if cert.revoked.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "alreadyRevoked",
            format!("certificate {} is already revoked", cert.serial_hex),
        ));
    }
    cert.revoked = Some(u8::try_from(reason).unwrap_or(0));
    cert.revoked_at = Some(OffsetDateTime::now_utc());
    tracing::info!(
        target: "devca",
        serial = %cert.serial_hex,
        identifiers = %identifier_names(&cert.identifiers),
        reason,
        "certificate revoked"
    );
    drop(state);
    inner.behaviour.count(Counter::Revocation);
    Ok((StatusCode::OK, Json(json!({}))).into_response())
}
