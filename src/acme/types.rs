//! Wire types of RFC 8555: directory, account, order, authorization, challenge, problem.
//!
//! Identifier types and challenge types are plain strings on purpose: this module carries
//! `dns` and `TNAuthList` alike without knowing either.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::acme::key::ExternalAccountKey;

/// The directory object ([RFC 8555 §7.1.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1)).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// URL that hands out fresh anti-replay nonces (HEAD).
    pub new_nonce: String,
    /// URL to create or look up an account.
    pub new_account: String,
    /// URL to place a new order.
    pub new_order: String,
    /// URL for pre-authorization, if the server offers it.
    #[serde(default)]
    pub new_authz: Option<String>,
    /// URL to revoke a certificate.
    pub revoke_cert: String,
    /// URL to roll over the account key.
    pub key_change: String,
    /// ACME Renewal Information endpoint ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)),
    /// if offered.
    #[serde(default)]
    pub renewal_info: Option<String>,
    /// Optional metadata.
    #[serde(default)]
    pub meta: DirectoryMeta,
}

/// The directory's `meta` object ([RFC 8555 §7.1.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1)).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    /// URL of the current terms of service.
    #[serde(default)]
    pub terms_of_service: Option<String>,
    /// URL of a website about the CA.
    #[serde(default)]
    pub website: Option<String>,
    /// CAA issuer domains that refer to this CA.
    #[serde(default)]
    pub caa_identities: Vec<String>,
    /// Whether newAccount requires an external account binding
    /// ([§7.3.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4)).
    #[serde(default)]
    pub external_account_required: bool,
    /// STAR limits ([RFC 8739 §3.1.1](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.1)):
    /// present when the server issues short-term, automatically renewed certificates.
    #[serde(default, rename = "auto-renewal")]
    pub auto_renewal: Option<AutoRenewalMeta>,
}

/// The directory's `meta.auto-renewal` ([RFC 8739 §3.1.1](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.1)).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct AutoRenewalMeta {
    /// The shortest `lifetime` the server accepts, in seconds.
    #[serde(default)]
    pub min_lifetime: u64,
    /// The longest duration (end-date minus start-date) of a STAR order, in seconds.
    #[serde(default)]
    pub max_duration: u64,
    /// Whether orders may ask for `allow-certificate-get`.
    #[serde(default)]
    pub allow_certificate_get: bool,
}

/// The `auto-renewal` object of a STAR order
/// ([RFC 8739 §3.1.1](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.1)), as sent in
/// newOrder and echoed in the order.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct AutoRenewal {
    /// Earliest notBefore of the first certificate; the server's "now" when absent.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_date: Option<OffsetDateTime>,
    /// Latest notAfter of the last certificate.
    #[serde(with = "time::serde::rfc3339")]
    pub end_date: OffsetDateTime,
    /// Validity of each short-term certificate, in seconds.
    pub lifetime: u64,
    /// Seconds each certificate's notBefore is moved back (clock skew), 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_adjust: Option<u64>,
    /// Ask that the star-certificate URL also answer unauthenticated GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_certificate_get: Option<bool>,
}

impl AutoRenewal {
    /// Certificates of `lifetime` until `end_date`, starting now, no adjustment, no GET.
    pub fn new(end_date: OffsetDateTime, lifetime: std::time::Duration) -> Self {
        Self {
            start_date: None,
            end_date,
            lifetime: lifetime.as_secs(),
            lifetime_adjust: None,
            allow_certificate_get: None,
        }
    }
}

/// What to send to `newAccount` ([RFC 8555 §7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3)).
#[derive(Clone, Debug, Default)]
pub struct NewAccount {
    /// Contact URLs, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// Whether the caller agrees to the directory's terms of service.
    pub terms_of_service_agreed: bool,
    /// External account binding, required when `meta.externalAccountRequired` is true.
    pub external_account_binding: Option<ExternalAccountKey>,
}

/// Account status ([RFC 8555 §7.1.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.2)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Deactivated by the client.
    Deactivated,
    /// Revoked by the server.
    Revoked,
    /// Usable.
    Valid,
}

/// An account object as the server reports it
/// ([RFC 8555 §7.1.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.2)).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AccountState {
    /// `valid`, `deactivated` or `revoked`.
    pub status: AccountStatus,
    /// Contact URLs.
    #[serde(default)]
    pub contact: Vec<String>,
}

/// An identifier ([RFC 8555 §7.1.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3)):
/// `dns`, `ip`, `TNAuthList`, ... The type is not interpreted here.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct Identifier {
    /// Identifier type, e.g. `dns`.
    pub r#type: String,
    /// Identifier value, e.g. `example.com`.
    pub value: String,
}

impl Identifier {
    /// An identifier of any type.
    pub fn new(r#type: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            r#type: r#type.into(),
            value: value.into(),
        }
    }

    /// A `dns` identifier.
    pub fn dns(name: impl Into<String>) -> Self {
        Self::new("dns", name)
    }
}

/// What to send to `newOrder` ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    /// The identifiers the certificate is for.
    pub identifiers: Vec<Identifier>,
    /// Requested `notBefore`.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_before: Option<OffsetDateTime>,
    /// Requested `notAfter`.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_after: Option<OffsetDateTime>,
    /// ARI: the certificate this order replaces
    /// ([RFC 9773 §5](https://www.rfc-editor.org/rfc/rfc9773#section-5)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// STAR: makes this an auto-renewal order
    /// ([RFC 8739 §3.1.1](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.1)); leave
    /// `not_before` and `not_after` unset with it.
    #[serde(rename = "auto-renewal", skip_serializing_if = "Option::is_none")]
    pub auto_renewal: Option<AutoRenewal>,
}

/// An order and the URL it lives at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The order URL (from `Location` on creation).
    pub url: String,
    /// The order object as last seen.
    pub state: OrderState,
}

/// The order object ([RFC 8555 §7.1.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3)).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    /// Order status.
    pub status: OrderStatus,
    /// When the server gives up on the order.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires: Option<OffsetDateTime>,
    /// The identifiers ordered.
    #[serde(default)]
    pub identifiers: Vec<Identifier>,
    /// Requested `notBefore`, echoed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// Requested `notAfter`, echoed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// Authorization URLs.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// Where to POST the CSR.
    pub finalize: String,
    /// Certificate URL, once `valid`.
    #[serde(default)]
    pub certificate: Option<String>,
    /// STAR: where the current short-term certificate is, once `valid`
    /// ([RFC 8739 §3.1.1](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.1)).
    #[serde(default, rename = "star-certificate")]
    pub star_certificate: Option<String>,
    /// STAR: the order's `auto-renewal`, as the server echoes it.
    #[serde(default, rename = "auto-renewal")]
    pub auto_renewal: Option<AutoRenewal>,
    /// Why the order failed, if it did.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// Order status ([RFC 8555 §7.1.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// A STAR order whose auto-renewal the client canceled
    /// ([RFC 8739 §3.1.2](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.2)).
    Canceled,
    /// Failed; see the order's `error`.
    Invalid,
    /// Authorizations are outstanding.
    Pending,
    /// Finalized; the certificate is being issued.
    Processing,
    /// All authorizations are valid; ready to finalize.
    Ready,
    /// Issued; `certificate` is set (`star-certificate` for a STAR order, which stays
    /// `valid` while certificates keep being issued).
    Valid,
}

/// The authorization object ([RFC 8555 §7.1.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.4)).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The identifier being authorized.
    pub identifier: Identifier,
    /// Authorization status.
    pub status: AuthorizationStatus,
    /// When the authorization expires.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires: Option<OffsetDateTime>,
    /// The challenges offered (or the one that succeeded).
    #[serde(default)]
    pub challenges: Vec<Challenge>,
    /// Whether this is for a wildcard name.
    #[serde(default)]
    pub wildcard: bool,
}

/// Authorization status ([RFC 8555 §7.1.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationStatus {
    /// Deactivated by the client.
    Deactivated,
    /// Expired before or after validation.
    Expired,
    /// A challenge failed.
    Invalid,
    /// Waiting for a challenge to succeed.
    Pending,
    /// Revoked by the server.
    Revoked,
    /// Validated.
    Valid,
}

/// A challenge ([RFC 8555 §8](https://www.rfc-editor.org/rfc/rfc8555#section-8)). Fields
/// specific to a challenge type (`tkauth-type`, `token-authority` of
/// [RFC 9447](https://www.rfc-editor.org/rfc/rfc9447)) stay in [`Challenge::extra`].
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Challenge {
    /// Challenge type, e.g. `http-01`, `tkauth-01`.
    pub r#type: String,
    /// Where to POST the response.
    pub url: String,
    /// Challenge status.
    pub status: ChallengeStatus,
    /// Token, for types that use one (not required: tkauth-01 servers may omit it).
    #[serde(default)]
    pub token: Option<String>,
    /// When the server validated it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub validated: Option<OffsetDateTime>,
    /// Why validation failed, if it did.
    #[serde(default)]
    pub error: Option<Problem>,
    /// Every other field, untouched.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Challenge status ([RFC 8555 §7.1.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    /// Validation failed.
    Invalid,
    /// Waiting for the client's response.
    Pending,
    /// The server is validating.
    Processing,
    /// Validated.
    Valid,
}

/// A downloaded certificate chain
/// ([RFC 8555 §7.4.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateChain {
    /// `application/pem-certificate-chain`: leaf first, then issuers.
    pub pem: String,
    /// URLs of alternate chains (`Link: <..>;rel="alternate"`), absolute.
    pub alternates: Vec<String>,
}

/// A problem document ([RFC 7807](https://www.rfc-editor.org/rfc/rfc7807), ACME types in
/// [RFC 8555 §6.7](https://www.rfc-editor.org/rfc/rfc8555#section-6.7)).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// Problem type URI, e.g. `urn:ietf:params:acme:error:badNonce`.
    #[serde(default)]
    pub r#type: Option<String>,
    /// Human-readable explanation.
    #[serde(default)]
    pub detail: Option<String>,
    /// HTTP status the server sent with it.
    #[serde(default)]
    pub status: Option<u16>,
    /// Per-identifier problems ([§6.7.1](https://www.rfc-editor.org/rfc/rfc8555#section-6.7.1)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Problem>,
    /// The identifier a subproblem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
}

impl Problem {
    /// Whether the type is the ACME error `urn:ietf:params:acme:error:<name>`.
    pub fn is_acme(&self, name: &str) -> bool {
        self.r#type
            .as_deref()
            .and_then(|t| t.strip_prefix(ACME_ERROR_PREFIX))
            .is_some_and(|t| t == name)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.r#type.as_deref().unwrap_or("about:blank");
        match &self.detail {
            Some(detail) => write!(f, "{kind}: {detail}")?,
            None => f.write_str(kind)?,
        }
        for sub in &self.subproblems {
            write!(f, "; {sub}")?;
            if let Some(id) = &sub.identifier {
                write!(f, " ({} {})", id.r#type, id.value)?;
            }
        }
        Ok(())
    }
}

/// Prefix of every ACME error type.
pub(crate) const ACME_ERROR_PREFIX: &str = "urn:ietf:params:acme:error:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_keeps_unknown_fields() {
        let json = r#"{"type":"tkauth-01","tkauth-type":"atc","token-authority":"https://ta.example",
            "url":"https://ca.example/chall/1","status":"pending"}"#;
        let ch: Challenge = serde_json::from_str(json).unwrap();
        assert_eq!(ch.r#type, "tkauth-01");
        assert_eq!(ch.token, None);
        assert_eq!(ch.extra["tkauth-type"], "atc");
        assert_eq!(ch.extra["token-authority"], "https://ta.example");
        assert!(!ch.extra.contains_key("url"));
    }

    #[test]
    fn new_order_serializes_camel_case_and_skips_absent() {
        let order = NewOrder {
            identifiers: vec![Identifier::new("TNAuthList", "MAigBhYEODE4SA")],
            not_after: Some(time::macros::datetime!(2030-01-02 03:04:05 UTC)),
            ..NewOrder::default()
        };
        let v = serde_json::to_value(&order).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "identifiers": [{"type": "TNAuthList", "value": "MAigBhYEODE4SA"}],
                "notAfter": "2030-01-02T03:04:05Z"
            })
        );
    }

    #[test]
    fn problem_display_and_acme_type() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no",
                "subproblems":[{"type":"urn:ietf:params:acme:error:caa","detail":"caa",
                "identifier":{"type":"dns","value":"a.test"}}]}"#,
        )
        .unwrap();
        assert!(p.is_acme("rejectedIdentifier"));
        assert!(!p.is_acme("rejected"));
        assert_eq!(
            p.to_string(),
            "urn:ietf:params:acme:error:rejectedIdentifier: no; \
             urn:ietf:params:acme:error:caa: caa (dns a.test)"
        );
    }

    #[test]
    fn directory_optional_fields() {
        let d: Directory = serde_json::from_str(
            r#"{"newNonce":"n","newAccount":"a","newOrder":"o","revokeCert":"r",
                "keyChange":"k","meta":{"externalAccountRequired":true,"profiles":{}}}"#,
        )
        .unwrap();
        assert!(d.meta.external_account_required);
        assert_eq!(d.renewal_info, None);
    }
}
