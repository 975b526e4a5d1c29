//! [`Client`]: directory, nonce pool, signed POSTs with `badNonce` retry, account creation.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::header;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::acme::{
    account::Account,
    error::AcmeError,
    jws::{self, Signer},
    key::{AccountKey, CertificateKey, SigningKey},
    renewal_info::{CertificateId, RenewalInfo, RenewalInfoBody, renewal_info_url},
    response::Response,
    retry::RetryPolicy,
    transport::{Endpoint, RequestObserver, observed, send},
    types::{Directory, NewAccount},
};

/// How to reach one ACME server.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The directory URL ([RFC 8555 §7.1.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1)).
    pub directory_url: url::Url,
    /// Trust only these roots for the server's TLS certificate; `None` uses the platform's.
    pub trust_roots: Option<Vec<CertificateDer<'static>>>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Default polling policy, for callers that have no policy of their own
    /// ([`Client::retry_policy`]).
    pub retry: RetryPolicy,
    /// How often one request is re-signed and re-sent after a `badNonce` rejection
    /// ([§6.5](https://www.rfc-editor.org/rfc/rfc8555#section-6.5)).
    pub max_bad_nonce_retries: u32,
    /// Told about every HTTP exchange (endpoint, status, duration), e.g. for metrics.
    pub observer: Option<Arc<dyn RequestObserver>>,
}

impl ClientSettings {
    /// Settings with defaults: platform roots, 30 s requests, [`RetryPolicy::new`], 5
    /// `badNonce` retries.
    pub fn new(directory_url: url::Url) -> Self {
        Self {
            directory_url,
            trust_roots: None,
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::new(),
            max_bad_nonce_retries: 5,
            observer: None,
        }
    }
}

/// An ACME client for one server. Cheap to clone; clones share the nonce pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    directory: Directory,
    directory_url: String,
    nonces: Mutex<Vec<String>>,
    retry: RetryPolicy,
    max_bad_nonce_retries: u32,
    observer: Option<Arc<dyn RequestObserver>>,
}

/// What a signed POST carries.
pub(crate) enum Payload<'a> {
    /// POST-as-GET ([§6.3](https://www.rfc-editor.org/rfc/rfc8555#section-6.3)).
    Empty,
    /// A JSON object.
    Json(&'a Value),
}

impl Client {
    /// Builds the HTTP client and fetches the directory.
    pub async fn new(settings: ClientSettings) -> Result<Self, AcmeError> {
        let http =
            crate::tls::http_client(settings.trust_roots.as_deref(), settings.request_timeout)
                .map_err(AcmeError::Tls)?;
        let directory_url = settings.directory_url.to_string();
        let observer = settings.observer.clone();
        let resp = observed(
            observer.as_deref(),
            Endpoint::Directory,
            "GET",
            send(&directory_url, "GET", http.get(&directory_url)),
        )
        .await?;
        if !resp.status.is_success() {
            return Err(resp.into_error());
        }
        let directory: Directory = resp.json()?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                directory,
                directory_url,
                nonces: Mutex::new(Vec::new()),
                retry: settings.retry,
                max_bad_nonce_retries: settings.max_bad_nonce_retries,
                observer,
            }),
        })
    }

    /// The directory fetched at construction.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// The directory URL this client was built for.
    pub fn directory_url(&self) -> &str {
        &self.inner.directory_url
    }

    /// The HTTP client, for unauthenticated requests.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The default polling policy from [`ClientSettings::retry`].
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// Creates an account, or returns the existing one for this key
    /// ([§7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3)). Adds the external account
    /// binding when given; fails with [`AcmeError::ExternalAccountRequired`] before any
    /// request if the directory requires one and `req` has none.
    pub async fn new_account(
        &self,
        key: AccountKey,
        req: &NewAccount,
    ) -> Result<Account, AcmeError> {
        let url = &self.directory().new_account;
        let mut payload = json!({
            "contact": req.contact,
            "termsOfServiceAgreed": req.terms_of_service_agreed,
        });
        match &req.external_account_binding {
            Some(eab) => {
                payload["externalAccountBinding"] =
                    jws::external_account_binding(eab, &key.public_jwk(), url)?;
            }
            None if self.directory().meta.external_account_required => {
                return Err(AcmeError::ExternalAccountRequired);
            }
            None => {}
        }
        self.post_new_account(key, &payload).await
    }

    /// Looks up the account for `key` without creating one (`onlyReturnExisting`,
    /// [§7.3.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.1)). An unknown key yields
    /// [`AcmeError::Problem`] of type `accountDoesNotExist`.
    pub async fn find_account(&self, key: AccountKey) -> Result<Account, AcmeError> {
        let payload = json!({"onlyReturnExisting": true});
        self.post_new_account(key, &payload).await
    }

    /// Revokes a certificate with a JWS signed by the certificate's own key (`jwk` header,
    /// [§7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)). The key is PKCS#8 DER
    /// (P-256, P-384 or RSA); `reason` is an RFC 5280 CRLReason code.
    pub async fn revoke_with_certificate_key(
        &self,
        cert_key_pkcs8_der: &[u8],
        cert_der: &[u8],
        reason: Option<u8>,
    ) -> Result<(), AcmeError> {
        let key = CertificateKey::from_pkcs8_der(cert_key_pkcs8_der)?;
        let payload = revocation_payload(cert_der, reason);
        let url = &self.directory().revoke_cert;
        self.post(
            Endpoint::RevokeCert,
            url,
            &key,
            Signer::Jwk,
            Payload::Json(&payload),
            None,
        )
        .await?;
        Ok(())
    }

    /// The renewal window the server suggests for a certificate: an unauthenticated GET of
    /// `{renewalInfo}/{certID}` ([RFC 9773 §4.2](https://www.rfc-editor.org/rfc/rfc9773#section-4.2)),
    /// with the answer's `Retry-After`. `Ok(None)` when the directory offers no
    /// `renewalInfo`; an unknown certificate is the server's 404, as
    /// [`AcmeError::HttpStatus`] or [`AcmeError::Problem`].
    pub async fn renewal_info(&self, id: &CertificateId) -> Result<Option<RenewalInfo>, AcmeError> {
        let Some(base) = &self.directory().renewal_info else {
            return Ok(None);
        };
        let url = renewal_info_url(base, id);
        let resp = self
            .observe(
                Endpoint::RenewalInfo,
                "GET",
                send(&url, "GET", self.inner.http.get(&url)),
            )
            .await?;
        if !resp.status.is_success() {
            return Err(resp.into_error());
        }
        let body: RenewalInfoBody = resp.json()?;
        body.into_info(resp.retry_after()).map(Some)
    }

    /// POSTs `payload` to newAccount signed with the account key's JWK; the account is the
    /// `Location` of the answer (RFC 8555 §7.3).
    async fn post_new_account(
        &self,
        key: AccountKey,
        payload: &Value,
    ) -> Result<Account, AcmeError> {
        let url = &self.directory().new_account;
        let resp = self
            .post(
                Endpoint::NewAccount,
                url,
                &key,
                Signer::Jwk,
                Payload::Json(payload),
                None,
            )
            .await?;
        let account_url = resp.location()?;
        Ok(Account::from_parts(self.clone(), key, account_url))
    }

    /// Sends a signed POST, re-signing with a fresh nonce after each `badNonce` up to the
    /// configured bound. Any other non-2xx answer becomes an error.
    pub(crate) async fn post(
        &self,
        endpoint: Endpoint,
        url: &str,
        key: &dyn SigningKey,
        signer: Signer<'_>,
        payload: Payload<'_>,
        accept: Option<&str>,
    ) -> Result<Response, AcmeError> {
        let body = match payload {
            Payload::Empty => Vec::new(),
            Payload::Json(value) => serde_json::to_vec(value)
                .map_err(|e| AcmeError::Protocol(format!("serializing payload: {e}")))?,
        };
        let mut attempt = 0;
        loop {
            let nonce = self.nonce().await?;
            let jws = jws::sign(key, signer, Some(&nonce), url, &body)?;
            let jws = serde_json::to_vec(&jws)
                .map_err(|e| AcmeError::Protocol(format!("serializing JWS: {e}")))?;
            let mut req = self
                .inner
                .http
                .post(url)
                .header(header::CONTENT_TYPE, "application/jose+json")
                .body(jws);
            if let Some(accept) = accept {
                req = req.header(header::ACCEPT, accept);
            }
            let resp = self
                .observe(endpoint, "POST", send(url, "POST", req))
                .await?;
            self.keep_nonce(&resp);
            if resp.status.is_success() {
                return Ok(resp);
            }
            let err = resp.into_error();
            let bad_nonce = err.problem().is_some_and(|p| p.is_acme("badNonce"));
            if bad_nonce && attempt < self.inner.max_bad_nonce_retries {
                attempt += 1;
                tracing::debug!(url, attempt, "acme bad nonce, retrying");
                continue;
            }
            return Err(err);
        }
    }

    /// A nonce from the pool, or a fresh one from `newNonce`
    /// ([§7.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.2)).
    async fn nonce(&self) -> Result<String, AcmeError> {
        if let Some(nonce) = self.nonces().pop() {
            return Ok(nonce);
        }
        let url = &self.directory().new_nonce;
        let resp = self
            .observe(
                Endpoint::NewNonce,
                "HEAD",
                send(url, "HEAD", self.inner.http.head(url)),
            )
            .await?;
        if !resp.status.is_success() {
            return Err(resp.into_error());
        }
        replay_nonce(&resp).ok_or_else(|| {
            AcmeError::Protocol(format!("newNonce response from {url} lacks Replay-Nonce"))
        })
    }

    /// Pools the `Replay-Nonce` of any response, error responses included.
    fn keep_nonce(&self, resp: &Response) {
        if let Some(nonce) = replay_nonce(resp) {
            let mut pool = self.nonces();
            if pool.len() >= NONCE_POOL_SIZE {
                pool.remove(0);
            }
            pool.push(nonce);
        }
    }

    pub(crate) async fn observe(
        &self,
        endpoint: Endpoint,
        method: &'static str,
        exchange: impl Future<Output = Result<Response, AcmeError>>,
    ) -> Result<Response, AcmeError> {
        observed(self.inner.observer.as_deref(), endpoint, method, exchange).await
    }

    fn nonces(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A poisoned pool only means a panic elsewhere while pushing or popping a string;
        // the vector is still valid.
        self.inner
            .nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("directory_url", &self.inner.directory_url)
            .finish_non_exhaustive()
    }
}

/// The `revokeCert` payload ([§7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)).
pub(crate) fn revocation_payload(cert_der: &[u8], reason: Option<u8>) -> Value {
    let mut payload = json!({"certificate": jws::b64(cert_der)});
    if let Some(reason) = reason {
        payload["reason"] = reason.into();
    }
    payload
}

fn replay_nonce(resp: &Response) -> Option<String> {
    let value = resp.headers.get("replay-nonce")?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Nonces kept for reuse; older ones are dropped (servers expire them anyway).
const NONCE_POOL_SIZE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_payload_shape() {
        assert_eq!(
            revocation_payload(&[0x30, 0x82], Some(1)),
            json!({"certificate": "MII", "reason": 1})
        );
        assert_eq!(
            revocation_payload(&[0x30, 0x82], None),
            json!({"certificate": "MII"})
        );
    }

    #[test]
    fn settings_defaults() {
        let s = ClientSettings::new("https://ca.test/dir".parse().unwrap());
        assert_eq!(s.max_bad_nonce_retries, 5);
        assert!(s.trust_roots.is_none());
        assert_eq!(s.retry, RetryPolicy::new());
    }
}
