//! The order flow at one CA ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)),
//! one step per method: prepare the order (resume a recorded one, or make the CSR and place
//! a new one), answer its authorizations ([`Solvers`]), finalize, download, and check what
//! came back.
//!
//! Where the variants of RFC 8739 (STAR) and pre-authorization (newAuthz, RFC 8555 §7.4.1)
//! go: a STAR order differs only in what [`OrderFlow::place`] asks for and in where
//! [`OrderFlow::download`] finds the certificate (`star-certificate` rather than
//! `certificate`); a pre-authorized identifier is an authorization the loop in
//! [`OrderFlow::run`] finds already valid, so the flow skips its challenge.

use std::time::Duration;

use tracing::{info, warn};

use super::{AttemptError, Progress, ari, authorize::Solvers, progress::OrderProgress};
use crate::{
    acme::{self, Account, AcmeError, Identifier, NewOrder, RetryPolicy},
    broker::{Identifiers, ProgressSink, Replaces},
    config::CsrSettings,
    shaken::{self, CertInfo, CsrSpec, Expected, Subject, TkValueEncoding, TnAuthList},
};

/// What kind of certificate an order is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CertKind {
    /// An end-entity certificate, the one signers sign PASSporTs with.
    #[default]
    EndEntity,
    /// A CA certificate (basicConstraints CA:TRUE) for a delegate-issuing subordinate CA.
    SubordinateCa,
}

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
    /// The STAR order it came from, when it is a short-term certificate.
    pub star: Option<crate::cert::StarOrder>,
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

/// What one order asks for: the identifiers, whose key, and which kind of certificate.
#[derive(Debug, Clone, Copy)]
pub(super) struct OrderSpec<'a> {
    /// The identifiers to certify.
    pub identifiers: &'a Identifiers,
    /// The caller's CSR (DER); `None`: the broker makes a key and a CSR.
    pub csr_der: Option<&'a [u8]>,
    /// What the certificate is for.
    pub kind: CertKind,
}

/// How one CA's orders are placed and checked, from its `[[ca]]`.
#[derive(Debug)]
pub(super) struct OrderSettings {
    /// The CA's configured name, for logs and for the progress record.
    pub ca: String,
    /// Bound on one attempt; also how long to poll an order or authorization.
    pub attempt_timeout: Duration,
    /// Subject of the CSRs the broker makes.
    pub csr: CsrSettings,
    /// How a TNAuthList identifier's value is encoded in newOrder.
    pub tkvalue_encoding: TkValueEncoding,
    /// The certificate key is the account key (the CA asks for it).
    pub reuse_account_key: bool,
    /// The lifetime asked for in `notAfter`.
    pub cert_lifetime: Option<Duration>,
    /// A certificate with profile findings is refused, not only logged.
    pub strict_profile: bool,
    /// `[ca.star]`: place STAR orders where the CA offers them.
    pub star: Option<crate::config::StarSettings>,
    /// Whether "the CA offers no STAR" was logged already (once per CA).
    pub star_unoffered_logged: std::sync::atomic::AtomicBool,
}

/// One attempt at one order, with everything it needs borrowed from its upstream.
pub(super) struct OrderFlow<'a> {
    /// The CA's order settings.
    pub settings: &'a OrderSettings,
    /// The CA's challenge solvers.
    pub solvers: &'a Solvers,
    /// The account the order is placed with.
    pub account: &'a Account,
    /// Takeover, hedging and renewal context.
    pub tracking: Tracking<'a>,
    /// Where to announce the TNAuthLists whose valid authorization a CA-certificate order
    /// gave up ([`super::preauth::release_for_ca_order`]).
    pub preauth_lost: &'a tokio::sync::broadcast::Sender<TnAuthList>,
}

/// A CSR to finalize with, and what the issued certificate must carry.
struct PreparedCsr {
    /// DER.
    der: Vec<u8>,
    /// PKCS#8 DER of the key the broker made; `None` when the caller brought the CSR.
    key_pkcs8: Option<Vec<u8>>,
    /// SubjectPublicKeyInfo DER of its key: the leaf must carry the same.
    spki: Vec<u8>,
}

/// An order on its way to a certificate, with the CSR it finalizes with.
struct Prepared {
    order: acme::Order,
    csr: PreparedCsr,
}

// === impl CertKind ===

impl CertKind {
    /// [`CertKind::SubordinateCa`] when `ca` is set (a request's or a CSR's CA flag).
    pub fn from_ca_flag(ca: bool) -> Self {
        if ca {
            Self::SubordinateCa
        } else {
            Self::EndEntity
        }
    }

    /// Whether the certificate has basicConstraints CA:TRUE.
    pub fn is_ca(self) -> bool {
        self == Self::SubordinateCa
    }
}

// === impl OrderFlow ===

impl OrderFlow<'_> {
    /// Drives one order from placement (or resumption) to a checked certificate.
    pub(super) async fn run(&self, spec: &OrderSpec<'_>) -> Result<Issued, AttemptError> {
        let prepared = match self.resumable().await {
            Some(resumed) => resumed,
            None => self.place_new(spec).await?,
        };
        // The CSR says whether this is a CA certificate; it is also what a resumed order
        // finalizes with, so the token asked for and the check below follow it.
        let kind = CertKind::from_ca_flag(shaken::parse_csr(&prepared.csr.der)?.ca);
        let policy = RetryPolicy::new().timeout(self.settings.attempt_timeout);
        for authz_url in &prepared.order.state.authorizations {
            self.solvers
                .authorize(self.account, authz_url, &policy, kind)
                .await?;
        }
        let order = self.finalize(&prepared, &policy).await?;
        let (chain_pem, star) = self.download(&order).await?;
        let issued = self.check(spec.identifiers, prepared.csr, kind, chain_pem)?;
        Ok(Issued { star, ..issued })
    }

    /// The order a previous holder recorded, when it is this CA's and account's and still
    /// usable; `None` means place a new one.
    async fn resumable(&self) -> Option<Prepared> {
        let p = OrderProgress::from_bytes(self.tracking.resume?)?;
        if p.ca != self.settings.ca || p.account_url != self.account.url() {
            return None;
        }
        let der = p.csr()?;
        let spki = shaken::parse_csr(&der).ok()?.public_key_spki_der;
        match self.account.order(&p.order_url).await {
            // A canceled STAR order issues nothing more: order anew.
            Ok(order)
                if !matches!(
                    order.state.status,
                    acme::OrderStatus::Invalid | acme::OrderStatus::Canceled
                ) =>
            {
                info!(order = %order.url, status = ?order.state.status, "resuming recorded order");
                let csr = PreparedCsr {
                    der,
                    key_pkcs8: p.key(),
                    spki,
                };
                Some(Prepared { order, csr })
            }
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "recorded order cannot be resumed; placing a new one");
                None
            }
        }
    }

    /// Makes (or takes) the CSR, places the order and records it for a takeover.
    async fn place_new(&self, spec: &OrderSpec<'_>) -> Result<Prepared, AttemptError> {
        let csr = match spec.csr_der {
            Some(der) => {
                let parsed = shaken::parse_csr(der)?;
                PreparedCsr {
                    der: der.to_vec(),
                    key_pkcs8: None,
                    spki: parsed.public_key_spki_der,
                }
            }
            None => self.new_key_and_csr(spec.identifiers, spec.kind)?,
        };
        let mut order = self.place(spec.identifiers).await?;
        // A CA certificate needs authorizations answered with a ca token: valid ones
        // (pre-authorizations, of several replicas perhaps) are given up, and the order
        // placed again, until it brings none.
        let mut rounds = 0;
        while shaken::parse_csr(&csr.der)?.ca && rounds < super::preauth::MAX_RELEASES {
            let released =
                super::preauth::release_for_ca_order(self.account, &order, &self.settings.ca)
                    .await?;
            if released.is_empty() {
                break;
            }
            for list in released {
                // Their pre-authorization tasks make new ones.
                let _ = self.preauth_lost.send(list);
            }
            order = self.place(spec.identifiers).await?;
            rounds += 1;
        }
        if let Some(sink) = self.tracking.progress {
            let record = OrderProgress::new(
                &self.settings.ca,
                self.account.url(),
                &order.url,
                &csr.der,
                csr.key_pkcs8.as_deref(),
            );
            sink.record(record.to_bytes()).await;
        }
        Ok(Prepared { order, csr })
    }

    /// Places the order. A renewal at the CA that issued the old certificate names it in
    /// `replaces` (RFC 9773 §5); if the CA answers `alreadyReplaced`, the order is placed
    /// once more without it.
    async fn place(&self, identifiers: &Identifiers) -> Result<acme::Order, AttemptError> {
        let acme_ids = match identifiers {
            Identifiers::TnAuthList(list) => vec![Identifier::new(
                "TNAuthList",
                list.encode(self.settings.tkvalue_encoding),
            )],
            Identifiers::Dns(names) => names.iter().map(Identifier::dns).collect(),
        };
        let account = self.account;
        let offers_ari = account.client().directory().renewal_info.is_some();
        let auto_renewal = super::star::auto_renewal(self.settings, account);
        let mut req = NewOrder {
            identifiers: acme_ids,
            not_before: None,
            // A STAR order names lifetimes in auto-renewal, never notAfter (RFC 8739 §3.1.1).
            not_after: self
                .settings
                .cert_lifetime
                .filter(|_| auto_renewal.is_none())
                .map(|life| time::OffsetDateTime::now_utc() + life),
            replaces: ari::replaces_for(&self.settings.ca, offers_ari, self.tracking.replaces)
                .map(|id| id.to_string()),
            auto_renewal,
        };
        let order = match account.new_order(&req).await {
            Err(e) if e.is_already_replaced() && req.replaces.is_some() => {
                warn!(replaces = ?req.replaces, "CA says the certificate was already replaced; ordering without replaces");
                req.replaces = None;
                account.new_order(&req).await?
            }
            other => other?,
        };
        info!(ca = %self.settings.ca, order = %order.url, replaces = ?req.replaces, "acme: order placed");
        Ok(order)
    }

    /// Waits for the order to be ready and finalizes it, unless a resumed order already
    /// was; returns the order once it has a certificate (or failed).
    async fn finalize(
        &self,
        prepared: &Prepared,
        policy: &RetryPolicy,
    ) -> Result<acme::Order, AttemptError> {
        let account = self.account;
        let mut order = account.poll_order(&prepared.order.url, policy).await?;
        // A resumed order may already be finalized.
        if order.state.status == acme::OrderStatus::Ready {
            if let Some(race) = self.tracking.race {
                race.finalizing();
            }
            info!(ca = %self.settings.ca, order = %order.url, "acme: finalizing order");
            order = account.finalize(&order, &prepared.csr.der).await?;
            order = account.poll_order(&order.url, policy).await?;
        }
        Ok(order)
    }

    /// The PEM chain at the order's certificate URL; for a STAR order the current
    /// short-term certificate at its `star-certificate` URL, with what the record keeps of
    /// the order.
    async fn download(
        &self,
        order: &acme::Order,
    ) -> Result<(String, Option<crate::cert::StarOrder>), AttemptError> {
        if let Some(star_url) = &order.state.star_certificate {
            return super::star::download(self.settings, self.account, order, star_url).await;
        }
        let cert_url = order.state.certificate.clone().ok_or_else(|| {
            AttemptError::Acme(AcmeError::Protocol(format!(
                "order {} is {:?} without a certificate URL",
                order.url, order.state.status
            )))
        })?;
        let chain = self.account.certificate_chain(&cert_url).await?;
        info!(ca = %self.settings.ca, certificate = %cert_url, "acme: certificate downloaded");
        Ok((chain.pem, None))
    }

    /// Checks the chain against what was ordered, and reviews it against the SHAKEN
    /// profile (refusing it on findings when `strict_profile` is set).
    fn check(
        &self,
        identifiers: &Identifiers,
        csr: PreparedCsr,
        kind: CertKind,
        chain_pem: String,
    ) -> Result<Issued, AttemptError> {
        let chain_der = shaken::parse_pem_chain(&chain_pem)?;
        let (tn, dns): (Option<&TnAuthList>, &[String]) = match identifiers {
            Identifiers::TnAuthList(list) => (Some(list), &[]),
            Identifiers::Dns(names) => (None, names),
        };
        let leaf = shaken::check_issued(
            &chain_der,
            &Expected {
                tn_auth_list: tn,
                dns_names: dns,
                public_key_spki_der: &csr.spki,
                ca: kind.is_ca(),
            },
            time::OffsetDateTime::now_utc(),
        )?;
        let strict = self.settings.strict_profile;
        let findings = shaken::profile_findings(&chain_der);
        for f in &findings {
            warn!(
                ca = %self.settings.ca,
                serial = %leaf.serial_hex,
                finding = f.code,
                cert = f.cert,
                detail = %f.detail,
                strict_profile = strict,
                "certificate from the CA does not conform"
            );
        }
        if strict && !findings.is_empty() {
            return Err(AttemptError::NonConforming {
                serial: leaf.serial_hex,
                findings,
            });
        }
        Ok(Issued {
            chain_pem,
            chain_der,
            key_pkcs8: csr.key_pkcs8,
            leaf,
            account_url: self.account.url().to_owned(),
            findings,
            star: None,
        })
    }

    /// A fresh key (or the account key, when the CA wants it) and a CSR for `identifiers`.
    fn new_key_and_csr(
        &self,
        identifiers: &Identifiers,
        kind: CertKind,
    ) -> Result<PreparedCsr, AttemptError> {
        let settings = self.settings;
        let key = if settings.reuse_account_key {
            // The CA wants the account key in the certificate (shaken-acme.md §0.7).
            rcgen::KeyPair::try_from(self.account.key().to_pkcs8_der().as_slice())
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
                    let cn = settings.csr.common_name_template.replace("{spc}", &first);
                    (first, cn, Some(list), &[])
                }
                Identifiers::Dns(names) => (names[0].clone(), names[0].clone(), None, names),
            };
        // countryName and serialNumber go out as PrintableString (docs/profile.md).
        let subject = Subject {
            country: settings.csr.country.clone(),
            organization: settings.csr.organization.clone(),
            common_name: cn,
            serial_number: settings.csr.serial_number(&first),
        };
        let der = shaken::build_csr(
            &key,
            &CsrSpec {
                subject: &subject,
                tn_auth_list: tn,
                dns_names: dns,
                ca: kind.is_ca(),
            },
        )?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Ok(PreparedCsr {
            der,
            key_pkcs8: Some(key.serialize_der()),
            spki,
        })
    }
}
