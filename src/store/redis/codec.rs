//! How a [`CertRecord`] is laid out in Redis: JSON, DER as base64, and the private key only
//! ever as a [`Keyring`] ciphertext bound to the record's cache key and serial.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use super::super::{Keyring, StoreError};
use crate::cert::CertRecord;

/// The stored form of a record.
#[derive(Serialize, Deserialize)]
struct Stored {
    cache_key: String,
    chain_pem: String,
    /// Base64 DER, leaf first.
    chain_der: Vec<String>,
    /// Base64 of the keyring blob sealing the PKCS#8 key; never the key itself.
    sealed_key: Option<String>,
    not_before: i64,
    not_after: i64,
    serial_hex: String,
    fingerprint_hex: String,
    issuer_ca: String,
    issuer_account: String,
    #[serde(default)]
    issued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    star: Option<crate::cert::StarOrder>,
}

/// What the serial and fingerprint indexes point to.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct IndexEntry {
    /// Cache key of the record (locates its slot).
    pub(super) cache_key: String,
    /// Serial of the record.
    pub(super) serial: String,
}

/// Serializes `record`, sealing its private key. A record with a private key and no keyring
/// is refused: keys at rest are always encrypted.
pub(super) fn encode(
    record: &CertRecord,
    keyring: Option<&Keyring>,
) -> Result<Vec<u8>, StoreError> {
    let sealed_key = match (&record.private_key_pkcs8, keyring) {
        (None, _) => None,
        (Some(key), Some(ring)) => {
            Some(B64.encode(ring.encrypt(key, &aad(&record.cache_key, &record.serial_hex))?))
        }
        (Some(_), None) => {
            return Err(StoreError::Config(
                "a record with a private key cannot be stored: no store.redis.keyring is \
                 configured, and private keys are only ever stored encrypted"
                    .into(),
            ));
        }
    };
    let stored = Stored {
        cache_key: record.cache_key.clone(),
        chain_pem: record.chain_pem.clone(),
        chain_der: record.chain_der.iter().map(|d| B64.encode(d)).collect(),
        sealed_key,
        not_before: record.not_before,
        not_after: record.not_after,
        serial_hex: record.serial_hex.clone(),
        fingerprint_hex: record.fingerprint_hex.clone(),
        issuer_ca: record.issuer_ca.clone(),
        issuer_account: record.issuer_account.clone(),
        issued_at: record.issued_at,
        star: record.star.as_deref().cloned(),
    };
    serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// Parses a stored record and opens its private key.
pub(super) fn decode(bytes: &[u8], keyring: Option<&Keyring>) -> Result<CertRecord, StoreError> {
    let stored: Stored = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("certificate record: {e}")))?;
    let chain_der = stored
        .chain_der
        .iter()
        .map(|d| B64.decode(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("certificate DER: {e}")))?;
    let private_key_pkcs8 = match (&stored.sealed_key, keyring) {
        (None, _) => None,
        (Some(sealed), Some(ring)) => {
            let blob = B64
                .decode(sealed)
                .map_err(|e| StoreError::Corrupt(format!("sealed key: {e}")))?;
            let aad = aad(&stored.cache_key, &stored.serial_hex);
            Some(ring.decrypt(&blob, &aad)?.to_vec())
        }
        (Some(_), None) => {
            return Err(StoreError::Decrypt(
                "the record holds an encrypted private key but no store.redis.keyring is \
                 configured"
                    .into(),
            ));
        }
    };
    Ok(CertRecord {
        cache_key: stored.cache_key,
        chain_pem: stored.chain_pem,
        chain_der,
        private_key_pkcs8,
        not_before: stored.not_before,
        not_after: stored.not_after,
        serial_hex: stored.serial_hex,
        fingerprint_hex: stored.fingerprint_hex,
        issuer_ca: stored.issuer_ca,
        issuer_account: stored.issuer_account,
        issued_at: stored.issued_at,
        star: stored.star.map(Box::new),
    })
}

/// Parses an index entry.
pub(super) fn decode_index(bytes: &[u8]) -> Result<IndexEntry, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("index entry: {e}")))
}

/// Serializes an index entry.
pub(super) fn encode_index(entry: &IndexEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// Associated data binding a sealed key to its record: length-prefixed cache key, then serial.
fn aad(cache_key: &str, serial: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + cache_key.len() + serial.len());
    aad.extend_from_slice(&(cache_key.len() as u64).to_be_bytes());
    aad.extend_from_slice(cache_key.as_bytes());
    aad.extend_from_slice(serial.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use secrecy::SecretString;

    use super::*;
    use crate::store::KeyringSettings;

    fn ring() -> Keyring {
        Keyring::new(&KeyringSettings {
            active: "k1".into(),
            keys: BTreeMap::from([("k1".into(), SecretString::from(B64.encode([3u8; 32])))]),
        })
        .unwrap()
    }

    fn record(key: Option<Vec<u8>>) -> CertRecord {
        CertRecord {
            cache_key: "ck".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            chain_der: vec![vec![0x30, 0x82, 1, 2], vec![9]],
            private_key_pkcs8: key,
            not_before: 1,
            not_after: 2,
            serial_hex: "0a".into(),
            fingerprint_hex: "ff".into(),
            issuer_ca: "ca".into(),
            issuer_account: "acct".into(),
            issued_at: 0,
            star: None,
        }
    }

    #[test]
    fn roundtrip_seals_the_key() {
        let key = b"\x30\x81\x87pkcs8-private-key-bytes".to_vec();
        let r = record(Some(key.clone()));
        let bytes = encode(&r, Some(&ring())).unwrap();
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_slice()));
        assert!(!String::from_utf8_lossy(&bytes).contains(&B64.encode(&key)));
        assert_eq!(decode(&bytes, Some(&ring())).unwrap(), r);
    }

    #[test]
    fn a_star_order_survives_the_round_trip_and_old_records_have_none() {
        let r = CertRecord {
            star: Some(Box::new(crate::cert::StarOrder {
                order_url: "https://ca/order/7".into(),
                certificate_url: "https://ca/star/7".into(),
                end_date: 1_900_000_000,
                lifetime_secs: 3600,
            })),
            ..record(Some(vec![1, 2, 3]))
        };
        let bytes = encode(&r, Some(&ring())).unwrap();
        assert_eq!(decode(&bytes, Some(&ring())).unwrap(), r);
        // A record written before STAR existed has no `star` field.
        let plain = encode(&record(None), None).unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("star"));
        assert_eq!(decode(&plain, None).unwrap().star, None);
    }

    #[test]
    fn keys_need_a_keyring_both_ways() {
        let err = encode(&record(Some(vec![1])), None).unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{err}");
        // Without a key, no keyring is needed.
        let r = record(None);
        assert_eq!(decode(&encode(&r, None).unwrap(), None).unwrap(), r);

        let sealed = encode(&record(Some(vec![1])), Some(&ring())).unwrap();
        assert!(matches!(decode(&sealed, None), Err(StoreError::Decrypt(_))));
    }

    #[test]
    fn a_sealed_key_does_not_open_in_another_record() {
        let bytes = encode(&record(Some(vec![1, 2, 3])), Some(&ring())).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        json["serial_hex"] = "0b".into();
        let moved = serde_json::to_vec(&json).unwrap();
        assert!(matches!(
            decode(&moved, Some(&ring())),
            Err(StoreError::Decrypt(_))
        ));
        assert!(matches!(
            decode(b"{", Some(&ring())),
            Err(StoreError::Corrupt(_))
        ));
    }
}
