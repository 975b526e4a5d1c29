//! The account-key fingerprint an SPC token is bound to (RFC 9448 §5; shaken-acme.md §0.2):
//! `SHA256 ` followed by 32 uppercase, colon-separated hex bytes.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use sha2::{Digest, Sha256};

use super::{FingerprintAlgorithm, TokenError};

/// DER prefix of a P-256 SubjectPublicKeyInfo, up to the uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];

/// The fingerprint of an account's public key (a P-256 JWK).
pub fn fingerprint(
    alg: FingerprintAlgorithm,
    account_jwk: &serde_json::Value,
) -> Result<String, TokenError> {
    let member = |name: &str| {
        account_jwk[name]
            .as_str()
            .ok_or_else(|| TokenError::Malformed(format!("account JWK has no {name:?}")))
    };
    if member("kty")? != "EC" || member("crv")? != "P-256" {
        return Err(TokenError::Malformed("account key is not EC P-256".into()));
    }
    let (x, y) = (member("x")?, member("y")?);
    let digest = match alg {
        FingerprintAlgorithm::JwkThumbprint => {
            // RFC 7638 §3: required members only, lexicographic order, no whitespace.
            let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            Sha256::digest(canonical.as_bytes())
        }
        FingerprintAlgorithm::SpkiSha256 => {
            let decode = |v: &str| {
                URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| TokenError::Malformed("JWK coordinate is not 32 bytes".into()))
            };
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend(decode(x)?);
            spki.extend(decode(y)?);
            Sha256::digest(&spki)
        }
    };
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    Ok(format!("SHA256 {}", hex.join(":")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// shaken-acme.md §8 "Fingerprint algorithms on the same key".
    fn jwk() -> serde_json::Value {
        serde_json::json!({
            "crv": "P-256", "kty": "EC",
            "x": "4nHODmypbnfKdJd-IxbMsLwOtJqC0fPysqKFu8cssEY",
            "y": "u5McBHfPXkFvlHtFM38GEmMiv2owHxPawpWfH17Y0MY"
        })
    }

    #[test]
    fn jwk_thumbprint_vector() {
        assert_eq!(
            fingerprint(FingerprintAlgorithm::JwkThumbprint, &jwk()).unwrap(),
            "SHA256 7B:BE:B3:C4:1B:1F:5D:05:5D:29:5B:30:A3:EF:A8:B6:EA:1B:A5:07:F3:AF:15:A5:25:8B:43:1D:FB:32:C1:38"
        );
    }

    #[test]
    fn spki_vector() {
        assert_eq!(
            fingerprint(FingerprintAlgorithm::SpkiSha256, &jwk()).unwrap(),
            "SHA256 D8:FC:D2:1E:52:7E:85:A5:DB:34:1F:0A:0A:67:17:55:70:9A:A1:50:34:16:BF:E6:E5:AB:AD:84:73:73:E8:A8"
        );
    }

    #[test]
    fn rejects_other_keys() {
        let mut k = jwk();
        k["crv"] = "P-384".into();
        assert!(fingerprint(FingerprintAlgorithm::JwkThumbprint, &k).is_err());
        assert!(fingerprint(FingerprintAlgorithm::SpkiSha256, &serde_json::json!({})).is_err());
    }
}
