//! Encryption of private keys at rest: AES-256-GCM under named keys, so the active key can
//! be rotated while entries sealed under older keys stay readable.
//!
//! Sealed blob layout (all lengths in bytes):
//!
//! ```text
//! version (1) = 1 | key id length (1) | key id | nonce (12, random) | ciphertext || tag (16)
//! ```
//!
//! The associated data is chosen by the caller and binds a blob to its record (the Redis
//! store uses the cache key and serial), so a ciphertext moved to another record fails to
//! open.

use std::{collections::BTreeMap, fmt};

use aes_gcm::{
    AeadCore, Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, OsRng, Payload},
};
use secrecy::zeroize::Zeroizing;

use super::StoreError;
pub use crate::config::KeyringSettings;

/// AES-256-GCM keys by id; seals with the active one, opens with whichever the blob names.
#[derive(Clone)]
pub struct Keyring {
    active: String,
    ciphers: BTreeMap<String, Aes256Gcm>,
}

impl Keyring {
    /// Decodes and checks every key. Fails naming the key id when a key is not base64 or not
    /// 32 bytes, and when `active` names no configured key.
    pub fn new(settings: &KeyringSettings) -> Result<Self, StoreError> {
        let mut ciphers = BTreeMap::new();
        for (id, bytes) in settings.decode_keys().map_err(StoreError::Config)? {
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| {
                StoreError::Config(format!("keyring key {id:?} has the wrong length"))
            })?;
            ciphers.insert(id.to_owned(), cipher);
        }
        Ok(Self {
            active: settings.active.clone(),
            ciphers,
        })
    }

    /// Id of the key that seals new entries.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Ids of every configured key.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ciphers.keys().map(String::as_str)
    }

    /// Seals `plaintext` under the active key, bound to `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cipher = self.ciphers.get(&self.active).ok_or_else(|| {
            // `new` checked that the active id has a cipher and nothing removes one.
            StoreError::Config(format!("keyring active key {:?} missing", self.active))
        })?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| StoreError::Config("plaintext too large to encrypt".into()))?;
        let id = self.active.as_bytes();
        let mut blob = Vec::with_capacity(2 + id.len() + NONCE_LEN + sealed.len());
        blob.push(VERSION);
        // `new` checked that every id fits in one byte.
        blob.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        blob.extend_from_slice(id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens a blob made by [`Keyring::encrypt`] with the key it names, checking `aad`.
    /// [`StoreError::Decrypt`] when the key id is unknown or authentication fails;
    /// [`StoreError::Corrupt`] when the blob is malformed.
    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let (&version, rest) = blob
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("empty sealed key".into()))?;
        if version != VERSION {
            return Err(StoreError::Corrupt(format!(
                "sealed key has unknown format version {version}"
            )));
        }
        let (&id_len, rest) = rest
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("sealed key truncated".into()))?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(StoreError::Corrupt("sealed key truncated".into()));
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let id = String::from_utf8_lossy(id);
        let cipher = self.ciphers.get(id.as_ref()).ok_or_else(|| {
            StoreError::Decrypt(format!(
                "sealed with key {id:?}, which is not in the keyring (configured: {:?})",
                self.ciphers.keys().collect::<Vec<_>>()
            ))
        })?;
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| {
                StoreError::Decrypt(format!(
                    "authentication failed with key {id:?}: wrong key material, tampered \
                     data, or a ciphertext from another record"
                ))
            })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("key_ids", &self.ciphers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use base64::Engine;
    use secrecy::SecretString;

    use super::*;

    fn settings(active: &str, keys: &[(&str, [u8; 32])]) -> KeyringSettings {
        KeyringSettings {
            active: active.into(),
            keys: keys
                .iter()
                .map(|(id, k)| {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(k);
                    ((*id).to_owned(), SecretString::from(b64))
                })
                .collect(),
        }
    }

    #[test]
    fn roundtrip_and_rotation() {
        let a = Keyring::new(&settings("a", &[("a", [1; 32])])).unwrap();
        let blob = a.encrypt(b"secret key", b"ck\0serial").unwrap();
        assert_eq!(&a.decrypt(&blob, b"ck\0serial").unwrap()[..], b"secret key");
        assert!(!blob.windows(10).any(|w| w == b"secret key"));

        // Rotate: B active, A kept → old blob still opens, new blobs name B.
        let ab = Keyring::new(&settings("b", &[("a", [1; 32]), ("b", [2; 32])])).unwrap();
        assert_eq!(
            &ab.decrypt(&blob, b"ck\0serial").unwrap()[..],
            b"secret key"
        );
        let new = ab.encrypt(b"other", b"x").unwrap();
        assert_eq!(&new[1..3], &[1, b'b']);

        // A removed → clear error naming the key id.
        let b = Keyring::new(&settings("b", &[("b", [2; 32])])).unwrap();
        let err = b.decrypt(&blob, b"ck\0serial").unwrap_err();
        assert!(
            matches!(&err, StoreError::Decrypt(m) if m.contains("\"a\"")),
            "{err}"
        );
    }

    #[test]
    fn aad_mismatch_tamper_and_wrong_key_fail() {
        let ring = Keyring::new(&settings("a", &[("a", [1; 32])])).unwrap();
        let blob = ring.encrypt(b"secret", b"ck1\0s1").unwrap();
        let err = ring.decrypt(&blob, b"ck2\0s1").unwrap_err();
        assert!(matches!(err, StoreError::Decrypt(_)), "{err}");

        let mut tampered = blob.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            ring.decrypt(&tampered, b"ck1\0s1"),
            Err(StoreError::Decrypt(_))
        ));

        // Same id, different key material.
        let other = Keyring::new(&settings("a", &[("a", [9; 32])])).unwrap();
        assert!(matches!(
            other.decrypt(&blob, b"ck1\0s1"),
            Err(StoreError::Decrypt(_))
        ));

        assert!(matches!(
            ring.decrypt(&blob[..10], b"ck1\0s1"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            ring.decrypt(&[], b""),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut s = settings("a", &[("a", [1; 32])]);
        s.keys
            .insert("short".into(), SecretString::from("AAAA".to_owned()));
        let err = Keyring::new(&s).unwrap_err().to_string();
        assert!(err.contains("\"short\"") && err.contains("32"), "{err}");

        let mut s = settings("a", &[("a", [1; 32])]);
        s.keys
            .insert("junk".into(), SecretString::from("not base64!".to_owned()));
        let err = Keyring::new(&s).unwrap_err().to_string();
        assert!(err.contains("\"junk\"") && err.contains("base64"), "{err}");

        let err = Keyring::new(&settings("missing", &[("a", [1; 32])]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"missing\""), "{err}");
    }

    #[test]
    fn debug_and_serialize_redact_keys() {
        let key = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let s = settings("a", &[("a", key)]);
        let ring = Keyring::new(&s).unwrap();
        for text in [
            format!("{ring:?}"),
            format!("{s:?}"),
            serde_json::to_string(&s).unwrap(),
        ] {
            assert!(!text.contains(&b64), "{text}");
            assert!(text.contains('a'), "{text}");
        }
        assert!(serde_json::to_string(&s).unwrap().contains("<redacted>"));
    }
}
