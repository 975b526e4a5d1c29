//! One upstream CA: its settings, its lazily created ACME account, and one attempt at an
//! order there (bounded, retried once after a key rollover); the order itself runs in
//! [`super::order_flow`]. Built by the app ([`crate::app::build_upstream`]).

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex, OnceCell};
use tracing::{info, instrument};

use super::{
    AttemptError,
    account::{AccountSource, KeyFileStamp},
    authorize::Solvers,
    order_flow::{CertKind, Issued, OrderFlow, OrderSettings, OrderSpec, Tracking},
};
use crate::{
    acme::{Account, AcmeError, Client, RetryPolicy},
    cert::Identifiers,
    challenge::TokenProvider,
    config::{BreakerSettings, CaSettings, PreauthSettings},
    shaken::TnAuthList,
};

/// One `[[ca]]`: settings, lazily created account, challenge solvers.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    priority: u32,
    pools: Vec<String>,
    source: AccountSource,
    client: OnceCell<Client>,
    account: Mutex<Option<LoadedAccount>>,
    weight: u32,
    breaker: BreakerSettings,
    orders: OrderSettings,
    solvers: Solvers,
    preauth: PreauthSettings,
    /// The TNAuthLists whose valid authorization an order gave up (see [`super::preauth`]).
    preauth_lost: tokio::sync::broadcast::Sender<TnAuthList>,
}

/// The account in use, and the stamp of the key file it was loaded from.
#[derive(Debug)]
struct LoadedAccount {
    account: Account,
    stamp: Option<KeyFileStamp>,
}

impl Upstream {
    /// An upstream from its settings, its account source and where its SPC tokens come
    /// from (`None`: it cannot answer tkauth-01).
    pub fn new(
        s: &CaSettings,
        source: AccountSource,
        tokens: Option<Arc<dyn TokenProvider>>,
    ) -> Self {
        Self {
            name: s.name.clone(),
            priority: s.priority,
            pools: s.pools.clone(),
            source,
            client: OnceCell::new(),
            account: Mutex::new(None),
            weight: s.weight.get(),
            breaker: s.breaker.clone(),
            orders: OrderSettings {
                ca: s.name.clone(),
                attempt_timeout: s.attempt_timeout,
                csr: s.csr.clone(),
                tkvalue_encoding: s.challenge.tkvalue_encoding,
                reuse_account_key: s.allow_account_key_reuse,
                cert_lifetime: s.cert_lifetime,
                strict_profile: s.strict_profile,
                star: s.star,
                star_unoffered_logged: Default::default(),
            },
            solvers: Solvers::new(s.name.clone(), s.challenge.clone(), tokens, s.http01_listen),
            preauth: s.preauthorization.clone(),
            preauth_lost: tokio::sync::broadcast::Sender::new(16),
        }
    }

    /// Its ACME requests are counted in `metrics` (see [`AccountSource::set_metrics`]).
    pub fn set_metrics(&self, metrics: crate::telemetry::Metrics) {
        self.source.set_metrics(metrics);
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lower is tried first.
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// Pools this CA serves.
    pub fn pools(&self) -> &[String] {
        &self.pools
    }

    /// Share among CAs of equal priority in a weighted pool.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Circuit-breaker settings.
    pub fn breaker_settings(&self) -> &BreakerSettings {
        &self.breaker
    }

    /// The bound on one attempt (and on the start-up warm-up) at this CA.
    pub fn attempt_timeout(&self) -> Duration {
        self.orders.attempt_timeout
    }

    /// How its orders are placed and checked.
    pub(super) fn order_settings(&self) -> &OrderSettings {
        &self.orders
    }

    /// The configured `cert_lifetime_secs`: what the broker asks for in `notAfter`.
    pub fn cert_lifetime(&self) -> Option<Duration> {
        self.orders.cert_lifetime
    }

    /// `[ca.preauthorization]`: the SPCs to pre-authorize (see [`super::preauth`]).
    pub(super) fn preauthorization(&self) -> &PreauthSettings {
        &self.preauth
    }

    /// Announces each TNAuthList whose valid authorization an order deactivated (it may
    /// have been a pre-authorization).
    pub(super) fn preauth_lost(&self) -> tokio::sync::broadcast::Receiver<TnAuthList> {
        self.preauth_lost.subscribe()
    }

    /// What answers its challenges: token source, tkauth-01 dialect, http-01 responder.
    pub(super) fn solvers(&self) -> &Solvers {
        &self.solvers
    }

    /// Answers one authorization (a pre-authorization's) as an order's would be.
    pub(super) async fn authorize(
        &self,
        account: &Account,
        authz_url: &str,
        policy: &RetryPolicy,
        kind: CertKind,
    ) -> Result<(), AttemptError> {
        self.solvers
            .authorize(account, authz_url, policy, kind)
            .await
    }

    /// The ACME account, created (or found) on first use, and found again when the key
    /// file changed since (a key rollover, or a new key after a deactivation).
    pub async fn account(&self) -> Result<Account, AttemptError> {
        let mut slot = self.account.lock().await;
        let stamp = self.source.stamp();
        if let Some(loaded) = slot.as_ref()
            && loaded.stamp == stamp
        {
            return Ok(loaded.account.clone());
        }
        let key = self.source.load_or_create_key()?;
        let stamp = self.source.stamp();
        if let Some(loaded) = slot.as_mut()
            && *loaded.account.key() == key
        {
            loaded.stamp = stamp;
            return Ok(loaded.account.clone());
        }
        let client = self.client.get_or_try_init(|| self.source.client()).await?;
        let account = self.source.open(client, key, true).await?;
        info!(ca = %self.name, account = %account.url(), "acme: account ready");
        if slot.is_some() {
            info!(ca = %self.name, account = %account.url(), "account key file changed; using the new key");
        }
        *slot = Some(LoadedAccount {
            account: account.clone(),
            stamp,
        });
        Ok(account)
    }

    /// Obtains one certificate for `identifiers`, with the caller's CSR or a fresh P-256
    /// key, of the given kind (a CA certificate for a delegate-issuing subordinate CA, or
    /// an end-entity one). Bounded by the CA's `attempt_timeout_secs`.
    pub async fn issue(
        &self,
        identifiers: &Identifiers,
        csr_der: Option<&[u8]>,
        kind: CertKind,
    ) -> Result<Issued, AttemptError> {
        self.issue_tracked(identifiers, csr_der, kind, Tracking::default())
            .await
    }

    /// [`Upstream::issue`], resuming a recorded order, recording the new one, and
    /// reporting when the finalize request goes out (after that, abandoning the attempt
    /// may still leave an issued certificate behind).
    #[instrument(name = "ca.attempt", skip_all, fields(ca = %self.name))]
    pub async fn issue_tracked(
        &self,
        identifiers: &Identifiers,
        csr_der: Option<&[u8]>,
        kind: CertKind,
        tracking: Tracking<'_>,
    ) -> Result<Issued, AttemptError> {
        let spec = OrderSpec {
            identifiers,
            csr_der,
            kind,
        };
        let attempt = async {
            match self.order(&spec, tracking).await {
                // The CA refused something signed with a key that was rolled over meanwhile:
                // not a verdict on the request, so once more with the new key.
                Err(AttemptError::Acme(e))
                    if !e.is_retryable() && self.key_file_changed().await =>
                {
                    info!(ca = %self.name, error = %e, "account key changed during the attempt; retrying with the new key");
                    self.order(&spec, tracking).await
                }
                other => other,
            }
        };
        let limit = self.orders.attempt_timeout;
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| AttemptError::Timeout(limit))?
    }

    /// Whether the key file differs from the one the current account was loaded from.
    async fn key_file_changed(&self) -> bool {
        let loaded = self.account.lock().await;
        loaded
            .as_ref()
            .is_some_and(|l| l.stamp != self.source.stamp())
    }

    /// One run of the order flow with the current account.
    async fn order(
        &self,
        spec: &OrderSpec<'_>,
        tracking: Tracking<'_>,
    ) -> Result<Issued, AttemptError> {
        let account = self.account().await?;
        let flow = OrderFlow {
            settings: &self.orders,
            solvers: &self.solvers,
            account: &account,
            tracking,
            preauth_lost: &self.preauth_lost,
        };
        flow.run(spec).await
    }

    /// Revokes a certificate this CA issued, signed by the account. A certificate the CA
    /// already revoked counts as revoked.
    pub async fn revoke(&self, cert_der: &[u8], reason: u8) -> Result<(), AttemptError> {
        let account = self.account().await?;
        match account.revoke(cert_der, Some(reason)).await {
            Err(AcmeError::Problem { problem, .. })
                if problem.r#type.as_deref()
                    == Some("urn:ietf:params:acme:error:alreadyRevoked") =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}
