//! [`Account`]: every `kid`-signed operation — orders, authorizations, challenges,
//! finalization, download, revocation, key rollover, deactivation.

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::acme::{
    client::{Client, Payload, revocation_payload},
    error::AcmeError,
    jws::{self, Signer},
    key::AccountKey,
    response::Response,
    retry::RetryPolicy,
    transport::Endpoint,
    types::{
        AccountState, Authorization, AuthorizationStatus, CertificateChain, Challenge, NewOrder,
        Order, OrderState, OrderStatus, Problem,
    },
};

/// An ACME account: a [`Client`], the account key and the account URL (the JWS `kid`).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Account {
    client: Client,
    key: AccountKey,
    url: String,
}

impl Account {
    /// Resumes a persisted account without contacting the server.
    pub fn from_parts(client: Client, key: AccountKey, url: String) -> Self {
        Self { client, key, url }
    }

    /// The account URL, used as `kid`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account key.
    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    /// The client this account talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Places an order ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)).
    /// The order URL comes from `Location`.
    pub async fn new_order(&self, req: &NewOrder) -> Result<Order, AcmeError> {
        let payload = serde_json::to_value(req)
            .map_err(|e| AcmeError::Protocol(format!("serializing newOrder: {e}")))?;
        let url = &self.client.directory().new_order;
        let resp = self
            .post(Endpoint::NewOrder, url, Payload::Json(&payload), None)
            .await?;
        Ok(Order {
            url: resp.location()?,
            state: resp.json()?,
        })
    }

    /// Fetches an order (POST-as-GET).
    pub async fn order(&self, url: &str) -> Result<Order, AcmeError> {
        let state: OrderState = self.get(Endpoint::Order, url).await?.json()?;
        Ok(Order {
            url: url.to_owned(),
            state,
        })
    }

    /// Fetches an authorization (POST-as-GET,
    /// [§7.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.5)).
    pub async fn authorization(&self, url: &str) -> Result<Authorization, AcmeError> {
        self.get(Endpoint::Authz, url).await?.json()
    }

    /// Fetches a challenge (POST-as-GET).
    pub async fn challenge(&self, url: &str) -> Result<Challenge, AcmeError> {
        self.get(Endpoint::Challenge, url).await?.json()
    }

    /// Tells the server a challenge is ready to validate
    /// ([§7.5.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.5.1)). The payload is the
    /// caller's: `{}` for http-01/dns-01, `{"atc": token}` or `{"tkauth": token}` for
    /// tkauth-01.
    pub async fn respond_challenge(
        &self,
        challenge_url: &str,
        payload: &Value,
    ) -> Result<Challenge, AcmeError> {
        self.post(
            Endpoint::Challenge,
            challenge_url,
            Payload::Json(payload),
            None,
        )
        .await?
        .json()
    }

    /// Polls an authorization until it leaves `pending`.
    ///
    /// `valid` → `Ok`. Any other final status (`invalid`, `deactivated`, `expired`,
    /// `revoked`) → [`AcmeError::Problem`] carrying the first challenge's `error` if the
    /// server gave one, else a synthesized problem naming the status. Deadline →
    /// [`AcmeError::Timeout`].
    pub async fn poll_authorization(
        &self,
        url: &str,
        policy: &RetryPolicy,
    ) -> Result<Authorization, AcmeError> {
        let authz: Authorization = self
            .poll(Endpoint::Authz, url, policy, |a: &Authorization| {
                a.status != AuthorizationStatus::Pending
            })
            .await?;
        if authz.status == AuthorizationStatus::Valid {
            return Ok(authz);
        }
        let problem = authz
            .challenges
            .iter()
            .find_map(|c| c.error.clone())
            .unwrap_or_else(|| synthesized(format!("authorization {url} is {:?}", authz.status)));
        Err(AcmeError::Problem {
            problem: Box::new(problem),
            retry_after: None,
        })
    }

    /// Submits the CSR (DER) to the order's `finalize` URL
    /// ([§7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)) and returns the order
    /// as the server answered (usually `processing` or `valid`).
    pub async fn finalize(&self, order: &Order, csr_der: &[u8]) -> Result<Order, AcmeError> {
        let payload = json!({"csr": jws::b64(csr_der)});
        let resp = self
            .post(
                Endpoint::Finalize,
                &order.state.finalize,
                Payload::Json(&payload),
                None,
            )
            .await?;
        Ok(Order {
            url: order.url.clone(),
            state: resp.json()?,
        })
    }

    /// Polls an order while it is `pending` or `processing`.
    ///
    /// The rule: return `Ok` as soon as the status is `ready` (authorizations done, time to
    /// finalize) or `valid` (certificate issued); `invalid` → [`AcmeError::Problem`] with the
    /// order's `error` (or a synthesized one); deadline → [`AcmeError::Timeout`]. Call it
    /// after answering the challenges and again after [`Account::finalize`].
    pub async fn poll_order(
        &self,
        order_url: &str,
        policy: &RetryPolicy,
    ) -> Result<Order, AcmeError> {
        let state: OrderState = self
            .poll(Endpoint::Order, order_url, policy, |o: &OrderState| {
                !matches!(o.status, OrderStatus::Pending | OrderStatus::Processing)
            })
            .await?;
        if state.status == OrderStatus::Invalid {
            let problem = state
                .error
                .unwrap_or_else(|| synthesized(format!("order {order_url} is invalid")));
            return Err(AcmeError::Problem {
                problem: Box::new(problem),
                retry_after: None,
            });
        }
        Ok(Order {
            url: order_url.to_owned(),
            state,
        })
    }

    /// Downloads the certificate chain as `application/pem-certificate-chain`
    /// ([§7.4.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2)), with the URLs of
    /// alternate chains from `Link: rel="alternate"`.
    pub async fn certificate_chain(&self, cert_url: &str) -> Result<CertificateChain, AcmeError> {
        let resp = self
            .post(
                Endpoint::Certificate,
                cert_url,
                Payload::Empty,
                Some("application/pem-certificate-chain"),
            )
            .await?;
        let pem = String::from_utf8(resp.body.to_vec()).map_err(|_| {
            AcmeError::Protocol(format!("certificate from {cert_url} is not UTF-8 PEM"))
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Protocol(format!(
                "no PEM certificate at {cert_url}"
            )));
        }
        Ok(CertificateChain {
            alternates: resp.links("alternate"),
            pem,
        })
    }

    /// Revokes a certificate this account may revoke
    /// ([§7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)); `reason` is an
    /// RFC 5280 CRLReason code.
    pub async fn revoke(&self, cert_der: &[u8], reason: Option<u8>) -> Result<(), AcmeError> {
        let payload = revocation_payload(cert_der, reason);
        let url = &self.client.directory().revoke_cert;
        self.post(Endpoint::RevokeCert, url, Payload::Json(&payload), None)
            .await?;
        Ok(())
    }

    /// Rolls the account over to `new_key` ([§7.3.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5)).
    ///
    /// The outer JWS is signed by the current key (`kid`); its payload is an inner JWS signed
    /// by the new key with header `{alg, jwk: new, url}` (no nonce) over
    /// `{"account": url, "oldKey": old JWK}`. Returns the account bound to the new key;
    /// `self` keeps the old key and no longer works.
    pub async fn key_change(&self, new_key: AccountKey) -> Result<Self, AcmeError> {
        let url = &self.client.directory().key_change;
        let inner_payload = json!({"account": self.url, "oldKey": self.key.public_jwk()});
        let inner = jws::sign_json(&new_key, Signer::Jwk, None, url, &inner_payload)?;
        self.post(Endpoint::KeyChange, url, Payload::Json(&inner), None)
            .await?;
        Ok(Self::from_parts(
            self.client.clone(),
            new_key,
            self.url.clone(),
        ))
    }

    /// Fetches the account object (POST-as-GET to the account URL,
    /// [§7.3.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.3)).
    pub async fn state(&self) -> Result<AccountState, AcmeError> {
        let resp = self
            .post(
                Endpoint::Account,
                &self.url,
                Payload::Json(&json!({})),
                None,
            )
            .await?;
        resp.json()
    }

    /// Deactivates the account ([§7.3.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6)).
    /// Irreversible: later requests with this account fail with `unauthorized`.
    pub async fn deactivate(&self) -> Result<(), AcmeError> {
        let payload = json!({"status": "deactivated"});
        self.post(Endpoint::Account, &self.url, Payload::Json(&payload), None)
            .await?;
        Ok(())
    }

    pub(crate) async fn post(
        &self,
        endpoint: Endpoint,
        url: &str,
        payload: Payload<'_>,
        accept: Option<&str>,
    ) -> Result<Response, AcmeError> {
        self.client
            .post(
                endpoint,
                url,
                &self.key,
                Signer::Kid(&self.url),
                payload,
                accept,
            )
            .await
    }

    pub(crate) async fn get(&self, endpoint: Endpoint, url: &str) -> Result<Response, AcmeError> {
        self.post(endpoint, url, Payload::Empty, None).await
    }

    /// POST-as-GETs `url` until `settled` holds, sleeping per `policy` (server
    /// `Retry-After` first) and never past its deadline.
    async fn poll<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        url: &str,
        policy: &RetryPolicy,
        settled: impl Fn(&T) -> bool,
    ) -> Result<T, AcmeError> {
        let start = Instant::now();
        let mut delay = policy.initial_delay;
        loop {
            let resp = self.get(endpoint, url).await?;
            let object: T = resp.json()?;
            if settled(&object) {
                return Ok(object);
            }
            let waited = start.elapsed();
            let remaining = policy.timeout.saturating_sub(waited);
            if remaining.is_zero() {
                return Err(AcmeError::Timeout {
                    what: url.to_owned(),
                    waited,
                });
            }
            let sleep = policy.step(delay, resp.retry_after()).min(remaining);
            tracing::trace!(url, ?sleep, "acme poll: not settled yet");
            tokio::time::sleep(sleep).await;
            delay = policy.next_delay(delay);
        }
    }
}

fn synthesized(detail: String) -> Problem {
    Problem {
        detail: Some(detail),
        ..Problem::default()
    }
}
