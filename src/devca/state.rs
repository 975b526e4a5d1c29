//! In-memory state of the embedded CA: nonces, accounts, orders, authorizations,
//! challenges and certificates, and their RFC 8555 §7.1 JSON shapes.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Mutex, MutexGuard},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use url::Url;

use super::{Behaviour, DevCaSettings, ari::Replacement, pki::Pki, star::StarState};
use crate::shaken::TnAuthList;

/// Shared by every handler.
pub(crate) struct Inner {
    pub(crate) base: Url,
    pub(crate) settings: DevCaSettings,
    pub(crate) pki: Pki,
    pub(crate) behaviour: Behaviour,
    pub(crate) state: Mutex<AcmeState>,
    pub(crate) nonces: Mutex<Nonces>,
    /// STI-PA access tokens handed out by login and not yet logged out.
    pub(crate) access_tokens: Mutex<HashSet<String>>,
}

impl Inner {
    /// An absolute URL on this server; `path` starts with `/`.
    pub(crate) fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        u.set_path(path);
        u
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, AcmeState> {
        // A panic while holding the lock leaves consistent-enough test state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn new_nonce(&self) -> String {
        self.nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .issue()
    }

    pub(crate) fn take_nonce(&self, nonce: &str) -> bool {
        self.nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(nonce)
    }
}

/// Issued, unused nonces (RFC 8555 §6.5); the oldest are forgotten past a bound.
#[derive(Default)]
pub(crate) struct Nonces {
    live: HashSet<String>,
    order: VecDeque<String>,
}

impl Nonces {
    const MAX: usize = 10_000;

    fn issue(&mut self) -> String {
        let n = random_id();
        self.live.insert(n.clone());
        self.order.push_back(n.clone());
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.live.remove(&old);
            }
        }
        n
    }

    fn take(&mut self, nonce: &str) -> bool {
        self.live.remove(nonce)
    }
}

/// ACME objects by id.
#[derive(Default)]
pub(crate) struct AcmeState {
    pub(crate) accounts: HashMap<String, Account>,
    /// Account id by JWK thumbprint.
    pub(crate) account_by_key: HashMap<String, String>,
    pub(crate) orders: HashMap<String, Order>,
    pub(crate) authzs: HashMap<String, Authz>,
    /// Authorization id by challenge id.
    pub(crate) authz_by_challenge: HashMap<String, String>,
    pub(crate) certs: HashMap<String, IssuedCert>,
    /// `jti`s of tokens already used (one-time use, as akamu enforces).
    pub(crate) used_jtis: HashSet<String>,
    /// Every new order that carried `replaces` (RFC 9773), in arrival order.
    pub(crate) replacements: Vec<Replacement>,
    /// The last [`CSR_HISTORY`] CSRs finalize received (base64url-decoded DER), oldest first.
    pub(crate) csrs: VecDeque<Vec<u8>>,
}

/// How many finalize CSRs the devca keeps for [`crate::devca::DevCaHandle::csrs`].
pub(crate) const CSR_HISTORY: usize = 64;

impl AcmeState {
    pub(crate) fn record_csr(&mut self, der: Vec<u8>) {
        if self.csrs.len() == CSR_HISTORY {
            self.csrs.pop_front();
        }
        self.csrs.push_back(der);
    }

    pub(crate) fn is_revoked(&self, serial_hex: &str) -> bool {
        let want = serial_hex.to_ascii_lowercase();
        self.certs
            .values()
            .any(|c| c.serial_hex == want && c.revoked.is_some())
    }
}

pub(crate) struct Account {
    pub(crate) jwk: Value,
    pub(crate) contact: Vec<String>,
    pub(crate) deactivated: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// A STAR order whose auto-renewal was canceled (RFC 8739 §3.1.2).
    Canceled,
    Deactivated,
    Invalid,
    Pending,
    Processing,
    Ready,
    Valid,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::Deactivated => "deactivated",
            Self::Invalid => "invalid",
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Valid => "valid",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Identifier {
    pub(crate) kind: String,
    pub(crate) value: String,
    /// Decoded, for TNAuthList identifiers.
    pub(crate) tn_auth_list: Option<TnAuthList>,
}

impl Identifier {
    /// How the devca's counters and logs name it: `spc:<SPC>` for each SPC a TNAuthList
    /// names, else `<type>:<value>`.
    pub(crate) fn names(&self) -> Vec<String> {
        let spcs: Vec<String> = self
            .tn_auth_list
            .iter()
            .flat_map(|l| l.spcs().map(|spc| format!("spc:{spc}")))
            .collect();
        if spcs.is_empty() {
            vec![format!("{}:{}", self.kind, self.value)]
        } else {
            spcs
        }
    }
}

/// The names of all `identifiers`, comma-separated, for a log line.
pub(crate) fn identifier_names(identifiers: &[Identifier]) -> String {
    identifiers
        .iter()
        .flat_map(Identifier::names)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) struct Order {
    pub(crate) account: String,
    pub(crate) status: Status,
    pub(crate) expires: OffsetDateTime,
    pub(crate) identifiers: Vec<Identifier>,
    pub(crate) not_after: Option<OffsetDateTime>,
    pub(crate) authzs: Vec<String>,
    pub(crate) cert: Option<String>,
    pub(crate) error: Option<Value>,
    /// The `replaces` it was created with (RFC 9773 §5), echoed in the order object.
    pub(crate) replaces: Option<String>,
    /// The STAR (RFC 8739) part of an order placed with `auto-renewal`.
    pub(crate) star: Option<StarState>,
}

pub(crate) struct Authz {
    pub(crate) account: String,
    pub(crate) order: String,
    pub(crate) identifier: Identifier,
    pub(crate) status: Status,
    pub(crate) expires: OffsetDateTime,
    pub(crate) challenge: Challenge,
    /// The `atc.ca` of the token that validated the challenge.
    pub(crate) token_ca: Option<bool>,
    /// Created by newAuthz (RFC 8555 §7.4.1): a later newOrder of the same account for the
    /// same identifier reuses it while it is valid. Authorizations of orders are not reused.
    pub(crate) preauthorized: bool,
}

pub(crate) struct Challenge {
    pub(crate) id: String,
    /// `tkauth-01` or `http-01`.
    pub(crate) kind: &'static str,
    /// The http-01 token (RFC 8555 §8.3), fixed for the challenge's life.
    pub(crate) token: Option<String>,
    pub(crate) status: Status,
    pub(crate) validated: Option<OffsetDateTime>,
    pub(crate) error: Option<Value>,
}

pub(crate) struct IssuedCert {
    pub(crate) account: String,
    pub(crate) chain_pem: String,
    pub(crate) leaf_der: Vec<u8>,
    pub(crate) serial_hex: String,
    pub(crate) revoked: Option<u8>,
    /// When it was revoked: the CRL entry's revocationDate.
    pub(crate) revoked_at: Option<OffsetDateTime>,
    /// The RFC 9773 certificate identifier.
    pub(crate) cert_id: String,
    /// The identifiers of the order it was issued for.
    pub(crate) identifiers: Vec<Identifier>,
    /// When it was issued (notBefore is backdated).
    pub(crate) issued_at: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    /// The order whose `replaces` named it, if any.
    pub(crate) replaced_by: Option<String>,
    /// The STAR order it was issued for (RFC 8739): such a certificate cannot be revoked.
    pub(crate) star_order: Option<String>,
}

// === JSON ===

pub(crate) fn account_json(acct: &Account, id: &str, inner: &Inner) -> Value {
    json!({
        "status": if acct.deactivated { "deactivated" } else { "valid" },
        "contact": acct.contact,
        "orders": inner.url(&format!("/acme/acct/{id}/orders")).as_str(),
    })
}

pub(crate) fn order_json(order: &Order, id: &str, inner: &Inner) -> Value {
    let mut v = json!({
        "status": order.status.as_str(),
        "expires": rfc3339(order.expires),
        "identifiers": order.identifiers.iter().map(identifier_json).collect::<Vec<_>>(),
        "authorizations": order.authzs.iter()
            .map(|a| inner.url(&format!("/acme/authz/{a}")).to_string()).collect::<Vec<_>>(),
        "finalize": inner.url(&format!("/acme/finalize/{id}")).as_str(),
    });
    if let Some(na) = order.not_after {
        v["notAfter"] = json!(rfc3339(na));
    }
    if let Some(r) = &order.replaces {
        v["replaces"] = json!(r);
    }
    if let Some(cert) = &order.cert {
        v["certificate"] = json!(inner.url(&format!("/acme/cert/{cert}")).as_str());
    }
    if let Some(star) = &order.star {
        v["auto-renewal"] = star.request_json();
        if !star.certs.is_empty() {
            v["star-certificate"] = json!(inner.url(&format!("/acme/star/{id}")).as_str());
        }
    }
    if let Some(err) = &order.error {
        v["error"] = err.clone();
    }
    v
}

pub(crate) fn authz_json(authz: &Authz, inner: &Inner) -> Value {
    json!({
        "status": authz.status.as_str(),
        "expires": rfc3339(authz.expires),
        "identifier": identifier_json(&authz.identifier),
        "challenges": [challenge_json(&authz.challenge, inner)],
    })
}

pub(crate) fn challenge_json(ch: &Challenge, inner: &Inner) -> Value {
    let mut v = json!({
        "type": ch.kind,
        "url": inner.url(&format!("/acme/chall/{}", ch.id)).as_str(),
        "status": ch.status.as_str(),
    });
    if ch.kind == "tkauth-01" {
        v["tkauth-type"] = json!("atc");
        v["token-authority"] = json!(inner.base.as_str());
    }
    if let Some(token) = &ch.token {
        v["token"] = json!(token);
    }
    if let Some(t) = ch.validated {
        v["validated"] = json!(rfc3339(t));
    }
    if let Some(err) = &ch.error {
        v["error"] = err.clone();
    }
    v
}

fn identifier_json(id: &Identifier) -> Value {
    json!({"type": id.kind, "value": id.value})
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A random URL-safe id of 128 bits.
pub(crate) fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}
