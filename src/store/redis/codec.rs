//! How a [`CertRecord`] is laid out in Redis: a binary layout of length-prefixed fields
//! (JSON with base64 DER in releases before it, which still decodes), and the private key
//! only ever as a [`Keyring`] ciphertext bound to the record's cache key and serial.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use super::super::{Keyring, StoreError};
use crate::cert::CertRecord;

/// The JSON form of a record, as releases before the binary layout wrote it.
#[derive(Deserialize)]
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
    #[serde(default)]
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

/// First byte of a record in the binary layout; a JSON record starts with `{`.
const BINARY_V1: u8 = 1;

/// Serializes `record`, sealing its private key. A record with a private key and no keyring
/// is refused: keys at rest are always encrypted.
///
/// The layout (version 1) is binary so that an L2 hit decodes without parsing JSON or
/// base64: the version byte, then each field in a fixed order, byte strings prefixed with
/// their length as a little-endian `u32`, integers as little-endian `i64`, optional fields
/// behind a presence byte. Records written as JSON by earlier releases still decode.
pub(super) fn encode(
    record: &CertRecord,
    keyring: Option<&Keyring>,
) -> Result<Vec<u8>, StoreError> {
    let sealed_key = match (&record.private_key_pkcs8, keyring) {
        (None, _) => None,
        (Some(key), Some(ring)) => {
            Some(ring.encrypt(key, &aad(&record.cache_key, &record.serial_hex))?)
        }
        (Some(_), None) => {
            return Err(StoreError::Config(
                "a record with a private key cannot be stored: no store.redis.keyring is \
                 configured, and private keys are only ever stored encrypted"
                    .into(),
            ));
        }
    };
    let star = match &record.star {
        None => None,
        Some(star) => Some(
            serde_json::to_vec(star.as_ref())
                .map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))?,
        ),
    };
    let der_len: usize = record.chain_der.iter().map(|d| d.len() + 4).sum();
    let mut w = Writer(Vec::with_capacity(
        128 + record.cache_key.len() + record.chain_pem.len() + der_len,
    ));
    w.0.push(BINARY_V1);
    w.bytes(record.cache_key.as_bytes())?;
    w.bytes(record.chain_pem.as_bytes())?;
    w.len(record.chain_der.len())?;
    for der in &record.chain_der {
        w.bytes(der)?;
    }
    w.optional(sealed_key.as_deref())?;
    w.int(record.not_before);
    w.int(record.not_after);
    w.int(record.issued_at);
    w.bytes(record.serial_hex.as_bytes())?;
    w.bytes(record.fingerprint_hex.as_bytes())?;
    w.bytes(record.issuer_ca.as_bytes())?;
    w.bytes(record.issuer_account.as_bytes())?;
    w.optional(star.as_deref())?;
    Ok(w.0)
}

/// Parses a stored record (either layout) and opens its private key.
pub(super) fn decode(bytes: &[u8], keyring: Option<&Keyring>) -> Result<CertRecord, StoreError> {
    match bytes.first() {
        Some(&BINARY_V1) => decode_binary(&bytes[1..], keyring),
        Some(b'{') => decode_json(bytes, keyring),
        Some(v) => Err(StoreError::Corrupt(format!(
            "certificate record: unknown layout {v:#04x}"
        ))),
        None => Err(StoreError::Corrupt("certificate record: empty".into())),
    }
}

fn decode_binary(bytes: &[u8], keyring: Option<&Keyring>) -> Result<CertRecord, StoreError> {
    let mut r = Reader(bytes);
    let cache_key = r.string("cache key")?;
    let chain_pem = r.string("chain PEM")?;
    let n = r.len("chain length")?;
    // Each certificate takes at least its 4-byte length: a corrupt count cannot make this
    // allocate more than the record's own size.
    if n > r.0.len() / 4 {
        return Err(StoreError::Corrupt(format!(
            "certificate record: chain of {n} certificates in {} bytes",
            r.0.len()
        )));
    }
    let mut chain_der = Vec::with_capacity(n);
    for _ in 0..n {
        chain_der.push(r.bytes("certificate DER")?.to_vec());
    }
    let sealed = r.optional("sealed key")?;
    let not_before = r.int("not_before")?;
    let not_after = r.int("not_after")?;
    let issued_at = r.int("issued_at")?;
    let serial_hex = r.string("serial")?;
    let fingerprint_hex = r.string("fingerprint")?;
    let issuer_ca = r.string("issuer CA")?;
    let issuer_account = r.string("issuer account")?;
    let star = match r.optional("STAR order")? {
        None => None,
        Some(json) => Some(Box::new(serde_json::from_slice(json).map_err(|e| {
            StoreError::Corrupt(format!("certificate record: STAR order: {e}"))
        })?)),
    };
    if !r.0.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "certificate record: {} trailing bytes",
            r.0.len()
        )));
    }
    let private_key_pkcs8 = open(sealed, keyring, &cache_key, &serial_hex)?;
    Ok(CertRecord {
        cache_key,
        chain_pem,
        chain_der,
        private_key_pkcs8,
        not_before,
        not_after,
        serial_hex,
        fingerprint_hex,
        issuer_ca,
        issuer_account,
        issued_at,
        star,
    })
}

/// The JSON layout of releases before the binary one: DER and the sealed key as base64.
fn decode_json(bytes: &[u8], keyring: Option<&Keyring>) -> Result<CertRecord, StoreError> {
    let stored: Stored = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("certificate record: {e}")))?;
    let chain_der = stored
        .chain_der
        .iter()
        .map(|d| B64.decode(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("certificate DER: {e}")))?;
    let sealed = match &stored.sealed_key {
        None => None,
        Some(sealed) => Some(
            B64.decode(sealed)
                .map_err(|e| StoreError::Corrupt(format!("sealed key: {e}")))?,
        ),
    };
    let private_key_pkcs8 = open(
        sealed.as_deref(),
        keyring,
        &stored.cache_key,
        &stored.serial_hex,
    )?;
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

/// Opens a sealed key bound to its record's cache key and serial.
fn open(
    sealed: Option<&[u8]>,
    keyring: Option<&Keyring>,
    cache_key: &str,
    serial: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    match (sealed, keyring) {
        (None, _) => Ok(None),
        (Some(blob), Some(ring)) => Ok(Some(ring.decrypt(blob, &aad(cache_key, serial))?.to_vec())),
        (Some(_), None) => Err(StoreError::Decrypt(
            "the record holds an encrypted private key but no store.redis.keyring is \
             configured"
                .into(),
        )),
    }
}

/// Appends the binary layout's fields.
struct Writer(Vec<u8>);

impl Writer {
    fn len(&mut self, n: usize) -> Result<(), StoreError> {
        let n = u32::try_from(n)
            .map_err(|_| StoreError::Corrupt(format!("cannot encode: a field of {n} bytes")))?;
        self.0.extend_from_slice(&n.to_le_bytes());
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.len(b.len())?;
        self.0.extend_from_slice(b);
        Ok(())
    }

    fn optional(&mut self, b: Option<&[u8]>) -> Result<(), StoreError> {
        match b {
            None => self.0.push(0),
            Some(b) => {
                self.0.push(1);
                self.bytes(b)?;
            }
        }
        Ok(())
    }

    fn int(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads the binary layout's fields; every short read is [`StoreError::Corrupt`] naming
/// the field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt(format!(
                "certificate record: {field} truncated ({n} bytes wanted, {} left)",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn len(&mut self, field: &str) -> Result<usize, StoreError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn bytes(&mut self, field: &str) -> Result<&'a [u8], StoreError> {
        let n = self.len(field)?;
        self.take(n, field)
    }

    fn string(&mut self, field: &str) -> Result<String, StoreError> {
        let b = self.bytes(field)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("certificate record: {field} is not UTF-8")))
    }

    fn optional(&mut self, field: &str) -> Result<Option<&'a [u8]>, StoreError> {
        match self.take(1, field)?[0] {
            0 => Ok(None),
            1 => self.bytes(field).map(Some),
            v => Err(StoreError::Corrupt(format!(
                "certificate record: {field} presence byte {v}"
            ))),
        }
    }

    fn int(&mut self, field: &str) -> Result<i64, StoreError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
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
        assert_eq!(
            decode(&encode(&record(None), None).unwrap(), None)
                .unwrap()
                .star,
            None
        );
    }

    /// A record as releases before the binary layout wrote it.
    fn legacy_json(r: &CertRecord, ring: Option<&Keyring>) -> Vec<u8> {
        let sealed = r.private_key_pkcs8.as_ref().map(|k| {
            B64.encode(
                ring.unwrap()
                    .encrypt(k, &aad(&r.cache_key, &r.serial_hex))
                    .unwrap(),
            )
        });
        let mut json = serde_json::json!({
            "cache_key": r.cache_key,
            "chain_pem": r.chain_pem,
            "chain_der": r.chain_der.iter().map(|d| B64.encode(d)).collect::<Vec<_>>(),
            "sealed_key": sealed,
            "not_before": r.not_before,
            "not_after": r.not_after,
            "serial_hex": r.serial_hex,
            "fingerprint_hex": r.fingerprint_hex,
            "issuer_ca": r.issuer_ca,
            "issuer_account": r.issuer_account,
            "issued_at": r.issued_at,
        });
        if let Some(star) = &r.star {
            json["star"] = serde_json::to_value(star.as_ref()).unwrap();
        }
        serde_json::to_vec(&json).unwrap()
    }

    #[test]
    fn records_written_as_json_by_earlier_releases_still_decode() {
        let with_key = record(Some(vec![7, 8, 9]));
        let bytes = legacy_json(&with_key, Some(&ring()));
        assert_eq!(bytes[0], b'{');
        assert_eq!(decode(&bytes, Some(&ring())).unwrap(), with_key);
        // Written before STAR existed: no `star` field, no `issued_at`.
        let mut old: serde_json::Value =
            serde_json::from_slice(&legacy_json(&record(None), None)).unwrap();
        old.as_object_mut().unwrap().remove("issued_at");
        let old = decode(&serde_json::to_vec(&old).unwrap(), None).unwrap();
        assert_eq!((old.star, old.issued_at), (None, 0));
    }

    #[test]
    fn a_damaged_binary_record_is_corrupt_not_a_panic() {
        let bytes = encode(&record(Some(vec![1, 2, 3])), Some(&ring())).unwrap();
        assert_eq!(bytes[0], BINARY_V1);
        // Every truncation, and every single flipped byte, is an error or (for a byte
        // inside a value) a different record; never a panic or a huge allocation.
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    decode(&bytes[..n], Some(&ring())),
                    Err(StoreError::Corrupt(_))
                ),
                "truncated to {n}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode(&b, Some(&ring()));
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        let err = decode(&trailing, Some(&ring())).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let err = decode(&[9, 0], None).unwrap_err();
        assert!(err.to_string().contains("unknown layout"), "{err}");
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
        // The serial "0a" is the only 2-byte field holding it; rewrite it to "0b".
        let bytes = encode(&record(Some(vec![1, 2, 3])), Some(&ring())).unwrap();
        let field = [2, 0, 0, 0, b'0', b'a'];
        let at = bytes.windows(6).position(|w| w == field).unwrap();
        let mut moved = bytes.clone();
        moved[at + 5] = b'b';
        assert!(matches!(
            decode(&moved, Some(&ring())),
            Err(StoreError::Decrypt(_))
        ));
        // The same in the JSON layout.
        let json = legacy_json(&record(Some(vec![1, 2, 3])), Some(&ring()));
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        value["serial_hex"] = "0b".into();
        assert!(matches!(
            decode(&serde_json::to_vec(&value).unwrap(), Some(&ring())),
            Err(StoreError::Decrypt(_))
        ));
        assert!(matches!(
            decode(b"{", Some(&ring())),
            Err(StoreError::Corrupt(_))
        ));
    }
}
