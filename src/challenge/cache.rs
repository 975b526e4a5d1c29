//! SPC tokens cached per (TNAuthList, ca flag, account fingerprint) until shortly before
//! their `exp`. A new account key means a new fingerprint and so a new token. Each token
//! the cache fetches anew is announced to [`TokenProvider::refreshes`] subscribers (the
//! pre-authorization follows token refreshes).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use time::OffsetDateTime;

use tokio::sync::broadcast;

use super::{AuthorityToken, TokenError, TokenProvider, TokenRefreshed, TokenRequest};

/// Refresh announcements a slow subscriber may fall behind by before it is told it lagged.
const REFRESH_BACKLOG: usize = 64;

type Key = (Vec<u8>, bool, String);
type Slot = Arc<tokio::sync::Mutex<Option<AuthorityToken>>>;

/// Wraps a provider with a cache. Concurrent requests for the same key wait for one fetch.
#[derive(Debug)]
pub struct CachingTokenProvider {
    inner: Arc<dyn TokenProvider>,
    refresh_margin: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
    refreshed: broadcast::Sender<TokenRefreshed>,
}

impl CachingTokenProvider {
    /// Caches `inner`'s tokens, refetching `refresh_margin` before `exp`.
    pub fn new(inner: Arc<dyn TokenProvider>, refresh_margin: Duration) -> Self {
        Self {
            inner,
            refresh_margin,
            slots: Mutex::default(),
            refreshed: broadcast::Sender::new(REFRESH_BACKLOG),
        }
    }

    fn slot(&self, req: &TokenRequest) -> Slot {
        let key = (
            req.tn_auth_list.to_der(),
            req.ca,
            req.fingerprint.to_ascii_uppercase(),
        );
        // Each critical section is one map operation, so a poisoned lock is still consistent.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Keep slots in use and unexpired tokens; a rolled-over key's tokens age out.
        let now = OffsetDateTime::now_utc();
        slots.retain(|_, s| {
            Arc::strong_count(s) > 1
                || s.try_lock()
                    .is_ok_and(|t| t.as_ref().is_some_and(|t| t.expires_at > now))
        });
        slots.entry(key).or_default().clone()
    }
}

#[async_trait::async_trait]
impl TokenProvider for CachingTokenProvider {
    async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError> {
        let slot = self.slot(req);
        let mut cached = slot.lock().await;
        let fresh_until = OffsetDateTime::now_utc() + self.refresh_margin;
        if let Some(t) = cached.as_ref().filter(|t| t.expires_at > fresh_until) {
            return Ok(t.clone());
        }
        let token = self.inner.token(req).await?;
        token.check(req, self.refresh_margin)?;
        *cached = Some(token.clone());
        // Nobody listening is fine: the announcement is for whoever follows refreshes.
        let _ = self.refreshed.send(TokenRefreshed {
            request: req.clone(),
            jti: token.jti.clone(),
            expires_at: token.expires_at,
        });
        Ok(token)
    }

    fn refreshes(&self) -> Option<broadcast::Receiver<TokenRefreshed>> {
        Some(self.refreshed.subscribe())
    }

    async fn discard(&self, req: &TokenRequest) {
        let slot = self.slot(req);
        slot.lock().await.take();
        self.inner.discard(req).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        challenge::token::tests::{FP, token_json},
        shaken::{TkValueEncoding, TnAuthList},
    };

    #[derive(Debug)]
    struct Counting {
        calls: AtomicUsize,
        ttl_secs: i64,
    }

    #[async_trait::async_trait]
    impl TokenProvider for Counting {
        async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let value = req.tn_auth_list.encode(TkValueEncoding::Base64);
            let mut t = AuthorityToken::parse(&token_json(&value, self.ttl_secs))?;
            t.fingerprint = req.fingerprint.clone();
            Ok(t)
        }
    }

    fn req(spc: &str, fp: &str) -> TokenRequest {
        TokenRequest {
            tn_auth_list: TnAuthList::from_spc(spc).unwrap(),
            ca: false,
            fingerprint: fp.into(),
        }
    }

    fn cache(ttl_secs: i64) -> (Arc<Counting>, Arc<CachingTokenProvider>) {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            ttl_secs,
        });
        let cache = Arc::new(CachingTokenProvider::new(
            inner.clone(),
            Duration::from_secs(60),
        ));
        (inner, cache)
    }

    #[tokio::test]
    async fn announces_each_fetch_but_not_a_cached_answer() {
        let (_, cache) = cache(3600);
        let mut refreshes = cache.refreshes().expect("the cache announces refreshes");
        let first = cache.token(&req("1234", FP)).await.unwrap();
        cache.token(&req("1234", FP)).await.unwrap();
        let seen = refreshes.try_recv().expect("one announcement");
        assert_eq!(seen.request, req("1234", FP));
        assert_eq!((seen.jti, seen.expires_at), (first.jti, first.expires_at));
        assert!(
            refreshes.try_recv().is_err(),
            "the cached answer is not a refresh"
        );
        cache.discard(&req("1234", FP)).await;
        cache.token(&req("1234", FP)).await.unwrap();
        assert_eq!(refreshes.try_recv().unwrap().request, req("1234", FP));
    }

    #[tokio::test]
    async fn reuses_until_near_expiry_and_keys_by_fingerprint() {
        let (inner, cache) = cache(3600);
        cache.token(&req("1234", FP)).await.unwrap();
        cache.token(&req("1234", FP)).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        cache.token(&req("1234", "SHA256 AA")).await.unwrap();
        cache.token(&req("5678", FP)).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn tokens_inside_the_margin_are_refetched_and_refused() {
        let (inner, cache) = cache(30);
        // A 30 s token is inside the 60 s margin: fetched, and refused as too short.
        assert!(matches!(
            cache.token(&req("1234", FP)).await,
            Err(TokenError::Expired(_))
        ));
        assert!(cache.token(&req("1234", FP)).await.is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_discarded_token_is_fetched_again() {
        let (inner, cache) = cache(3600);
        cache.token(&req("1234", FP)).await.unwrap();
        cache.discard(&req("1234", FP)).await;
        cache.token(&req("1234", FP)).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch() {
        let (inner, cache) = cache(3600);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.token(&req("1234", FP)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }
}
