//! The fleet-wide SPC token cache: tokens kept in the shared [`SecretStore`] as secret blobs, so
//! every replica reuses one token per (TNAuthList, ca flag, account fingerprint) until
//! shortly before its `exp` instead of asking the STI-PA itself.
//!
//! Layout in the store: group [`token_group`] (one per account-key fingerprint, so a key
//! rollover drops all of the old key's tokens at once with
//! [`SecretStore::drop_secret_group`]), key [`token_key`] (SHA-256 of the TNAuthList DER and the ca
//! flag). The blob is the JWT; the Redis store seals it with the keyring like private keys.
//! Its TTL ends `refresh_margin` before the token's `exp`, so an entry a replica can read is
//! one it may use.
//!
//! A store that fails is a miss: the token comes from the STI-PA as if there were no cache.

use std::{sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{debug, warn};

use super::{AuthorityToken, TokenError, TokenProvider, TokenRequest};
use crate::store::{SecretStore, StoreError};

/// Looks tokens up in a shared [`SecretStore`] before asking `inner`, and shares what `inner`
/// returns. Put a [`super::CachingTokenProvider`] in front so one process asks the store
/// once per token.
#[derive(Debug)]
pub struct SharedTokenProvider {
    inner: Arc<dyn TokenProvider>,
    store: Arc<dyn SecretStore>,
    refresh_margin: Duration,
}

impl SharedTokenProvider {
    /// Shares `inner`'s tokens through `store`, until `refresh_margin` before `exp`.
    pub fn new(
        inner: Arc<dyn TokenProvider>,
        store: Arc<dyn SecretStore>,
        refresh_margin: Duration,
    ) -> Self {
        Self {
            inner,
            store,
            refresh_margin,
        }
    }

    /// A usable token from the store, or `None` (absent, unreadable, or no longer fitting).
    async fn shared(&self, group: &str, key: &str, req: &TokenRequest) -> Option<AuthorityToken> {
        let blob = match self.store.secret(group, key).await {
            Ok(blob) => blob?,
            Err(e) => {
                warn!(error = %e, "shared SPC token cache unavailable; asking the STI-PA");
                return None;
            }
        };
        let token = std::str::from_utf8(&blob)
            .map_err(|_| TokenError::Malformed("shared token is not UTF-8".into()))
            .and_then(AuthorityToken::parse)
            .and_then(|t| t.check(req, self.refresh_margin).map(|()| t));
        match token {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(error = %e, "ignoring an unusable SPC token in the shared cache");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl TokenProvider for SharedTokenProvider {
    async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError> {
        let (group, key) = (token_group(&req.fingerprint), token_key(req));
        if let Some(token) = self.shared(&group, &key, req).await {
            debug!(jti = %token.jti, "SPC token from the shared cache");
            return Ok(token);
        }
        let token = self.inner.token(req).await?;
        let usable_for = token.expires_at - self.refresh_margin - OffsetDateTime::now_utc();
        if let Ok(ttl) = Duration::try_from(usable_for)
            && !ttl.is_zero()
        {
            let put = self
                .store
                .put_secret(&group, &key, token.jwt().as_bytes(), ttl)
                .await;
            if let Err(e) = put {
                warn!(error = %e, "SPC token not shared with the fleet");
            }
        }
        Ok(token)
    }

    async fn discard(&self, req: &TokenRequest) {
        let (group, key) = (token_group(&req.fingerprint), token_key(req));
        if let Err(e) = self.store.delete_secret(&group, &key).await {
            warn!(error = %e, "a refused SPC token stays in the shared cache");
        }
        self.inner.discard(req).await;
    }
}

/// The store group holding every token bound to the account key with `fingerprint`
/// (`SHA256 AA:BB:…`, either case): `spc-token:<lowercase hex>`.
pub fn token_group(fingerprint: &str) -> String {
    let fingerprint = fingerprint.trim();
    let digest = match fingerprint.get(..6) {
        Some(alg) if alg.eq_ignore_ascii_case("SHA256") => &fingerprint[6..],
        _ => fingerprint,
    };
    let hex: String = digest
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("spc-token:{hex}")
}

/// The key of one token within its group: hex SHA-256 of the TNAuthList DER, then the ca
/// flag.
pub fn token_key(req: &TokenRequest) -> String {
    let digest = Sha256::digest(req.tn_auth_list.to_der());
    format!(
        "{}:{}",
        hex::encode(digest),
        if req.ca { "ca" } else { "ee" }
    )
}

/// Drops every shared token bound to the account key with `fingerprint` (after a key
/// rollover or a deactivation); returns how many there were.
pub async fn drop_shared_tokens(
    store: &dyn SecretStore,
    fingerprint: &str,
) -> Result<u64, StoreError> {
    store.drop_secret_group(&token_group(fingerprint)).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        challenge::token::tests::{FP, req, token_json},
        shaken::TkValueEncoding,
        store::MemoryStore,
    };

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl TokenProvider for Counting {
        async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let value = req.tn_auth_list.encode(TkValueEncoding::Base64);
            let mut t = AuthorityToken::parse(&token_json(&value, 3600))?;
            t.fingerprint = req.fingerprint.clone();
            Ok(t)
        }
    }

    #[tokio::test]
    async fn replicas_share_one_token_until_the_group_is_dropped() {
        let store: Arc<dyn SecretStore> = Arc::new(MemoryStore::new());
        let sti_pa = Arc::new(Counting::default());
        let margin = Duration::from_secs(60);
        let a = SharedTokenProvider::new(sti_pa.clone(), store.clone(), margin);
        let b = SharedTokenProvider::new(sti_pa.clone(), store.clone(), margin);
        let first = a.token(&req("1234")).await.unwrap();
        let second = b.token(&req("1234")).await.unwrap();
        assert_eq!(first.jwt(), second.jwt());
        assert_eq!(sti_pa.calls.load(Ordering::SeqCst), 1);

        b.token(&req("5678")).await.unwrap();
        assert_eq!(sti_pa.calls.load(Ordering::SeqCst), 2);
        a.discard(&req("5678")).await;
        b.token(&req("5678")).await.unwrap();
        assert_eq!(sti_pa.calls.load(Ordering::SeqCst), 3);

        assert_eq!(drop_shared_tokens(store.as_ref(), FP).await.unwrap(), 2);
        b.token(&req("1234")).await.unwrap();
        assert_eq!(sti_pa.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn keys_normalise_the_fingerprint_and_separate_the_ca_flag() {
        assert_eq!(token_group(FP), token_group(&FP.to_ascii_lowercase()));
        assert!(token_group(FP).starts_with("spc-token:4955787f"));
        let ee = req("1234");
        let ca = TokenRequest {
            ca: true,
            ..req("1234")
        };
        assert_ne!(token_key(&ee), token_key(&ca));
        assert_ne!(token_key(&ee), token_key(&req("5678")));
    }
}
