//! Validated requests and the cache key that identifies "the same certificate".

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Broker, BrokerError};
use crate::cert::{CertRecord, CertSelector, Identifiers};

/// What is known of one CA at this moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// Its account is being created or found (start-up warm-up still running).
    WarmingUp,
    /// Its account works (warm-up or an issuance succeeded).
    Ready,
    /// The warm-up failed; requests still try it (it may come back).
    Failed(String),
}

/// One CA's readiness, as [`Broker::ca_readiness`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaReadiness {
    /// Configured name.
    pub name: String,
    /// What is known.
    pub state: ReadyState,
}

/// A validated GetCertificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// The identifiers.
    pub identifiers: Identifiers,
    /// The caller's CSR (DER), already checked against the identifiers.
    pub csr_der: Option<Vec<u8>>,
    /// SubjectPublicKeyInfo DER of the CSR's key; part of the cache key.
    pub csr_public_key: Option<Vec<u8>>,
    /// Pool name; `default` when the caller named none.
    pub pool: String,
    /// Least validity the answer must have left; `None` uses the configured default.
    pub min_remaining: Option<Duration>,
    /// Skip the cache.
    pub force_renew: bool,
    /// A CA certificate (basicConstraints CA:TRUE) for a delegate-issuing subordinate CA.
    pub ca: bool,
}

/// A validated Revoke.
#[derive(Debug, Clone)]
pub struct RevokeRequest {
    /// Which certificate.
    pub selector: CertSelector,
    /// RFC 5280 CRLReason code.
    pub reason: u8,
}

// === impl Broker: checks before any CA work, readiness ===

impl Broker {
    /// Refuses, before any cache lookup or CA work, a request the pool cannot satisfy: a
    /// `min_remaining_validity` (or the broker's default) at least as long as every CA of
    /// the pool issues (configured `cert_lifetime_secs`, or learned from its last
    /// certificate). [`Broker::get_certificate`] runs it first; the other half of the check
    /// ([`Broker::check_recent_refusal`]) needs the L1 entry and runs after an L1 miss.
    pub(super) fn check_pool_lifetime(
        &self,
        req: &CertRequest,
        min: Duration,
    ) -> Result<(), BrokerError> {
        if let Some(life) = self.inner().issuer.max_lifetime(&req.pool)
            && min >= life
        {
            return Err(BrokerError::FailedPrecondition {
                field: "min_remaining_validity".into(),
                reason: format!(
                    "{}s {}, but the CAs of pool {:?} issue certificates valid for at most {}s",
                    min.as_secs(),
                    whose_min(req),
                    req.pool,
                    life.as_secs()
                ),
            });
        }
        Ok(())
    }

    /// Refuses a request whose `min_remaining_validity` is at least as long as the lifetime
    /// of `cached`, the certificate this very request obtained within the last
    /// `negative_ttl`: a refusal learned after an order is not paid for again. Only a
    /// certificate that does not satisfy the request gets here (a fresh L1 hit always does).
    pub(super) fn check_recent_refusal(
        &self,
        req: &CertRequest,
        min: Duration,
        cached: &CertRecord,
    ) -> Result<(), BrokerError> {
        let inner = self.inner();
        let life = cached.not_after.saturating_sub(cached.not_before);
        let age = super::service::now().saturating_sub(cached.issued_at);
        let recent = u64::try_from(age).is_ok_and(|a| a < inner.opts.negative_ttl.as_secs());
        if recent && u64::try_from(life).is_ok_and(|l| min.as_secs() >= l) {
            return Err(BrokerError::FailedPrecondition {
                field: "min_remaining_validity".into(),
                reason: format!(
                    "{}s {}, but the certificate the pool issued for this request {age}s \
                     ago is valid for {life}s in all (remembered for {}s)",
                    min.as_secs(),
                    whose_min(req),
                    inner.opts.negative_ttl.as_secs()
                ),
            });
        }
        Ok(())
    }

    /// What is known of each upstream CA (warm-up in progress, ready, failed).
    pub fn ca_readiness(&self) -> Vec<CaReadiness> {
        self.inner().issuer.readiness()
    }
}

/// Where the minimum remaining validity of `req` comes from, for error messages.
fn whose_min(req: &CertRequest) -> &'static str {
    if req.min_remaining.is_some() {
        "asked for"
    } else {
        "the broker's default (broker.default_min_remaining_secs)"
    }
}

// === impl CertRequest ===

impl CertRequest {
    /// Identity of the certificate asked for: pool, identifiers and key source. Requests with
    /// equal keys are answered by the same certificate.
    pub fn cache_key(&self) -> String {
        self.key().to_string()
    }

    /// [`CertRequest::cache_key`] as the bytes the broker keeps in memory.
    ///
    /// The SHA-256 of four length-prefixed parts: `certbroker/v1`, the pool, the canonical
    /// identifiers ([`Identifiers::canonical`]) and the key source (`broker:p256`, or
    /// `csr:` and the hex SHA-256 of the CSR's public key; `;ca` appended for a CA
    /// certificate). Every replica of every release computes the same key: it names the
    /// certificate in the shared store. Asked for on every request, so each thread keeps
    /// the keys of the last few request shapes it saw ([`KeyMemo`]) and computes the rest
    /// without building the parts as strings of their own.
    pub(super) fn key(&self) -> CacheKey {
        KEY_MEMO.with_borrow_mut(|memo| memo.key(self))
    }

    /// [`CertRequest::key`], computed.
    fn compute_key(&self) -> CacheKey {
        let mut identifiers = String::with_capacity(64);
        self.identifiers.write_canonical(&mut identifiers);
        // Appended only for CA certificates, so end-entity keys stay what they were.
        let ca: &[u8] = if self.ca { b";ca" } else { b"" };
        let mut h = Sha256::new();
        let mut part = |pieces: &[&[u8]]| {
            let len: usize = pieces.iter().map(|p| p.len()).sum();
            h.update((len as u64).to_be_bytes());
            for p in pieces {
                h.update(p);
            }
        };
        part(&[b"certbroker/v1"]);
        part(&[self.pool.as_bytes()]);
        part(&[identifiers.as_bytes()]);
        match &self.csr_public_key {
            Some(spki) => {
                let mut digest = [0u8; 64];
                // 32 bytes into 64 hex digits: the buffer is exactly their size.
                let _ = hex::encode_to_slice(Sha256::digest(spki), &mut digest);
                part(&[b"csr:", &digest, ca]);
            }
            None => part(&[b"broker:p256", ca]),
        }
        CacheKey(h.finalize().into())
    }
}

/// How many request shapes (pool, identifiers, key source) each thread remembers the key of.
const KEY_MEMO_SIZE: usize = 16;

thread_local! {
    static KEY_MEMO: std::cell::RefCell<KeyMemo> = const { std::cell::RefCell::new(KeyMemo::new()) };
}

/// The cache keys of the last [`KEY_MEMO_SIZE`] request shapes one thread computed, so that
/// a hit on a key the fleet keeps asking for costs a hash and a comparison instead of the
/// SHA-256 and the canonical identifiers. Replaced round-robin; an entry is used only
/// when every input of the key is equal, the hash only says where to look.
struct KeyMemo {
    entries: Vec<Memoized>,
    next: usize,
}

/// The inputs of one key, and the key.
struct Memoized {
    hash: u64,
    pool: String,
    identifiers: Identifiers,
    csr_public_key: Option<Vec<u8>>,
    ca: bool,
    key: CacheKey,
}

impl KeyMemo {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: 0,
        }
    }

    fn key(&mut self, req: &CertRequest) -> CacheKey {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::default().hash_one((
            &req.pool,
            &req.identifiers,
            &req.csr_public_key,
            req.ca,
        ));
        let found = self.entries.iter().find(|m| {
            m.hash == hash
                && m.ca == req.ca
                && m.pool == req.pool
                && m.identifiers == req.identifiers
                && m.csr_public_key == req.csr_public_key
        });
        if let Some(m) = found {
            return m.key;
        }
        let key = req.compute_key();
        let m = Memoized {
            hash,
            pool: req.pool.clone(),
            identifiers: req.identifiers.clone(),
            csr_public_key: req.csr_public_key.clone(),
            ca: req.ca,
            key,
        };
        if self.entries.len() < KEY_MEMO_SIZE {
            self.entries.push(m);
        } else {
            self.entries[self.next] = m;
            self.next = (self.next + 1) % KEY_MEMO_SIZE;
        }
        key
    }
}

/// A cache key as this process holds it (L1, renewal tracker): the 32 bytes of the SHA-256
/// whose lowercase hex is the fleet's key, the one in the store, in invalidation messages and
/// in [`super::IssueRequest::cache_key`]. Inline and half the size of the hex, so a map entry
/// keyed by it owns no allocation for its key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key the fleet key `key` names: its bytes when it is 64 lowercase hex digits, as
    /// every key [`CertRequest::cache_key`] makes is; any other string (no replica makes one)
    /// still names a key of its own, the SHA-256 of the string.
    pub(super) fn of(key: &str) -> Self {
        let mut out = [0u8; 32];
        // `hex` also reads uppercase digits, which no replica writes: those stay keys of
        // their own, as any other string.
        if !key.bytes().any(|b| b.is_ascii_uppercase())
            && hex::decode_to_slice(key, &mut out).is_ok()
        {
            return Self(out);
        }
        Self(Sha256::digest(key.as_bytes()).into())
    }
}

impl std::fmt::Display for CacheKey {
    /// The fleet's form: lowercase hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
impl CertRequest {
    /// A request in pool `default` with the configured minimum validity, no renewal forced
    /// and no CSR key, for tests.
    pub(super) fn for_test(identifiers: Identifiers, csr_der: Option<Vec<u8>>, ca: bool) -> Self {
        Self {
            identifiers,
            csr_der,
            csr_public_key: None,
            pool: "default".into(),
            min_remaining: None,
            force_renew: false,
            ca,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaken::TnAuthList;

    fn req(ids: Identifiers, pool: &str, spki: Option<&[u8]>) -> CertRequest {
        CertRequest {
            identifiers: ids,
            csr_der: None,
            csr_public_key: spki.map(<[u8]>::to_vec),
            pool: pool.into(),
            min_remaining: None,
            force_renew: false,
            ca: false,
        }
    }

    #[test]
    fn dns_names_are_canonical_and_validated() {
        let ids = Identifiers::dns(&["B.example.".into(), "a.example".into(), "b.example".into()]);
        assert_eq!(
            ids.unwrap(),
            Identifiers::Dns(vec!["a.example".into(), "b.example".into()])
        );
        for (bad, idx) in [("", 0), ("-a.example", 0), ("a..b", 0), ("a_b.example", 0)] {
            let err = BrokerError::from(Identifiers::dns(&[bad.into()]).unwrap_err());
            assert!(
                matches!(&err, BrokerError::InvalidArgument { field, .. } if *field == format!("dns_names[{idx}]")),
                "{bad}: {err}"
            );
        }
        assert!(Identifiers::dns(&[]).is_err());
    }

    #[test]
    fn cache_keys_are_what_every_release_computed() {
        // Computed apart from this code (Python's hashlib over the length-prefixed parts):
        // a changed key would orphan every certificate the fleet holds in the store.
        let spc = || Identifiers::TnAuthList(TnAuthList::from_spc("1234").unwrap());
        assert_eq!(
            req(spc(), "default", None).cache_key(),
            "159ea1b1ec5eb268b1569172c39de739d54e7a29ec8fd42a5095f3db9fb6d366"
        );
        let mut ca = req(spc(), "default", None);
        ca.ca = true;
        assert_eq!(
            ca.cache_key(),
            "9df4c229181c906640e16c01a78e1a325db858a270f9a6496c757345fc1e4c25"
        );
        assert_eq!(
            req(spc(), "east", Some(b"spki")).cache_key(),
            "84903798701e8aa42831121320c9f5a2801c880b37f6cbab4b086c8ac26f5f79"
        );
        let dns = Identifiers::dns(&["b.example".into(), "a.example".into()]).unwrap();
        assert_eq!(
            req(dns, "default", None).cache_key(),
            "9332c6f23598f9450bce2aa6bbd57b4a90d3c8538222198f8650462e37ec0ff9"
        );
    }

    #[test]
    fn the_per_thread_memo_answers_what_the_computation_does() {
        // More shapes than the memo holds, twice round, and shapes that differ in one input
        // only: every key is the computed one, and no two shapes share a key.
        let mut shapes = vec![];
        for i in 0..(KEY_MEMO_SIZE * 2 + 3) {
            let spc =
                Identifiers::TnAuthList(TnAuthList::from_spc(&format!("{}", 1000 + i)).unwrap());
            let plain = req(spc.clone(), "default", None);
            let mut ca = plain.clone();
            ca.ca = true;
            shapes.extend([
                plain,
                ca,
                req(spc.clone(), "east", None),
                req(spc, "default", Some(format!("spki{i}").as_bytes())),
            ]);
        }
        let mut seen = std::collections::HashSet::new();
        for round in 0..2 {
            for r in &shapes {
                assert_eq!(r.key(), r.compute_key(), "round {round}: {r:?}");
                assert_eq!(r.key(), r.key());
                if round == 0 {
                    assert!(seen.insert(r.key()), "two shapes, one key: {r:?}");
                }
            }
        }
    }

    #[test]
    fn cache_key_bytes_are_the_fleet_key() {
        let r = req(
            Identifiers::TnAuthList(TnAuthList::from_spc("1234").unwrap()),
            "default",
            None,
        );
        let hex = r.cache_key();
        assert_eq!(hex.len(), 64);
        assert_eq!(CacheKey::of(&hex), r.key());
        assert_eq!(CacheKey::of(&hex).to_string(), hex);
        // Anything else is a key of its own, never one a request makes.
        for other in ["k", &hex.to_uppercase(), &hex[..63], &format!("{hex}0")] {
            assert_ne!(CacheKey::of(other), r.key(), "{other}");
            assert_eq!(CacheKey::of(other), CacheKey::of(other));
        }
        assert_ne!(CacheKey::of("k1"), CacheKey::of("k2"));
    }

    #[test]
    fn cache_key_separates_pool_identifiers_and_key_source() {
        let spc = |s| Identifiers::TnAuthList(TnAuthList::from_spc(s).unwrap());
        let base = req(spc("1234"), "default", None).cache_key();
        assert_eq!(base, req(spc("1234"), "default", None).cache_key());
        assert_ne!(base, req(spc("1235"), "default", None).cache_key());
        assert_ne!(base, req(spc("1234"), "other", None).cache_key());
        assert_ne!(base, req(spc("1234"), "default", Some(b"k")).cache_key());
        let ca = CertRequest {
            ca: true,
            ..req(spc("1234"), "default", None)
        };
        assert_ne!(base, ca.cache_key());
        assert_ne!(
            req(spc("1234"), "default", Some(b"k1")).cache_key(),
            req(spc("1234"), "default", Some(b"k2")).cache_key()
        );
    }
}
