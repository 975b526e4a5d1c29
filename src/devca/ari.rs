//! ACME Renewal Information ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)) on the
//! STI-CA side: the unauthenticated `renewalInfo` resource, and the checks on a new order's
//! `replaces`. Off unless [`super::DevCaSettings::renewal_info`] is set.
//!
//! The certificate identifier is computed here on its own (from the issuing key's
//! identifier and the serial as DER encodes it), not with the client's code, so tests of the
//! client against the devca compare two implementations.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    Behaviour,
    behaviour::Counter,
    jws::Problem,
    state::{AcmeState, Identifier, Inner, IssuedCert, Status, rfc3339},
};

/// How the devca answers `renewalInfo`: a window at fixed fractions of each certificate's
/// lifetime, measured from when it was issued (notBefore is backdated, so it is not used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DevRenewalInfo {
    /// Start of the window, as the fraction of the lifetime elapsed (0.5: half-way).
    pub window_start: f64,
    /// End of the window, as a fraction of the lifetime elapsed; above `window_start`.
    pub window_end: f64,
    /// `Retry-After` of every answer.
    pub retry_after: Duration,
}

impl Default for DevRenewalInfo {
    /// 50 % to 60 % of the lifetime, `Retry-After` six hours (RFC 9773's example).
    fn default() -> Self {
        Self {
            window_start: 0.5,
            window_end: 0.6,
            retry_after: Duration::from_secs(6 * 3600),
        }
    }
}

/// A new order that carried `replaces`, as the devca judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The `replaces` value as sent.
    pub cert_id: String,
    /// Serial (lowercase hex) of the certificate it names, when it names one of ours.
    pub replaced_serial_hex: Option<String>,
    /// What the devca answered.
    pub outcome: ReplacesOutcome,
    /// When the order arrived.
    pub at: OffsetDateTime,
}

/// The answer to a new order's `replaces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplacesOutcome {
    /// The order was created and marks the certificate replaced.
    Accepted,
    /// 409 `alreadyReplaced`: another live order replaces it (or the behaviour knob said so).
    AlreadyReplaced,
    /// 400 `malformed`: unknown certificate, another account's, or no identifier in common.
    Malformed,
}

/// `GET /acme/renewal-info/{certID}` (RFC 9773 §4.2): the suggested window of a certificate
/// this CA issued, with `Retry-After`. A revoked certificate gets a window in the past
/// (renew now). Unknown identifiers are 404.
pub(crate) async fn renewal_info(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let ari = inner
        .settings
        .renewal_info
        .ok_or_else(|| Problem::not_found("renewalInfo"))?;
    inner.behaviour.count(Counter::RenewalInfo);
    if inner.behaviour.renewal_info_unavailable() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "serverInternal",
            "the devca is configured to fail renewalInfo",
        ));
    }
    let state = inner.lock_state();
    let cert = state
        .certs
        .values()
        .find(|c| c.cert_id == id)
        .ok_or_else(|| Problem::not_found("certificate"))?;
    let (start, end) = if cert.revoked.is_some() {
        let now = OffsetDateTime::now_utc();
        (
            now - time::Duration::minutes(2),
            now - time::Duration::minutes(1),
        )
    } else {
        window(cert, &ari)
    };
    let body = json!({
        "suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)},
        "explanationURL": inner.url("/").as_str(),
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(ari.retry_after.as_secs().max(1)),
    );
    Ok(resp)
}

/// The suggested window of `cert`.
pub(crate) fn window(cert: &IssuedCert, ari: &DevRenewalInfo) -> (OffsetDateTime, OffsetDateTime) {
    let lifetime = cert.not_after - cert.issued_at;
    (
        cert.issued_at + lifetime * ari.window_start,
        cert.issued_at + lifetime * ari.window_end,
    )
}

/// The `replaces` of a newOrder payload, if any. Strict: a CA that does not offer
/// `renewalInfo` rejects it as `malformed`, so clients that send it anyway are caught.
pub(crate) fn requested_replaces(payload: &Value, offered: bool) -> Result<Option<&str>, Problem> {
    match payload.get("replaces") {
        None => Ok(None),
        Some(Value::String(id)) if offered => Ok(Some(id)),
        Some(Value::String(_)) => Err(Problem::malformed(
            "replaces is not supported: this CA does not offer renewalInfo",
        )),
        Some(_) => Err(Problem::malformed("replaces must be a string")),
    }
}

/// Judges a new order's `replaces` (RFC 9773 §5) and records it; on success returns the key
/// of the replaced certificate in [`AcmeState::certs`], for the caller to mark once the order
/// exists. The behaviour knob can force `alreadyReplaced`.
pub(crate) fn check_replaces(
    state: &mut AcmeState,
    cert_id: &str,
    account: &str,
    identifiers: &[Identifier],
    behaviour: &Behaviour,
) -> Result<String, Problem> {
    let forced = behaviour.already_replaced();
    let verdict = judge(state, cert_id, account, identifiers, forced);
    let (serial, outcome) = match &verdict {
        Ok((_, serial)) => (Some(serial.clone()), ReplacesOutcome::Accepted),
        Err((serial, p)) if p.kind == "alreadyReplaced" => {
            behaviour.count(Counter::AlreadyReplaced);
            (serial.clone(), ReplacesOutcome::AlreadyReplaced)
        }
        Err((serial, _)) => (serial.clone(), ReplacesOutcome::Malformed),
    };
    state.replacements.push(Replacement {
        cert_id: cert_id.to_owned(),
        replaced_serial_hex: serial,
        outcome,
        at: OffsetDateTime::now_utc(),
    });
    verdict.map(|(key, _)| key).map_err(|(_, p)| p)
}

/// [`check_replaces`] without the record: the certificate's key and serial, or the serial
/// (when known) and the problem.
fn judge(
    state: &AcmeState,
    cert_id: &str,
    account: &str,
    identifiers: &[Identifier],
    force_already_replaced: bool,
) -> Result<(String, String), (Option<String>, Problem)> {
    let Some((key, cert)) = state.certs.iter().find(|(_, c)| c.cert_id == cert_id) else {
        return Err((
            None,
            Problem::malformed(format!(
                "replaces {cert_id:?} names no certificate this CA issued"
            )),
        ));
    };
    let serial = cert.serial_hex.clone();
    let fail = |p| Err((Some(serial.clone()), p));
    if cert.account != account {
        return fail(Problem::malformed(
            "replaces names a certificate of another account",
        ));
    }
    if !cert
        .identifiers
        .iter()
        .any(|i| identifiers.iter().any(|n| same(i, n)))
    {
        return fail(Problem::malformed(
            "replaces names a certificate with no identifier in common with this order",
        ));
    }
    let live_replacement = cert
        .replaced_by
        .as_ref()
        .and_then(|o| state.orders.get(o))
        .is_some_and(|o| o.status != Status::Invalid);
    if force_already_replaced || live_replacement {
        return fail(Problem::new(
            StatusCode::CONFLICT,
            "alreadyReplaced",
            format!("certificate {serial} was already replaced"),
        ));
    }
    Ok((key.clone(), serial))
}

/// The RFC 9773 §4.1 identifier of a certificate: AKI keyIdentifier, `.`, and the serial
/// number's DER content octets (minimal, with a leading zero byte when the high bit is set).
pub(crate) fn cert_id(authority_key_id: &[u8], serial: &[u8]) -> String {
    let first = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    let mut content = serial[first..].to_vec();
    if content.first().is_none_or(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(authority_key_id),
        URL_SAFE_NO_PAD.encode(content)
    )
}

fn same(a: &Identifier, b: &Identifier) -> bool {
    match (&a.tn_auth_list, &b.tn_auth_list) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.kind == b.kind && a.value.eq_ignore_ascii_case(&b.value),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_matches_rfc_9773_example() {
        let aki = hex::decode("69885B6B87464041E1B37B847BA0AE2CDE01C8D4").unwrap();
        assert_eq!(
            cert_id(&aki, &[0x87, 0x65, 0x43, 0x21]),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
        assert_eq!(
            cert_id(&aki, &[0x00, 0x00, 0x87, 0x65, 0x43, 0x21]),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
        assert!(cert_id(&aki, &[0x12]).ends_with(".Eg"));
    }
}
