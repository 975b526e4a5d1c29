//! Keys: the ES256 account key, certificate keys for key-signed revocation, and the external
//! account binding MAC key.

use std::{fmt, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use josekit::{
    jwk::{
        KeyPair,
        alg::{ec::EcCurve, ec::EcKeyPair, rsa::RsaKeyPair},
    },
    jws::{ES256, ES384, JwsSigner, RS256},
};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::acme::error::AcmeError;

/// An ACME account key: ECDSA P-256, signing with ES256
/// ([RFC 7518 §3.4](https://www.rfc-editor.org/rfc/rfc7518#section-3.4)).
///
/// Cheap to clone. `Debug` shows the thumbprint, never the private key.
#[derive(Clone)]
pub struct AccountKey {
    inner: Arc<AccountKeyInner>,
}

struct AccountKeyInner {
    signer: Box<dyn JwsSigner>,
    pkcs8: SecretSlice<u8>,
    x: String,
    y: String,
    spki: Vec<u8>,
}

impl AccountKey {
    /// Generates a fresh P-256 key.
    pub fn generate() -> Result<Self, AcmeError> {
        let pair = ES256
            .generate_key_pair()
            .map_err(AcmeError::key("generating account key"))?;
        Self::from_pair(&pair)
    }

    /// Loads a P-256 key from PKCS#8 DER (`PrivateKeyInfo`).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, AcmeError> {
        let pair = ES256
            .key_pair_from_der(der)
            .map_err(AcmeError::key("parsing P-256 account key"))?;
        Self::from_pair(&pair)
    }

    /// Loads a P-256 key from PEM (`BEGIN PRIVATE KEY` or `BEGIN EC PRIVATE KEY`).
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, AcmeError> {
        let pair = ES256
            .key_pair_from_pem(pem)
            .map_err(AcmeError::key("parsing P-256 account key PEM"))?;
        Self::from_pair(&pair)
    }

    /// The private key as PKCS#8 DER, for callers that store it (encrypted).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.inner.pkcs8.expose_secret().to_vec()
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(self.inner.pkcs8.expose_secret());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The public key as a JWK: `{"crv","kty","x","y"}`.
    pub fn public_jwk(&self) -> Value {
        json!({"crv": "P-256", "kty": "EC", "x": self.inner.x, "y": self.inner.y})
    }

    /// The RFC 7638 JWK thumbprint (SHA-256) of the public key
    /// ([RFC 8555 §8.1](https://www.rfc-editor.org/rfc/rfc8555#section-8.1)).
    pub fn thumbprint(&self) -> [u8; 32] {
        ec_thumbprint("P-256", &self.inner.x, &self.inner.y)
    }

    /// [`AccountKey::thumbprint`] in base64url without padding.
    pub fn thumbprint_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.thumbprint())
    }

    /// The public key as DER `SubjectPublicKeyInfo`.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.spki.clone()
    }

    fn from_pair(pair: &EcKeyPair) -> Result<Self, AcmeError> {
        // josekit's DER export is the SEC1 form; its PEM export is PKCS#8.
        let pem = pair.to_pem_private_key();
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|e| AcmeError::Protocol(format!("re-encoding account key: {e}")))?;
        let pkcs8 = pkcs8.secret_pkcs8_der().to_vec();
        let signer = ES256
            .signer_from_der(&pkcs8)
            .map_err(AcmeError::key("loading account key"))?;
        let jwk = pair.to_jwk_public_key();
        let coord = |name| {
            jwk.parameter(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| AcmeError::Protocol(format!("public JWK lacks {name}")))
        };
        Ok(Self {
            inner: Arc::new(AccountKeyInner {
                signer: Box::new(signer),
                pkcs8: pkcs8.into(),
                x: coord("x")?,
                y: coord("y")?,
                spki: pair.to_der_public_key(),
            }),
        })
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("alg", &"ES256")
            .field("thumbprint", &self.thumbprint_b64())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl PartialEq for AccountKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.x == other.inner.x && self.inner.y == other.inner.y
    }
}

impl Eq for AccountKey {}

/// An external account binding credential
/// ([RFC 8555 §7.3.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4)): the key
/// identifier and the HMAC key the CA handed out. Signs with HS256. `Debug` redacts the key.
#[derive(Clone)]
pub struct ExternalAccountKey {
    /// The key identifier the CA issued.
    pub key_id: String,
    /// The raw MAC key (already decoded from the base64url the CA usually shows).
    pub hmac_key: SecretSlice<u8>,
}

impl ExternalAccountKey {
    /// Builds a credential from raw key bytes.
    pub fn new(key_id: impl Into<String>, hmac_key: Vec<u8>) -> Self {
        Self {
            key_id: key_id.into(),
            hmac_key: hmac_key.into(),
        }
    }

    /// Builds a credential from the base64url MAC key most CAs display (padding tolerated).
    pub fn from_base64url(
        key_id: impl Into<String>,
        hmac_key_b64: &str,
    ) -> Result<Self, AcmeError> {
        let raw = URL_SAFE_NO_PAD
            .decode(hmac_key_b64.trim().trim_end_matches('='))
            .map_err(|e| AcmeError::Protocol(format!("EAB MAC key is not base64url: {e}")))?;
        Ok(Self::new(key_id, raw))
    }
}

impl fmt::Debug for ExternalAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountKey")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"[redacted]")
            .finish()
    }
}

/// A key that can sign a JWS and describe itself as a public JWK.
pub(crate) trait SigningKey: Send + Sync {
    /// The JWS `alg`.
    fn alg(&self) -> &'static str;
    /// The public JWK with only the required members.
    fn jwk(&self) -> Value;
    /// Signs `message`, returning the JWS signature bytes (R||S for ECDSA).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AcmeError>;
}

impl SigningKey for AccountKey {
    fn alg(&self) -> &'static str {
        "ES256"
    }

    fn jwk(&self) -> Value {
        self.public_jwk()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AcmeError> {
        self.inner
            .signer
            .sign(message)
            .map_err(AcmeError::key("signing with account key"))
    }
}

/// A certificate's private key, for revocation signed by that key
/// ([RFC 8555 §7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)). P-256, P-384
/// and RSA PKCS#8 keys are understood.
pub(crate) struct CertificateKey {
    alg: &'static str,
    signer: Box<dyn JwsSigner>,
    jwk: Value,
}

impl CertificateKey {
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<Self, AcmeError> {
        if let Ok(pair) = EcKeyPair::from_der(der, None) {
            let (alg, signer): (_, Box<dyn JwsSigner>) = match pair.curve() {
                EcCurve::P256 => (
                    "ES256",
                    Box::new(
                        ES256
                            .signer_from_der(der)
                            .map_err(AcmeError::key("loading certificate key"))?,
                    ),
                ),
                EcCurve::P384 => (
                    "ES384",
                    Box::new(
                        ES384
                            .signer_from_der(der)
                            .map_err(AcmeError::key("loading certificate key"))?,
                    ),
                ),
                other => {
                    return Err(AcmeError::Protocol(format!(
                        "certificate key curve {other} is not supported for revocation"
                    )));
                }
            };
            let jwk = pair.to_jwk_public_key();
            let jwk = pick(jwk.as_ref(), &["crv", "kty", "x", "y"]);
            return Ok(Self { alg, signer, jwk });
        }
        let pair = RsaKeyPair::from_der(der).map_err(AcmeError::key("parsing certificate key"))?;
        let signer = RS256
            .signer_from_der(der)
            .map_err(AcmeError::key("loading certificate key"))?;
        let jwk = pair.to_jwk_public_key();
        let jwk = pick(jwk.as_ref(), &["e", "kty", "n"]);
        Ok(Self {
            alg: "RS256",
            signer: Box::new(signer),
            jwk,
        })
    }
}

impl SigningKey for CertificateKey {
    fn alg(&self) -> &'static str {
        self.alg
    }

    fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AcmeError> {
        self.signer
            .sign(message)
            .map_err(AcmeError::key("signing with certificate key"))
    }
}

/// RFC 7638 thumbprint of an EC key: SHA-256 over the required members in lexical order,
/// no whitespace.
fn ec_thumbprint(crv: &str, x: &str, y: &str) -> [u8; 32] {
    let canonical = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Sha256::digest(canonical.as_bytes()).into()
}

fn pick(map: &serde_json::Map<String, Value>, keys: &[&str]) -> Value {
    Value::Object(
        keys.iter()
            .filter_map(|k| map.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_vector_from_peeringhub_jwk() {
        // shaken-acme.md §8 "Fingerprint algorithms on the same key".
        let digest = ec_thumbprint(
            "P-256",
            "4nHODmypbnfKdJd-IxbMsLwOtJqC0fPysqKFu8cssEY",
            "u5McBHfPXkFvlHtFM38GEmMiv2owHxPawpWfH17Y0MY",
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(digest),
            "e76zxBsfXQVdKVswo--otuobpQfzrxWlJYtDHfsywTg"
        );
    }

    #[test]
    fn thumbprint_matches_public_jwk() {
        let key = AccountKey::generate().unwrap();
        let jwk = key.public_jwk();
        let canonical = serde_json::to_string(&jwk).unwrap();
        // serde_json may or may not keep insertion order; the members are already sorted.
        assert!(canonical.starts_with(r#"{"crv":"P-256","kty":"EC","x":""#));
        assert_eq!(
            key.thumbprint(),
            <[u8; 32]>::from(Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(key.thumbprint_b64().len(), 43);
    }

    #[test]
    fn pkcs8_der_and_pem_roundtrip() {
        let key = AccountKey::generate().unwrap();
        let der = key.to_pkcs8_der();
        // PKCS#8: SEQUENCE { INTEGER 0, SEQUENCE { id-ecPublicKey, prime256v1 }, ... }
        assert_eq!(der[0], 0x30);
        let back = AccountKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(back, key);
        assert_eq!(back.to_pkcs8_der(), der);
        let from_pem = AccountKey::from_pkcs8_pem(key.to_pkcs8_pem().as_bytes()).unwrap();
        assert_eq!(from_pem, key);
        assert_eq!(from_pem.public_key_spki_der(), key.public_key_spki_der());
    }

    #[test]
    fn rejects_non_p256_keys() {
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            AccountKey::from_pkcs8_der(&p384.serialize_der()),
            Err(AcmeError::Key { .. })
        ));
        assert!(AccountKey::from_pkcs8_der(b"not a key").is_err());
    }

    #[test]
    fn spki_matches_rcgen_view_of_same_key() {
        let key = AccountKey::generate().unwrap();
        let rc = rcgen::KeyPair::try_from(key.to_pkcs8_der().as_slice()).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&rc),
            key.public_key_spki_der()
        );
    }

    #[test]
    fn certificate_key_kinds() {
        let p256 = rcgen::KeyPair::generate().unwrap();
        let k = CertificateKey::from_pkcs8_der(&p256.serialize_der()).unwrap();
        assert_eq!(k.alg(), "ES256");
        assert_eq!(k.jwk()["crv"], "P-256");
        assert!(k.jwk().get("alg").is_none());
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let k = CertificateKey::from_pkcs8_der(&p384.serialize_der()).unwrap();
        assert_eq!(k.alg(), "ES384");
        assert_eq!(k.sign(b"m").unwrap().len(), 96);
    }

    #[test]
    fn debug_redacts_private_material() {
        let key = AccountKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("[redacted]"));
        assert!(shown.contains(&key.thumbprint_b64()));
        let der_b64 = URL_SAFE_NO_PAD.encode(key.to_pkcs8_der());
        assert!(!shown.contains(&der_b64[..20]));

        let eab = ExternalAccountKey::new("kid-1", b"super-secret-mac".to_vec());
        let shown = format!("{eab:?}");
        assert!(shown.contains("kid-1"));
        assert!(!shown.contains("super-secret"));
        assert!(!shown.contains("115, 117")); // no byte dump either
    }

    #[test]
    fn eab_key_from_base64url() {
        let k = ExternalAccountKey::from_base64url("kid", "AQID").unwrap();
        assert_eq!(k.hmac_key.expose_secret(), &[1, 2, 3]);
        assert!(ExternalAccountKey::from_base64url("kid", "!!").is_err());
    }
}
