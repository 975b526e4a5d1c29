//! Flattened JWS request bodies ([RFC 8555 §6.2](https://www.rfc-editor.org/rfc/rfc8555#section-6.2)).
//!
//! The protected header is built here as JSON rather than through josekit's header type,
//! because josekit base64-encodes the `nonce` it is given while ACME nonces are already
//! base64url strings that must be sent verbatim. josekit does the signing.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::acme::{
    error::AcmeError,
    key::{ExternalAccountKey, SigningKey},
};

/// How the signer is identified in the protected header.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Signer<'a> {
    /// Embed the public key (`jwk`): newAccount, revocation by certificate key.
    Jwk,
    /// Refer to the account URL (`kid`): everything else.
    Kid(&'a str),
}

/// Signs `payload` for `url`. An empty payload is a POST-as-GET
/// ([§6.3](https://www.rfc-editor.org/rfc/rfc8555#section-6.3)): the `payload` member is `""`.
/// `nonce` is `None` only for the inner JWS of a key change.
pub(crate) fn sign(
    key: &dyn SigningKey,
    signer: Signer<'_>,
    nonce: Option<&str>,
    url: &str,
    payload: &[u8],
) -> Result<Value, AcmeError> {
    let mut header = Map::new();
    header.insert("alg".into(), key.alg().into());
    match signer {
        Signer::Jwk => header.insert("jwk".into(), key.jwk()),
        Signer::Kid(kid) => header.insert("kid".into(), kid.into()),
    };
    if let Some(nonce) = nonce {
        header.insert("nonce".into(), nonce.into());
    }
    header.insert("url".into(), url.into());
    let protected = b64(&serde_json::to_vec(&header).map_err(json_err)?);
    let payload = b64(payload);
    let signature = key.sign(format!("{protected}.{payload}").as_bytes())?;
    Ok(json!({"protected": protected, "payload": payload, "signature": b64(&signature)}))
}

/// Serializes `value` as the JWS payload and signs it.
pub(crate) fn sign_json(
    key: &dyn SigningKey,
    signer: Signer<'_>,
    nonce: Option<&str>,
    url: &str,
    value: &Value,
) -> Result<Value, AcmeError> {
    let payload = serde_json::to_vec(value).map_err(json_err)?;
    sign(key, signer, nonce, url, &payload)
}

/// The `externalAccountBinding` member of a newAccount request
/// ([§7.3.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4)): a JWS over the account's
/// public JWK, MACed with HS256, with `kid` = the CA's key identifier and no nonce.
pub(crate) fn external_account_binding(
    eab: &ExternalAccountKey,
    account_jwk: &Value,
    url: &str,
) -> Result<Value, AcmeError> {
    let header = json!({"alg": "HS256", "kid": eab.key_id, "url": url});
    let protected = b64(&serde_json::to_vec(&header).map_err(json_err)?);
    let payload = b64(&serde_json::to_vec(account_jwk).map_err(json_err)?);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, eab.hmac_key.expose_secret());
    let tag = ring::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    Ok(json!({"protected": protected, "payload": payload, "signature": b64(tag.as_ref())}))
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn json_err(e: serde_json::Error) -> AcmeError {
    AcmeError::Protocol(format!("serializing JWS: {e}"))
}

#[cfg(test)]
mod tests {
    use josekit::jws::{ES256, HS256, JwsVerifier};

    use super::*;
    use crate::acme::key::AccountKey;

    fn decode(s: &Value) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s.as_str().unwrap()).unwrap()
    }

    fn verify(jws: &Value, verifier: &dyn JwsVerifier) {
        let input = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        verifier
            .verify(input.as_bytes(), &decode(&jws["signature"]))
            .unwrap();
    }

    #[test]
    fn kid_signed_post_as_get() {
        let key = AccountKey::generate().unwrap();
        let jws = sign(
            &key,
            Signer::Kid("https://ca/acct/1"),
            Some("n0nce-_"),
            "https://ca/order/1",
            b"",
        )
        .unwrap();
        assert_eq!(jws["payload"], "");
        let header: Value = serde_json::from_slice(&decode(&jws["protected"])).unwrap();
        assert_eq!(
            header,
            json!({"alg": "ES256", "kid": "https://ca/acct/1", "nonce": "n0nce-_", "url": "https://ca/order/1"})
        );
        // ES256 signatures are R||S, 64 bytes (RFC 7518 §3.4), not DER.
        assert_eq!(decode(&jws["signature"]).len(), 64);
        let verifier = ES256.verifier_from_der(key.public_key_spki_der()).unwrap();
        verify(&jws, &verifier);
        assert_eq!(jws.as_object().unwrap().len(), 3);
    }

    #[test]
    fn jwk_signed_with_payload_verifies_with_embedded_key() {
        let key = AccountKey::generate().unwrap();
        let jws = sign_json(
            &key,
            Signer::Jwk,
            Some("abc"),
            "https://ca/new-acct",
            &json!({"onlyReturnExisting": true}),
        )
        .unwrap();
        let header: Value = serde_json::from_slice(&decode(&jws["protected"])).unwrap();
        assert_eq!(header["jwk"], key.public_jwk());
        assert!(header.get("kid").is_none());
        let payload: Value = serde_json::from_slice(&decode(&jws["payload"])).unwrap();
        assert_eq!(payload, json!({"onlyReturnExisting": true}));
        let jwk =
            josekit::jwk::Jwk::from_bytes(serde_json::to_vec(&header["jwk"]).unwrap()).unwrap();
        verify(&jws, &ES256.verifier_from_jwk(&jwk).unwrap());
        // A different key must not verify.
        let other = AccountKey::generate().unwrap();
        let input = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        let wrong = ES256
            .verifier_from_der(other.public_key_spki_der())
            .unwrap();
        assert!(
            wrong
                .verify(input.as_bytes(), &decode(&jws["signature"]))
                .is_err()
        );
    }

    #[test]
    fn no_nonce_for_inner_jws() {
        let key = AccountKey::generate().unwrap();
        let jws = sign_json(&key, Signer::Jwk, None, "https://ca/key-change", &json!({})).unwrap();
        let header: Value = serde_json::from_slice(&decode(&jws["protected"])).unwrap();
        assert!(header.get("nonce").is_none());
        assert_eq!(header["url"], "https://ca/key-change");
    }

    #[test]
    fn eab_is_hs256_over_account_jwk() {
        let key = AccountKey::generate().unwrap();
        let mac = vec![7u8; 32];
        let eab = ExternalAccountKey::new("kid-1", mac.clone());
        let jws = external_account_binding(&eab, &key.public_jwk(), "https://ca/new-acct").unwrap();
        let header: Value = serde_json::from_slice(&decode(&jws["protected"])).unwrap();
        assert_eq!(
            header,
            json!({"alg": "HS256", "kid": "kid-1", "url": "https://ca/new-acct"})
        );
        let payload: Value = serde_json::from_slice(&decode(&jws["payload"])).unwrap();
        assert_eq!(payload, key.public_jwk());
        verify(&jws, &HS256.verifier_from_bytes(&mac).unwrap());
    }
}
