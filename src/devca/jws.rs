//! Verification of ACME requests (RFC 8555 §6.2–§6.5) and problem documents (RFC 7807,
//! RFC 8555 §6.7).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use josekit::{
    jwk::Jwk,
    jws::{ES256, JwsVerifier},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{DevFingerprint, behaviour::Counter, state::Inner};
use crate::shaken::P256_SPKI_PREFIX;

/// An ACME problem document with its HTTP status.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    /// The part after `urn:ietf:params:acme:error:`.
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
    pub(crate) retry_after: Option<u64>,
    pub(crate) location: Option<String>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            retry_after: None,
            location: None,
        }
    }

    pub(crate) fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", detail)
    }

    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "unauthorized", detail)
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "malformed",
            format!("no such {what}"),
        )
    }

    /// The problem as the `error` field of an order, authorization or challenge. A
    /// `badSignatureAlgorithm` lists the accepted `algorithms` (RFC 8555 §6.2 MUST).
    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({
            "type": format!("urn:ietf:params:acme:error:{}", self.kind),
            "detail": self.detail,
            "status": self.status.as_u16(),
        });
        if self.kind == "badSignatureAlgorithm" {
            v["algorithms"] = json!(ACCEPTED_ALGORITHMS);
        }
        v
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.to_json().to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(loc) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(header::LOCATION, loc);
        }
        resp
    }
}

/// Which key a request must be signed with (RFC 8555 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRef {
    /// `jwk` only: newAccount.
    Jwk,
    /// `kid` only: everything tied to an account.
    Kid,
    /// Either: revokeCert.
    Either,
}

/// A request whose signature, URL and nonce checked out.
#[derive(Debug)]
pub(crate) struct Verified {
    /// Decoded payload; empty for POST-as-GET.
    pub(crate) payload: Vec<u8>,
    /// The key that signed it, as a public JWK.
    pub(crate) jwk: Value,
    /// The account id when signed with `kid`.
    pub(crate) account: Option<String>,
}

impl Verified {
    /// The payload as JSON; POST-as-GET (empty) is `None`.
    pub(crate) fn json(&self) -> Result<Option<Value>, Problem> {
        if self.payload.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&self.payload)
            .map(Some)
            .map_err(|e| Problem::malformed(format!("payload is not JSON: {e}")))
    }

    /// The account id; requests verified with [`KeyRef::Kid`] always have one.
    pub(crate) fn account_id(&self) -> Result<&str, Problem> {
        self.account
            .as_deref()
            .ok_or_else(|| Problem::malformed("request must be signed with kid"))
    }
}

/// A POST signed by an existing account (`kid`) whose signature, URL and nonce checked out
/// ([`verify_request`] with [`KeyRef::Kid`]): what every account-bound endpoint extracts
/// first. It reads the body, so it comes last among a handler's extractors.
#[derive(Debug)]
pub(crate) struct AccountRequest(pub(crate) Verified);

impl FromRequest<Arc<Inner>> for AccountRequest {
    type Rejection = Problem;

    async fn from_request(req: Request, inner: &Arc<Inner>) -> Result<Self, Problem> {
        let path = req.uri().path().to_owned();
        let body = Bytes::from_request(req, inner)
            .await
            .map_err(|e| Problem::malformed(format!("request body: {e}")))?;
        verify_request(inner, &path, &body, KeyRef::Kid).map(Self)
    }
}

#[derive(Deserialize)]
pub(crate) struct Flattened {
    pub(crate) protected: String,
    pub(crate) payload: String,
    pub(crate) signature: String,
}

/// Verifies a flattened JWS request posted to `path`.
pub(crate) fn verify_request(
    inner: &Inner,
    path: &str,
    body: &[u8],
    key_ref: KeyRef,
) -> Result<Verified, Problem> {
    let (jws, header) = parse_flattened(body)?;
    let url = header
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let expected_url = inner.url(path);
    if url != expected_url.as_str() {
        return Err(Problem::unauthorized(format!(
            "JWS url header {url:?} is not the request URL {expected_url}"
        )));
    }
    let (jwk, account) = match (header.get("jwk"), header.get("kid"), key_ref) {
        (Some(_), Some(_), _) => return Err(Problem::malformed("JWS has both jwk and kid")),
        (Some(jwk), None, KeyRef::Jwk | KeyRef::Either) => (jwk.clone(), None),
        (None, Some(kid), KeyRef::Kid | KeyRef::Either) => {
            let kid = kid.as_str().unwrap_or_default();
            let prefix = inner.url("/acme/acct/");
            let id = kid.strip_prefix(prefix.as_str()).unwrap_or_default();
            let state = inner.lock_state();
            let acct = state.accounts.get(id).ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "accountDoesNotExist",
                    format!("no account {kid}"),
                )
            })?;
            if acct.deactivated {
                return Err(Problem::unauthorized("account is deactivated"));
            }
            (acct.jwk.clone(), Some(id.to_owned()))
        }
        (_, _, KeyRef::Jwk) => return Err(Problem::malformed("this request must carry jwk")),
        (_, _, _) => return Err(Problem::malformed("this request must carry kid")),
    };
    verify_signature(&jws, &header, &jwk)?;
    let nonce = header
        .get("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !inner.take_nonce(nonce) || inner.behaviour.reject_nonce() {
        inner.behaviour.count(Counter::BadNonce);
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "badNonce",
            format!("nonce {nonce:?} is unknown or used"),
        ));
    }
    Ok(Verified {
        payload: decode_payload(&jws)?,
        jwk,
        account,
    })
}

/// Verifies a flattened JWS signed with the `jwk` in its own protected header, as
/// [`verify_request`] does for [`KeyRef::Jwk`], without the URL and nonce checks that need
/// the server's state.
pub(crate) fn verify_jwk_signed(body: &[u8]) -> Result<Verified, Problem> {
    let (jws, header) = parse_flattened(body)?;
    let jwk = match (header.get("jwk"), header.get("kid")) {
        (Some(_), Some(_)) => return Err(Problem::malformed("JWS has both jwk and kid")),
        (Some(jwk), None) => jwk.clone(),
        (None, _) => return Err(Problem::malformed("this request must carry jwk")),
    };
    verify_signature(&jws, &header, &jwk)?;
    Ok(Verified {
        payload: decode_payload(&jws)?,
        jwk,
        account: None,
    })
}

/// The `alg` values the devca accepts on requests (RFC 8555 §6.2: no MAC, no `none`).
pub(crate) const ACCEPTED_ALGORITHMS: &[&str] = &["ES256"];

/// The body as a flattened JWS and its decoded protected header. RFC 8555 §6.2: one
/// signature (no `signatures` array) and no unprotected `header`.
fn parse_flattened(body: &[u8]) -> Result<(Flattened, serde_json::Map<String, Value>), Problem> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::malformed(format!("body is not a flattened JWS: {e}")))?;
    for field in ["header", "signatures"] {
        if value.get(field).is_some() {
            return Err(Problem::malformed(format!(
                "the JWS must be flattened with a protected header only: {field:?} is not allowed"
            )));
        }
    }
    let jws: Flattened = serde_json::from_value(value)
        .map_err(|e| Problem::malformed(format!("body is not a flattened JWS: {e}")))?;
    let header = decode_header(&jws.protected)?;
    Ok((jws, header))
}

fn decode_payload(jws: &Flattened) -> Result<Vec<u8>, Problem> {
    URL_SAFE_NO_PAD
        .decode(&jws.payload)
        .map_err(|e| Problem::malformed(format!("payload is not base64url: {e}")))
}

pub(crate) fn decode_header(protected: &str) -> Result<serde_json::Map<String, Value>, Problem> {
    let bytes = URL_SAFE_NO_PAD
        .decode(protected)
        .map_err(|e| Problem::malformed(format!("protected header is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::malformed(format!("protected header is not a JSON object: {e}")))
}

/// Checks `alg` is ES256 and the signature verifies with `jwk`.
pub(crate) fn verify_signature(
    jws: &Flattened,
    header: &serde_json::Map<String, Value>,
    jwk: &Value,
) -> Result<(), Problem> {
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !ACCEPTED_ALGORITHMS.contains(&alg) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "badSignatureAlgorithm",
            format!("alg {alg:?} is not accepted; use one of {ACCEPTED_ALGORITHMS:?}"),
        ));
    }
    check_p256_jwk(jwk)?;
    let map = jwk.as_object().cloned().unwrap_or_default();
    let verifier = Jwk::from_map(map)
        .and_then(|k| ES256.verifier_from_jwk(&k))
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "badPublicKey", e.to_string()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(&jws.signature)
        .map_err(|e| Problem::malformed(format!("signature is not base64url: {e}")))?;
    let message = format!("{}.{}", jws.protected, jws.payload);
    verifier
        .verify(message.as_bytes(), &signature)
        .map_err(|_| Problem::malformed("JWS signature does not verify"))
}

/// Accepts only public EC P-256 JWKs.
pub(crate) fn check_p256_jwk(jwk: &Value) -> Result<(), Problem> {
    let field = |k: &str| jwk.get(k).and_then(Value::as_str);
    let ok = field("kty") == Some("EC")
        && field("crv") == Some("P-256")
        && point_coord(jwk, "x").is_some()
        && point_coord(jwk, "y").is_some()
        && jwk.get("d").is_none();
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "badPublicKey",
            "account keys must be public EC P-256 JWKs",
        ))
    }
}

fn point_coord(jwk: &Value, name: &str) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()?;
    (bytes.len() == 32).then_some(bytes)
}

/// RFC 7638 thumbprint of a P-256 JWK, base64url.
pub(crate) fn thumbprint(jwk: &Value) -> String {
    URL_SAFE_NO_PAD.encode(thumbprint_bytes(jwk))
}

fn thumbprint_bytes(jwk: &Value) -> Vec<u8> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str).unwrap_or_default();
    // Required members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(
        r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
        s("crv"),
        s("kty"),
        s("x"),
        s("y")
    );
    Sha256::digest(canonical.as_bytes()).to_vec()
}

/// The DER SubjectPublicKeyInfo of a P-256 JWK.
pub(crate) fn spki_der(jwk: &Value) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.push(0x04);
    der.extend(point_coord(jwk, "x").unwrap_or_default());
    der.extend(point_coord(jwk, "y").unwrap_or_default());
    der
}

/// The `atc.fingerprint` the CA expects for an account key: `SHA256 ` and uppercase
/// colon-separated hex (RFC 9448 §5).
pub(crate) fn fingerprint(jwk: &Value, algorithm: DevFingerprint) -> String {
    let digest = match algorithm {
        DevFingerprint::JwkThumbprint => thumbprint_bytes(jwk),
        DevFingerprint::SpkiSha256 => Sha256::digest(spki_der(jwk)).to_vec(),
    };
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256 {}", hex.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// shaken-acme.md §8 "Fingerprint algorithms on the same key".
    #[test]
    fn fingerprint_vectors() {
        let jwk = json!({"crv":"P-256","kty":"EC",
            "x":"4nHODmypbnfKdJd-IxbMsLwOtJqC0fPysqKFu8cssEY",
            "y":"u5McBHfPXkFvlHtFM38GEmMiv2owHxPawpWfH17Y0MY"});
        assert_eq!(
            thumbprint(&jwk),
            "e76zxBsfXQVdKVswo--otuobpQfzrxWlJYtDHfsywTg"
        );
        assert_eq!(
            fingerprint(&jwk, DevFingerprint::JwkThumbprint),
            "SHA256 7B:BE:B3:C4:1B:1F:5D:05:5D:29:5B:30:A3:EF:A8:B6:EA:1B:A5:07:F3:AF:15:A5:25:8B:43:1D:FB:32:C1:38"
        );
        assert_eq!(
            fingerprint(&jwk, DevFingerprint::SpkiSha256),
            "SHA256 D8:FC:D2:1E:52:7E:85:A5:DB:34:1F:0A:0A:67:17:55:70:9A:A1:50:34:16:BF:E6:E5:AB:AD:84:73:73:E8:A8"
        );
    }

    #[test]
    fn bad_signature_algorithm_lists_the_accepted_algorithms() {
        for alg in ["HS256", "none", "RS256"] {
            let jws = Flattened {
                protected: URL_SAFE_NO_PAD.encode(json!({ "alg": alg }).to_string()),
                payload: String::new(),
                signature: String::new(),
            };
            let header = decode_header(&jws.protected).unwrap();
            let p = verify_signature(&jws, &header, &json!({})).unwrap_err();
            assert_eq!(p.kind, "badSignatureAlgorithm", "{alg}");
            assert_eq!(p.to_json()["algorithms"], json!(["ES256"]), "{alg}");
        }
    }

    #[test]
    fn only_flattened_protected_jws_is_accepted() {
        for field in ["header", "signatures"] {
            let mut body = json!({"protected": "e30", "payload": "", "signature": ""});
            body[field] = json!({});
            let p = verify_jwk_signed(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(p.kind, "malformed");
            assert!(p.detail.contains(field), "{}", p.detail);
        }
    }

    #[test]
    fn non_p256_keys_are_refused() {
        assert!(check_p256_jwk(&json!({"kty":"RSA","n":"AQAB","e":"AQAB"})).is_err());
        assert!(check_p256_jwk(&json!({"kty":"EC","crv":"P-384","x":"AA","y":"AA"})).is_err());
    }
}
