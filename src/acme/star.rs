//! STAR ([RFC 8739](https://www.rfc-editor.org/rfc/rfc8739)): fetching the current
//! short-term certificate of an auto-renewal order and cancelling it; pre-authorization
//! (`newAuthz`, [RFC 8555 §7.4.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.1));
//! and the CAA record value that binds issuance to an account
//! ([RFC 8657](https://www.rfc-editor.org/rfc/rfc8657)).
//!
//! Place a STAR order with [`crate::acme::NewOrder::auto_renewal`], answer its
//! authorizations and finalize as usual; the order then stays `valid` and its
//! [`crate::acme::OrderState::star_certificate`] URL serves whichever certificate is current.
//! The STAR problems are recognisable by name with [`crate::acme::Problem::is_acme`] (the
//! `AUTO_RENEWAL_*` constants).

use serde_json::json;
use time::OffsetDateTime;

use crate::acme::{
    account::Account,
    client::{Client, Payload},
    error::AcmeError,
    response::Response,
    transport::{Endpoint, send},
    types::{Authorization, Identifier, Order},
};

/// `autoRenewalCanceled`: the star-certificate of a canceled order (RFC 8739 §3.1.2).
pub const AUTO_RENEWAL_CANCELED: &str = "autoRenewalCanceled";
/// `autoRenewalExpired`: the order's end-date has passed.
pub const AUTO_RENEWAL_EXPIRED: &str = "autoRenewalExpired";
/// `autoRenewalCancellationInvalid`: cancelling an order that is not a valid STAR order.
pub const AUTO_RENEWAL_CANCELLATION_INVALID: &str = "autoRenewalCancellationInvalid";
/// `autoRenewalRevocationNotSupported`: revokeCert of a STAR certificate.
pub const AUTO_RENEWAL_REVOCATION_NOT_SUPPORTED: &str = "autoRenewalRevocationNotSupported";

/// The current certificate of a STAR order, as the star-certificate URL served it
/// ([RFC 8739 §3.3](https://www.rfc-editor.org/rfc/rfc8739#section-3.3)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StarCertificate {
    /// `application/pem-certificate-chain`: leaf first, then issuers.
    pub pem: String,
    /// The `Cert-Not-Before` header: the leaf's notBefore.
    pub not_before: Option<OffsetDateTime>,
    /// The `Cert-Not-After` header: the leaf's notAfter.
    pub not_after: Option<OffsetDateTime>,
    /// The answer's `Cache-Control`, if any (an unauthenticated GET is cacheable, §4.3).
    pub cache_control: Option<String>,
}

impl StarCertificate {
    fn from_response(resp: &Response) -> Result<Self, AcmeError> {
        let pem = String::from_utf8(resp.body.to_vec()).map_err(|_| {
            AcmeError::Protocol(format!("STAR certificate from {} is not UTF-8", resp.url))
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Protocol(format!(
                "no PEM certificate at {}",
                resp.url
            )));
        }
        let header = |name: &str| {
            resp.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let date = |name: &str| -> Result<Option<OffsetDateTime>, AcmeError> {
            header(name)
                .map(|v| {
                    httpdate::parse_http_date(&v)
                        .map(OffsetDateTime::from)
                        .map_err(|_| {
                            AcmeError::Protocol(format!(
                                "{name} {v:?} from {} is not an HTTP-date",
                                resp.url
                            ))
                        })
                })
                .transpose()
        };
        Ok(Self {
            not_before: date("cert-not-before")?,
            not_after: date("cert-not-after")?,
            cache_control: header("cache-control"),
            pem,
        })
    }
}

impl Account {
    /// Fetches the current certificate of a STAR order by POST-as-GET of its
    /// `star-certificate` URL. A canceled order gives [`AUTO_RENEWAL_CANCELED`], one past its
    /// end-date [`AUTO_RENEWAL_EXPIRED`] (as [`AcmeError::Problem`]).
    pub async fn star_certificate(&self, url: &str) -> Result<StarCertificate, AcmeError> {
        let resp = self
            .post(
                Endpoint::StarCertificate,
                url,
                Payload::Empty,
                Some("application/pem-certificate-chain"),
            )
            .await?;
        StarCertificate::from_response(&resp)
    }

    /// Cancels a STAR order's auto-renewal: POST `{"status": "canceled"}` to the order URL
    /// ([RFC 8739 §3.1.2](https://www.rfc-editor.org/rfc/rfc8739#section-3.1.2)). Returns the
    /// order as the server answered (`canceled`); a non-STAR or not-`valid` order gives
    /// [`AUTO_RENEWAL_CANCELLATION_INVALID`].
    pub async fn cancel_star_order(&self, order_url: &str) -> Result<Order, AcmeError> {
        let payload = json!({"status": "canceled"});
        let resp = self
            .post(Endpoint::Order, order_url, Payload::Json(&payload), None)
            .await?;
        Ok(Order {
            url: order_url.to_owned(),
            state: resp.json()?,
        })
    }

    /// Pre-authorizes an identifier through `newAuthz`
    /// ([RFC 8555 §7.4.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.1)): returns the
    /// authorization URL and object, to be answered like an order's
    /// ([`Account::respond_challenge`], [`Account::poll_authorization`]). `Ok(None)` when
    /// the directory offers no `newAuthz`.
    pub async fn new_authorization(
        &self,
        identifier: &Identifier,
    ) -> Result<Option<(String, Authorization)>, AcmeError> {
        let Some(url) = self.client().directory().new_authz.clone() else {
            return Ok(None);
        };
        let payload = json!({"identifier": identifier});
        let resp = self
            .post(Endpoint::NewAuthz, &url, Payload::Json(&payload), None)
            .await?;
        Ok(Some((resp.location()?, resp.json()?)))
    }

    /// POSTs a JSON payload of the caller's to `url`, signed by this account, and returns
    /// the JSON answer: for extensions this client does not model, and for tests that send
    /// what a typed request cannot express. A problem answer is [`AcmeError::Problem`].
    pub async fn post_json(
        &self,
        endpoint: Endpoint,
        url: &str,
        payload: &serde_json::Value,
    ) -> Result<serde_json::Value, AcmeError> {
        self.post(endpoint, url, Payload::Json(payload), None)
            .await?
            .json()
    }

    /// The CAA `issue` record value that lets only this account obtain certificates from the
    /// CA ([RFC 8657](https://www.rfc-editor.org/rfc/rfc8657)), for the directory's first
    /// `caaIdentities` entry; `None` when the directory names none. See
    /// [`caa_record_value`].
    pub fn caa_record_value(&self, validation_methods: &[&str]) -> Option<String> {
        let identity = self.client().directory().meta.caa_identities.first()?;
        Some(caa_record_value(identity, self.url(), validation_methods))
    }
}

impl Client {
    /// Fetches a STAR order's current certificate by unauthenticated GET, which works only
    /// when the order negotiated `allow-certificate-get`
    /// ([RFC 8739 §3.4](https://www.rfc-editor.org/rfc/rfc8739#section-3.4)).
    pub async fn star_certificate_get(&self, url: &str) -> Result<StarCertificate, AcmeError> {
        let resp = self
            .observe(
                Endpoint::StarCertificate,
                "GET",
                send(url, "GET", self.http().get(url)),
            )
            .await?;
        if !resp.status.is_success() {
            return Err(resp.into_error());
        }
        StarCertificate::from_response(&resp)
    }
}

/// The RFC 8657 CAA `issue` value `<caa identity>; accounturi=<account URL>;
/// validationmethods=<m1>,<m2>`; without methods the `validationmethods` parameter is left
/// out (any method).
pub fn caa_record_value(
    caa_identity: &str,
    account_url: &str,
    validation_methods: &[&str],
) -> String {
    let mut v = format!("{caa_identity}; accounturi={account_url}");
    if !validation_methods.is_empty() {
        v.push_str("; validationmethods=");
        v.push_str(&validation_methods.join(","));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::types::{AutoRenewal, Directory, NewOrder, OrderState, OrderStatus, Problem};

    #[test]
    fn caa_value_per_rfc_8657() {
        assert_eq!(
            caa_record_value(
                "ca.example",
                "https://ca.example/acme/acct/1",
                &["tkauth-01", "http-01"]
            ),
            "ca.example; accounturi=https://ca.example/acme/acct/1; \
             validationmethods=tkauth-01,http-01"
        );
        assert_eq!(
            caa_record_value("ca.example", "https://ca.example/a/2", &[]),
            "ca.example; accounturi=https://ca.example/a/2"
        );
    }

    #[test]
    fn star_wire_shapes() {
        let order = NewOrder {
            identifiers: vec![Identifier::new("TNAuthList", "MAigBhYEODE4SA")],
            auto_renewal: Some(AutoRenewal {
                lifetime_adjust: Some(2),
                allow_certificate_get: Some(true),
                ..AutoRenewal::new(
                    time::macros::datetime!(2030-01-02 03:04:05 UTC),
                    std::time::Duration::from_secs(60),
                )
            }),
            ..NewOrder::default()
        };
        assert_eq!(
            serde_json::to_value(&order).unwrap(),
            json!({
                "identifiers": [{"type": "TNAuthList", "value": "MAigBhYEODE4SA"}],
                "auto-renewal": {"end-date": "2030-01-02T03:04:05Z", "lifetime": 60,
                    "lifetime-adjust": 2, "allow-certificate-get": true}
            })
        );
        let state: OrderState = serde_json::from_value(json!({
            "status": "canceled", "finalize": "f", "star-certificate": "https://ca/star/1",
            "auto-renewal": {"end-date": "2030-01-02T03:04:05Z", "lifetime": 60}
        }))
        .unwrap();
        assert_eq!(state.status, OrderStatus::Canceled);
        assert_eq!(state.star_certificate.as_deref(), Some("https://ca/star/1"));
        assert_eq!(state.auto_renewal.unwrap().lifetime, 60);
        let d: Directory = serde_json::from_value(json!({
            "newNonce": "n", "newAccount": "a", "newOrder": "o", "newAuthz": "z",
            "revokeCert": "r", "keyChange": "k",
            "meta": {"caaIdentities": ["ca.example"], "auto-renewal":
                {"min-lifetime": 3600, "max-duration": 86400, "allow-certificate-get": true}}
        }))
        .unwrap();
        let meta = d.meta.auto_renewal.unwrap();
        assert_eq!((meta.min_lifetime, meta.max_duration), (3600, 86400));
        assert!(meta.allow_certificate_get);
        assert_eq!(d.new_authz.as_deref(), Some("z"));
        assert_eq!(d.meta.caa_identities, ["ca.example"]);
    }

    #[test]
    fn star_problems_by_name() {
        for name in [
            AUTO_RENEWAL_CANCELED,
            AUTO_RENEWAL_EXPIRED,
            AUTO_RENEWAL_CANCELLATION_INVALID,
            AUTO_RENEWAL_REVOCATION_NOT_SUPPORTED,
        ] {
            let p = Problem {
                r#type: Some(format!("urn:ietf:params:acme:error:{name}")),
                ..Problem::default()
            };
            assert!(p.is_acme(name));
            let e = AcmeError::Problem {
                problem: Box::new(p),
                retry_after: None,
            };
            assert!(e.problem().is_some_and(|p| p.is_acme(name)));
            assert!(!e.is_retryable(), "{name} is final");
        }
    }
}
