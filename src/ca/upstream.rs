//! One upstream CA: its ACME account and the full order flow for one certificate.

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, OnceCell};
use tracing::{Instrument, info, instrument, warn};

use super::{
    AttemptError, Progress,
    account::{AccountSource, KeyFileStamp},
    ari,
    progress::OrderProgress,
};
use crate::{
    acme::{self, Account, AcmeError, Client, Identifier, NewOrder, RetryPolicy},
    broker::{Identifiers, ProgressSink, Replaces},
    challenge::{
        self, CachingTokenProvider, Http01Responder, SharedTokenProvider, StaticTokenProvider,
        StiPaClient, TkAuthSettings, TokenProvider, TokenRequest,
    },
    config::{BreakerSettings, CaSettings, CsrSettings, PreauthSettings},
    shaken::{self, CertInfo, CsrSpec, Expected, Subject, TnAuthList},
    store::Store,
    tls,
};

/// A certificate one CA issued.
#[derive(Debug)]
pub struct Issued {
    /// PEM chain, leaf first, as the CA sent it.
    pub chain_pem: String,
    /// DER chain, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER of the key the broker generated (None when the caller sent a CSR).
    pub key_pkcs8: Option<Vec<u8>>,
    /// What the leaf says.
    pub leaf: CertInfo,
    /// The account URL that ordered it.
    pub account_url: String,
    /// What the strict review of the chain found ([`shaken::profile_findings`]); empty when
    /// it conforms. Each was logged at warn.
    pub findings: Vec<shaken::Finding>,
}

/// What one attempt carries beyond the request: crash takeover (an order to resume, where
/// to record a new one), hedging progress, and the certificate being replaced.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tracking<'a> {
    /// A recorded [`OrderProgress`], as bytes.
    pub resume: Option<&'a [u8]>,
    /// Where to record the order this attempt places.
    pub progress: Option<&'a ProgressSink>,
    /// Told when the finalize request goes out (hedging needs to know).
    pub race: Option<&'a Progress>,
    /// The certificate a renewal replaces; named in the order (RFC 9773 `replaces`) only
    /// if this CA issued it and offers ARI.
    pub replaces: Option<&'a Replaces>,
}

/// A fresh CSR, its key (PKCS#8 DER) and the key's SubjectPublicKeyInfo DER.
type NewKey = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// One `[[ca]]`: settings, lazily created account, token source.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    priority: u32,
    pools: Vec<String>,
    source: AccountSource,
    attempt_timeout: Duration,
    csr: CsrSettings,
    tkauth: TkAuthSettings,
    tokens: Option<Arc<dyn TokenProvider>>,
    http01_listen: Option<std::net::SocketAddr>,
    http01: OnceCell<Http01Responder>,
    client: OnceCell<Client>,
    /// The account, and the stamp of the key file it was loaded from.
    account: Mutex<Option<(Account, Option<KeyFileStamp>)>>,
    weight: u32,
    breaker: BreakerSettings,
    reuse_account_key: bool,
    cert_lifetime: Option<Duration>,
    strict_profile: bool,
    preauth: PreauthSettings,
    /// The TNAuthLists whose valid authorization an order gave up (see [`super::preauth`]).
    preauth_lost: tokio::sync::broadcast::Sender<TnAuthList>,
}

impl Upstream {
    /// Builds an upstream from its settings, reading trust roots and secrets from files and
    /// the environment. Fails naming the key that is wrong.
    pub fn from_settings(s: &CaSettings) -> Result<Self, AttemptError> {
        Self::from_settings_with_store(s, None)
    }

    /// [`Upstream::from_settings`], sharing SPC tokens fleet-wide through `store` (see
    /// [`SharedTokenProvider`]) when one is given and the CA reuses tokens.
    pub fn from_settings_with_store(
        s: &CaSettings,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, AttemptError> {
        let setup = |key: &str, e: &dyn std::fmt::Display| {
            AttemptError::Setup(format!("ca {:?}: {key}: {e}", s.name))
        };
        let source = AccountSource::from_settings(s)?;
        let trust_roots = source.trust_roots().cloned();
        let tokens: Option<Arc<dyn TokenProvider>> = if let Some(pa) = &s.sti_pa {
            let password = match (&pa.password, &pa.password_env) {
                (_, Some(var)) => SecretString::from(
                    std::env::var(var)
                        .map_err(|_| setup("sti_pa.password_env", &format!("{var} is not set")))?,
                ),
                (Some(p), None) => SecretString::from(p.expose_secret().to_owned()),
                (None, None) => return Err(setup("sti_pa.password_env", &"not set")),
            };
            let roots = match &pa.trust_roots {
                Some(path) => {
                    Some(tls::read_roots(path).map_err(|e| setup("sti_pa.trust_roots", &e))?)
                }
                None => trust_roots.clone(),
            };
            let client = StiPaClient::new(challenge::StiPaSettings {
                base_url: pa.base_url.clone(),
                user_id: pa.user_id.clone(),
                password,
                trust_roots: roots,
                tkvalue_encoding: s.challenge.tkvalue_encoding,
                timeout: Duration::from_secs(s.request_timeout_secs),
            })
            .map_err(|e| setup("sti_pa", &e))?;
            let client: Arc<dyn TokenProvider> = Arc::new(client);
            Some(if s.challenge.reuse_tokens {
                let margin = s.challenge.refresh_margin;
                let shared: Arc<dyn TokenProvider> = match store {
                    Some(store) => Arc::new(SharedTokenProvider::new(client, store, margin)),
                    None => client,
                };
                Arc::new(CachingTokenProvider::new(shared, margin))
            } else {
                client
            })
        } else {
            s.token_file
                .as_deref()
                .map(|p| Arc::new(StaticTokenProvider::from_file(p)) as Arc<dyn TokenProvider>)
        };
        Ok(Self {
            name: s.name.clone(),
            priority: s.priority,
            pools: s.pools.clone(),
            source,
            attempt_timeout: Duration::from_secs(s.attempt_timeout_secs),
            csr: s.csr.clone(),
            tkauth: s.challenge.clone(),
            tokens,
            http01_listen: s.http01_listen,
            http01: OnceCell::new(),
            client: OnceCell::new(),
            account: Mutex::new(None),
            weight: s.weight,
            breaker: s.breaker.clone(),
            reuse_account_key: s.allow_account_key_reuse,
            cert_lifetime: s.cert_lifetime_secs.map(Duration::from_secs),
            strict_profile: s.strict_profile,
            preauth: s.preauthorization.clone(),
            preauth_lost: tokio::sync::broadcast::Sender::new(16),
        })
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
        self.attempt_timeout
    }

    /// The configured `cert_lifetime_secs`: what the broker asks for in `notAfter`.
    pub fn cert_lifetime(&self) -> Option<Duration> {
        self.cert_lifetime
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

    /// Where its SPC tokens come from, if anywhere.
    pub(super) fn tokens(&self) -> Option<&Arc<dyn TokenProvider>> {
        self.tokens.as_ref()
    }

    /// Its tkauth-01 dialect.
    pub(super) fn tkauth(&self) -> &TkAuthSettings {
        &self.tkauth
    }

    /// The ACME account, created (or found) on first use, and found again when the key
    /// file changed since (a key rollover, or a new key after a deactivation).
    pub async fn account(&self) -> Result<Account, AttemptError> {
        let mut slot = self.account.lock().await;
        let stamp = self.source.stamp();
        if let Some((account, loaded)) = slot.as_ref()
            && *loaded == stamp
        {
            return Ok(account.clone());
        }
        let key = self.source.load_or_create_key()?;
        let stamp = self.source.stamp();
        if let Some((account, loaded)) = slot.as_mut()
            && *account.key() == key
        {
            *loaded = stamp;
            return Ok(account.clone());
        }
        let client = self.client.get_or_try_init(|| self.source.client()).await?;
        let account = self.source.open(client, key, true).await?;
        info!(ca = %self.name, account = %account.url(), "acme: account ready");
        if slot.is_some() {
            info!(ca = %self.name, account = %account.url(), "account key file changed; using the new key");
        }
        *slot = Some((account.clone(), stamp));
        Ok(account)
    }

    /// Obtains one certificate for `identifiers`, with the caller's CSR or a fresh P-256
    /// key; a CA certificate (for a delegate-issuing subordinate CA) when `ca` is set.
    /// Bounded by the CA's `attempt_timeout_secs`.
    pub async fn issue(
        &self,
        identifiers: &Identifiers,
        csr_der: Option<&[u8]>,
        ca: bool,
    ) -> Result<Issued, AttemptError> {
        self.issue_tracked(identifiers, csr_der, ca, Tracking::default())
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
        ca: bool,
        tracking: Tracking<'_>,
    ) -> Result<Issued, AttemptError> {
        let attempt = async {
            match self.issue_inner(identifiers, csr_der, ca, tracking).await {
                // The CA refused something signed with a key that was rolled over meanwhile:
                // not a verdict on the request, so once more with the new key.
                Err(AttemptError::Acme(e))
                    if !e.is_retryable() && self.key_file_changed().await =>
                {
                    info!(ca = %self.name, error = %e, "account key changed during the attempt; retrying with the new key");
                    self.issue_inner(identifiers, csr_der, ca, tracking).await
                }
                other => other,
            }
        };
        tokio::time::timeout(self.attempt_timeout, attempt)
            .await
            .map_err(|_| AttemptError::Timeout(self.attempt_timeout))?
    }

    /// Whether the key file differs from the one the current account was loaded from.
    async fn key_file_changed(&self) -> bool {
        let loaded = self.account.lock().await;
        loaded
            .as_ref()
            .is_some_and(|(_, stamp)| *stamp != self.source.stamp())
    }

    async fn issue_inner(
        &self,
        identifiers: &Identifiers,
        csr_der: Option<&[u8]>,
        ca: bool,
        tracking: Tracking<'_>,
    ) -> Result<Issued, AttemptError> {
        let account = &self.account().await?;
        let (order, csr, key_pkcs8, spki) = match self.resumable(account, tracking.resume).await {
            Some(resumed) => resumed,
            None => {
                let (csr, key_pkcs8, spki) = match csr_der {
                    Some(der) => {
                        let parsed = shaken::parse_csr(der)?;
                        (der.to_vec(), None, parsed.public_key_spki_der)
                    }
                    None => self.new_key_and_csr(identifiers, account, ca)?,
                };
                let mut order = self
                    .place_order(account, identifiers, tracking.replaces)
                    .await?;
                // A CA certificate needs authorizations answered with a ca token: valid ones
                // (pre-authorizations, of several replicas perhaps) are given up, and the
                // order placed again, until it brings none.
                let mut rounds = 0;
                while shaken::parse_csr(&csr)?.ca && rounds < super::preauth::MAX_RELEASES {
                    let released =
                        super::preauth::release_for_ca_order(account, &order, &self.name).await?;
                    if released.is_empty() {
                        break;
                    }
                    for list in released {
                        // Their pre-authorization tasks make new ones.
                        let _ = self.preauth_lost.send(list);
                    }
                    order = self
                        .place_order(account, identifiers, tracking.replaces)
                        .await?;
                    rounds += 1;
                }
                if let Some(sink) = tracking.progress {
                    let record = OrderProgress::new(
                        &self.name,
                        account.url(),
                        &order.url,
                        &csr,
                        key_pkcs8.as_deref(),
                    );
                    sink.record(record.to_bytes()).await;
                }
                (order, csr, key_pkcs8, spki)
            }
        };
        // The CSR says whether this is a CA certificate; it is also what a resumed order
        // finalizes with, so the token asked for and the check below follow it.
        let ca = shaken::parse_csr(&csr)?.ca;
        let policy = RetryPolicy::new().timeout(self.attempt_timeout);
        for authz_url in &order.state.authorizations {
            self.authorize(account, authz_url, &policy, ca).await?;
        }
        let mut order = account.poll_order(&order.url, &policy).await?;
        // A resumed order may already be finalized.
        if order.state.status == acme::OrderStatus::Ready {
            if let Some(race) = tracking.race {
                race.finalizing();
            }
            info!(ca = %self.name, order = %order.url, "acme: finalizing order");
            order = account.finalize(&order, &csr).await?;
            order = account.poll_order(&order.url, &policy).await?;
        }
        let cert_url = order.state.certificate.clone().ok_or_else(|| {
            AttemptError::Acme(AcmeError::Protocol(format!(
                "order {} is {:?} without a certificate URL",
                order.url, order.state.status
            )))
        })?;
        let chain = account.certificate_chain(&cert_url).await?;
        info!(ca = %self.name, certificate = %cert_url, "acme: certificate downloaded");
        let chain_der = shaken::parse_pem_chain(&chain.pem)?;
        let (tn, dns): (Option<&TnAuthList>, &[String]) = match identifiers {
            Identifiers::TnAuthList(list) => (Some(list), &[]),
            Identifiers::Dns(names) => (None, names),
        };
        let leaf = shaken::check_issued(
            &chain_der,
            &Expected {
                tn_auth_list: tn,
                dns_names: dns,
                public_key_spki_der: &spki,
                ca,
            },
            time::OffsetDateTime::now_utc(),
        )?;
        let findings = shaken::profile_findings(&chain_der);
        for f in &findings {
            warn!(
                ca = %self.name,
                serial = %leaf.serial_hex,
                finding = f.code,
                cert = f.cert,
                detail = %f.detail,
                strict_profile = self.strict_profile,
                "certificate from the CA does not conform"
            );
        }
        if self.strict_profile && !findings.is_empty() {
            return Err(AttemptError::NonConforming {
                serial: leaf.serial_hex,
                findings,
            });
        }
        Ok(Issued {
            chain_pem: chain.pem,
            chain_der,
            key_pkcs8,
            leaf,
            account_url: account.url().to_owned(),
            findings,
        })
    }

    /// Places the order. A renewal at the CA that issued the old certificate names it in
    /// `replaces` (RFC 9773 §5); if the CA answers `alreadyReplaced`, the order is placed
    /// once more without it.
    async fn place_order(
        &self,
        account: &Account,
        identifiers: &Identifiers,
        predecessor: Option<&Replaces>,
    ) -> Result<acme::Order, AttemptError> {
        let acme_ids = match identifiers {
            Identifiers::TnAuthList(list) => vec![Identifier::new(
                "TNAuthList",
                list.encode(self.tkauth.tkvalue_encoding),
            )],
            Identifiers::Dns(names) => names.iter().map(Identifier::dns).collect(),
        };
        let offers_ari = account.client().directory().renewal_info.is_some();
        let mut req = NewOrder {
            identifiers: acme_ids,
            not_before: None,
            not_after: self
                .cert_lifetime
                .map(|life| time::OffsetDateTime::now_utc() + life),
            replaces: ari::replaces_for(&self.name, offers_ari, predecessor)
                .map(|id| id.to_string()),
            auto_renewal: None,
        };
        let order = match account.new_order(&req).await {
            Err(e) if e.is_already_replaced() && req.replaces.is_some() => {
                warn!(replaces = ?req.replaces, "CA says the certificate was already replaced; ordering without replaces");
                req.replaces = None;
                account.new_order(&req).await?
            }
            other => other?,
        };
        info!(ca = %self.name, order = %order.url, replaces = ?req.replaces, "acme: order placed");
        Ok(order)
    }

    /// The order a previous holder recorded, when it is this CA's and account's and still
    /// usable; `None` means place a new one.
    async fn resumable(
        &self,
        account: &Account,
        resume: Option<&[u8]>,
    ) -> Option<(acme::Order, Vec<u8>, Option<Vec<u8>>, Vec<u8>)> {
        let p = OrderProgress::from_bytes(resume?)?;
        if p.ca != self.name || p.account_url != account.url() {
            return None;
        }
        let csr = p.csr()?;
        let spki = shaken::parse_csr(&csr).ok()?.public_key_spki_der;
        match account.order(&p.order_url).await {
            Ok(order) if order.state.status != acme::OrderStatus::Invalid => {
                info!(order = %order.url, status = ?order.state.status, "resuming recorded order");
                Some((order, csr, p.key(), spki))
            }
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "recorded order cannot be resumed; placing a new one");
                None
            }
        }
    }

    /// Answers one authorization's challenge and waits for it to become valid.
    pub(super) async fn authorize(
        &self,
        account: &Account,
        authz_url: &str,
        policy: &RetryPolicy,
        ca: bool,
    ) -> Result<(), AttemptError> {
        let authz = account.authorization(authz_url).await?;
        let id_type = authz.identifier.r#type.as_str();
        info!(
            ca = %self.name,
            authorization = %authz_url,
            identifier = %format!("{}:{}", id_type, authz.identifier.value),
            status = ?authz.status,
            "acme: authorization"
        );
        if authz.status == acme::AuthorizationStatus::Valid {
            return Ok(());
        }
        if id_type.eq_ignore_ascii_case("TNAuthList") {
            let challenge = find_challenge(&authz, "tkauth-01")?;
            let tokens = self.tokens.as_ref().ok_or_else(|| {
                AttemptError::Setup(format!(
                    "ca {:?} needs an SPC token: configure sti_pa or token_file",
                    self.name
                ))
            })?;
            let list = TnAuthList::decode(&authz.identifier.value)?;
            let fingerprint =
                challenge::fingerprint(self.tkauth.fingerprint, &account.key().public_jwk())?;
            let req = TokenRequest {
                tn_auth_list: list,
                ca,
                fingerprint,
            };
            let token = tokens
                .token(&req)
                .instrument(tracing::info_span!("challenge.token", ca = %self.name))
                .await?;
            let payload = challenge::response_payload(self.tkauth.response_field, &token);
            info!(ca = %self.name, challenge = %challenge.url, "acme: answering tkauth-01 challenge");
            account.respond_challenge(&challenge.url, &payload).await?;
            let verdict = account.poll_authorization(authz_url, policy).await;
            if verdict.is_ok() {
                info!(ca = %self.name, authorization = %authz_url, "acme: authorization valid");
            }
            if let Err(e) = &verdict
                && e.problem().is_some()
                && !e.is_retryable()
            {
                // The CA refused the challenge, most likely the token: never offer it again.
                tokens.discard(&req).await;
            }
            verdict?;
            return Ok(());
        }
        let challenge = find_challenge(&authz, "http-01")?;
        let empty = serde_json::json!({});
        if let (Some(responder), Some(token)) = (self.http01().await?, &challenge.token) {
            let key_auth = challenge::key_authorization(token, &account.key().thumbprint_b64());
            responder.insert(token, key_auth);
            let result = self
                .answer(account, &challenge.url, &empty, authz_url, policy)
                .await;
            responder.remove(token);
            return result;
        }
        self.answer(account, &challenge.url, &empty, authz_url, policy)
            .await
    }

    async fn answer(
        &self,
        account: &Account,
        challenge_url: &str,
        payload: &serde_json::Value,
        authz_url: &str,
        policy: &RetryPolicy,
    ) -> Result<(), AttemptError> {
        info!(ca = %self.name, challenge = %challenge_url, "acme: answering http-01 challenge");
        account.respond_challenge(challenge_url, payload).await?;
        account.poll_authorization(authz_url, policy).await?;
        info!(ca = %self.name, authorization = %authz_url, "acme: authorization valid");
        Ok(())
    }

    /// The http-01 responder, bound on first use when `http01_listen` is configured.
    async fn http01(&self) -> Result<Option<&Http01Responder>, AttemptError> {
        let Some(addr) = self.http01_listen else {
            return Ok(None);
        };
        let responder = self
            .http01
            .get_or_try_init(|| async {
                Http01Responder::bind(addr).await.map_err(|e| {
                    AttemptError::Setup(format!("ca {:?}: http01_listen {addr}: {e}", self.name))
                })
            })
            .await?;
        Ok(Some(responder))
    }

    fn new_key_and_csr(
        &self,
        identifiers: &Identifiers,
        account: &Account,
        ca: bool,
    ) -> Result<NewKey, AttemptError> {
        let key = if self.reuse_account_key {
            // The CA wants the account key in the certificate (shaken-acme.md §0.7).
            rcgen::KeyPair::try_from(account.key().to_pkcs8_der().as_slice())
                .map_err(|e| AttemptError::Setup(format!("account key as certificate key: {e}")))?
        } else {
            shaken::generate_key()?
        };
        let (first, cn, tn, dns): (String, String, Option<&TnAuthList>, &[String]) =
            match identifiers {
                Identifiers::TnAuthList(list) => {
                    let first = list
                        .spcs()
                        .next()
                        .map(str::to_owned)
                        .unwrap_or_else(|| list.entries()[0].to_string());
                    let cn = self.csr.common_name_template.replace("{spc}", &first);
                    (first, cn, Some(list), &[])
                }
                Identifiers::Dns(names) => (names[0].clone(), names[0].clone(), None, names),
            };
        // countryName and serialNumber go out as PrintableString (docs/profile.md).
        let subject = Subject {
            country: self.csr.country.clone(),
            organization: self.csr.organization.clone(),
            common_name: cn,
            serial_number: self.csr.serial_number(&first),
        };
        let csr = shaken::build_csr(
            &key,
            &CsrSpec {
                subject: &subject,
                tn_auth_list: tn,
                dns_names: dns,
                ca,
            },
        )?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Ok((csr, Some(key.serialize_der()), spki))
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

fn find_challenge<'a>(
    authz: &'a acme::Authorization,
    kind: &str,
) -> Result<&'a acme::Challenge, AttemptError> {
    authz
        .challenges
        .iter()
        .find(|c| c.r#type == kind)
        .ok_or_else(|| {
            let offered: Vec<&str> = authz.challenges.iter().map(|c| c.r#type.as_str()).collect();
            AttemptError::Unsupported(format!(
                "authorization for {} offers no {kind} challenge (offered: {offered:?})",
                authz.identifier.value
            ))
        })
}
