//! One upstream CA: its ACME account and the full order flow for one certificate.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;
use tracing::{Instrument, debug, info, instrument, warn};

use super::{AttemptError, Progress, ari, progress::OrderProgress};
use crate::{
    acme::{
        self, Account, AccountKey, AcmeError, Client, ClientSettings, ExternalAccountKey,
        Identifier, NewAccount, NewOrder, RetryPolicy,
    },
    broker::{Identifiers, ProgressSink, Replaces},
    challenge::{
        self, CachingTokenProvider, Http01Responder, StaticTokenProvider, StiPaClient,
        TkAuthSettings, TokenProvider, TokenRequest,
    },
    config::{BreakerSettings, CaSettings, CsrSettings},
    shaken::{self, CertInfo, CsrSpec, Expected, Subject, TnAuthList},
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
    directory: url::Url,
    trust_roots: Option<Vec<CertificateDer<'static>>>,
    account_key_path: PathBuf,
    contact: Vec<String>,
    eab: Option<ExternalAccountKey>,
    request_timeout: Duration,
    attempt_timeout: Duration,
    csr: CsrSettings,
    tkauth: TkAuthSettings,
    tokens: Option<Arc<dyn TokenProvider>>,
    http01_listen: Option<std::net::SocketAddr>,
    http01: OnceCell<Http01Responder>,
    account: OnceCell<Account>,
    weight: u32,
    breaker: BreakerSettings,
    reuse_account_key: bool,
    cert_lifetime: Option<Duration>,
}

impl Upstream {
    /// Builds an upstream from its settings, reading trust roots and secrets from files and
    /// the environment. Fails naming the key that is wrong.
    pub fn from_settings(s: &CaSettings) -> Result<Self, AttemptError> {
        let setup = |key: &str, e: &dyn std::fmt::Display| {
            AttemptError::Setup(format!("ca {:?}: {key}: {e}", s.name))
        };
        let trust_roots = s
            .trust_roots
            .as_deref()
            .map(tls::read_roots)
            .transpose()
            .map_err(|e| setup("trust_roots", &e))?;
        let eab = s
            .eab
            .as_ref()
            .map(|eab| {
                let key = std::env::var(&eab.hmac_key_env).map_err(|_| {
                    setup(
                        "eab.hmac_key_env",
                        &format!("{} is not set", eab.hmac_key_env),
                    )
                })?;
                ExternalAccountKey::from_base64url(eab.key_id.clone(), &key)
                    .map_err(|e| setup("eab.hmac_key_env", &e))
            })
            .transpose()?;
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
                Arc::new(CachingTokenProvider::new(
                    client,
                    s.challenge.refresh_margin,
                ))
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
            directory: s.directory.clone(),
            trust_roots,
            account_key_path: s.account_key.clone(),
            contact: s.contact.clone(),
            eab,
            request_timeout: Duration::from_secs(s.request_timeout_secs),
            attempt_timeout: Duration::from_secs(s.attempt_timeout_secs),
            csr: s.csr.clone(),
            tkauth: s.challenge.clone(),
            tokens,
            http01_listen: s.http01_listen,
            http01: OnceCell::new(),
            account: OnceCell::new(),
            weight: s.weight,
            breaker: s.breaker.clone(),
            reuse_account_key: s.allow_account_key_reuse,
            cert_lifetime: s.cert_lifetime_secs.map(Duration::from_secs),
        })
    }

    /// Configured name.
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

    /// The ACME account, created (or found) on first use.
    pub async fn account(&self) -> Result<&Account, AttemptError> {
        self.account
            .get_or_try_init(|| async {
                let key = load_or_create_key(&self.account_key_path)?;
                let client = Client::new(ClientSettings {
                    directory_url: self.directory.clone(),
                    trust_roots: self.trust_roots.clone(),
                    request_timeout: self.request_timeout,
                    retry: RetryPolicy::new().timeout(self.attempt_timeout),
                    // Bounded, and enough that a CA rejecting half its nonces still works
                    // (a POST then fails with probability 0.5^21).
                    max_bad_nonce_retries: 20,
                })
                .await?;
                let account = match client.find_account(key.clone()).await {
                    Ok(a) => a,
                    Err(AcmeError::Problem { problem, .. })
                        if problem.r#type.as_deref()
                            == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
                    {
                        let req = NewAccount {
                            contact: self.contact.clone(),
                            terms_of_service_agreed: true,
                            external_account_binding: self.eab.clone(),
                        };
                        let a = client.new_account(key, &req).await?;
                        info!(ca = %self.name, account = %a.url(), "ACME account created");
                        a
                    }
                    Err(e) => return Err(e.into()),
                };
                Ok(account)
            })
            .await
    }

    /// Obtains one certificate for `identifiers`, with the caller's CSR or a fresh P-256
    /// key. Bounded by the CA's `attempt_timeout_secs`.
    pub async fn issue(
        &self,
        identifiers: &Identifiers,
        csr_der: Option<&[u8]>,
    ) -> Result<Issued, AttemptError> {
        self.issue_tracked(identifiers, csr_der, Tracking::default())
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
        tracking: Tracking<'_>,
    ) -> Result<Issued, AttemptError> {
        tokio::time::timeout(
            self.attempt_timeout,
            self.issue_inner(identifiers, csr_der, tracking),
        )
        .await
        .map_err(|_| AttemptError::Timeout(self.attempt_timeout))?
    }

    async fn issue_inner(
        &self,
        identifiers: &Identifiers,
        csr_der: Option<&[u8]>,
        tracking: Tracking<'_>,
    ) -> Result<Issued, AttemptError> {
        let account = self.account().await?;
        let (order, csr, key_pkcs8, spki) = match self.resumable(account, tracking.resume).await {
            Some(resumed) => resumed,
            None => {
                let (csr, key_pkcs8, spki) = match csr_der {
                    Some(der) => {
                        let parsed = shaken::parse_csr(der)?;
                        (der.to_vec(), None, parsed.public_key_spki_der)
                    }
                    None => self.new_key_and_csr(identifiers, account)?,
                };
                let order = self
                    .place_order(account, identifiers, tracking.replaces)
                    .await?;
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
        let policy = RetryPolicy::new().timeout(self.attempt_timeout);
        for authz_url in &order.state.authorizations {
            self.authorize(account, authz_url, &policy).await?;
        }
        let mut order = account.poll_order(&order.url, &policy).await?;
        // A resumed order may already be finalized.
        if order.state.status == acme::OrderStatus::Ready {
            if let Some(race) = tracking.race {
                race.finalizing();
            }
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
            },
            time::OffsetDateTime::now_utc(),
        )?;
        Ok(Issued {
            chain_pem: chain.pem,
            chain_der,
            key_pkcs8,
            leaf,
            account_url: account.url().to_owned(),
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
        };
        let order = match account.new_order(&req).await {
            Err(e) if e.is_already_replaced() && req.replaces.is_some() => {
                warn!(replaces = ?req.replaces, "CA says the certificate was already replaced; ordering without replaces");
                req.replaces = None;
                account.new_order(&req).await?
            }
            other => other?,
        };
        debug!(order = %order.url, replaces = ?req.replaces, "order placed");
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
    async fn authorize(
        &self,
        account: &Account,
        authz_url: &str,
        policy: &RetryPolicy,
    ) -> Result<(), AttemptError> {
        let authz = account.authorization(authz_url).await?;
        if authz.status == acme::AuthorizationStatus::Valid {
            return Ok(());
        }
        let id_type = authz.identifier.r#type.as_str();
        let payload = if id_type.eq_ignore_ascii_case("TNAuthList") {
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
            let token = tokens
                .token(&TokenRequest {
                    tn_auth_list: list,
                    ca: false,
                    fingerprint,
                })
                .instrument(tracing::info_span!("challenge.token", ca = %self.name))
                .await?;
            (
                challenge.url.clone(),
                challenge::response_payload(self.tkauth.response_field, &token),
            )
        } else {
            let challenge = find_challenge(&authz, "http-01")?;
            if let (Some(responder), Some(token)) = (self.http01().await?, &challenge.token) {
                let key_auth = challenge::key_authorization(token, &account.key().thumbprint_b64());
                responder.insert(token, key_auth);
                let result = self
                    .answer(
                        account,
                        &challenge.url,
                        &serde_json::json!({}),
                        authz_url,
                        policy,
                    )
                    .await;
                responder.remove(token);
                return result;
            }
            (challenge.url.clone(), serde_json::json!({}))
        };
        self.answer(account, &payload.0, &payload.1, authz_url, policy)
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
        account.respond_challenge(challenge_url, payload).await?;
        account.poll_authorization(authz_url, policy).await?;
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
    ) -> Result<NewKey, AttemptError> {
        let key = if self.reuse_account_key {
            // The CA wants the account key in the certificate (shaken-acme.md §0.7).
            rcgen::KeyPair::try_from(account.key().to_pkcs8_der().as_slice())
                .map_err(|e| AttemptError::Setup(format!("account key as certificate key: {e}")))?
        } else {
            shaken::generate_key()?
        };
        let (cn, tn, dns): (String, Option<&TnAuthList>, &[String]) = match identifiers {
            Identifiers::TnAuthList(list) => {
                let first = list
                    .spcs()
                    .next()
                    .map(str::to_owned)
                    .unwrap_or_else(|| list.entries()[0].to_string());
                let cn = self.csr.common_name_template.replace("{spc}", &first);
                (cn, Some(list), &[])
            }
            Identifiers::Dns(names) => (names[0].clone(), None, names),
        };
        let subject = Subject {
            country: self.csr.country.clone(),
            organization: self.csr.organization.clone(),
            common_name: cn,
        };
        let csr = shaken::build_csr(
            &key,
            &CsrSpec {
                subject: &subject,
                tn_auth_list: tn,
                dns_names: dns,
                ca: false,
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

/// Reads the account key, or creates one (mode 0600) on first start.
fn load_or_create_key(path: &Path) -> Result<AccountKey, AttemptError> {
    let setup = |e: &dyn std::fmt::Display| {
        AttemptError::Setup(format!("account key {}: {e}", path.display()))
    };
    match std::fs::read(path) {
        Ok(pem) => Ok(AccountKey::from_pkcs8_pem(&pem)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = AccountKey::generate()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| setup(&e))?;
            }
            write_private(path, key.to_pkcs8_pem().as_bytes()).map_err(|e| setup(&e))?;
            info!(path = %path.display(), "created ACME account key");
            Ok(key)
        }
        Err(e) => Err(setup(&e)),
    }
}

/// Writes a secret file readable by the owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
