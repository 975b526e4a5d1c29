//! An ACME ([RFC 8555](https://www.rfc-editor.org/rfc/rfc8555)) client on reqwest + josekit.
//!
//! The module knows the protocol and nothing about what the certificates are for: identifier
//! types and challenge response payloads are plain strings and JSON chosen by the caller, so
//! the same client drives `dns`/`http-01` against Pebble and `TNAuthList`/`tkauth-01` against
//! an STI-CA.
//!
//! Shape (after instant-acme): a cheap-to-clone [`Client`] holds the directory, the HTTP client
//! and a pool of anti-replay nonces; an [`Account`] pairs a client with an [`AccountKey`] and
//! the account URL, and carries every `kid`-signed operation. Every request body is a flattened
//! JWS signed with ES256 ([RFC 8555 §6.2](https://www.rfc-editor.org/rfc/rfc8555#section-6.2));
//! `badNonce` rejections are retried with the nonce from the error response, bounded by
//! [`ClientSettings::max_bad_nonce_retries`]. Polling follows a [`RetryPolicy`] and honours
//! `Retry-After`.
//!
//! ACME Renewal Information ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)):
//! [`CertificateId`] names a certificate, [`Client::renewal_info`] fetches the window the
//! server suggests for it, and [`NewOrder::replaces`] tells the server which certificate an
//! order replaces ([`AcmeError::is_already_replaced`] when that one was replaced already).
//!
//! STAR ([RFC 8739](https://www.rfc-editor.org/rfc/rfc8739)): [`NewOrder::auto_renewal`]
//! places a short-term, automatically renewed order; [`Account::star_certificate`] (or
//! [`Client::star_certificate_get`]) fetches the current certificate with its
//! `Cert-Not-Before`/`Cert-Not-After`, [`Account::cancel_star_order`] ends it. Pre-authorization:
//! [`Account::new_authorization`] (`newAuthz`). RFC 8657: [`caa_record_value`].
//!
//! Metrics without a metrics dependency: [`ClientSettings::observer`] takes a
//! [`RequestObserver`], told the [`Endpoint`], HTTP status and duration of every exchange.
//!
//! Logging: each request opens a `tracing` span with method and URL and records the response
//! status; JWS bodies, keys and certificates are never logged.

mod account;
mod client;
mod error;
mod jws;
mod key;
mod renewal_info;
mod response;
mod retry;
mod star;
mod transport;
mod types;

pub use account::Account;
pub use client::{Client, ClientSettings};
pub use error::AcmeError;
pub use key::{AccountKey, ExternalAccountKey};
pub use renewal_info::{CertificateId, RenewalInfo, SuggestedWindow};
pub use response::{ResponseReading, read_response};
pub use retry::RetryPolicy;
pub use star::{
    AUTO_RENEWAL_CANCELED, AUTO_RENEWAL_CANCELLATION_INVALID, AUTO_RENEWAL_EXPIRED,
    AUTO_RENEWAL_REVOCATION_NOT_SUPPORTED, StarCertificate, caa_record_value,
};
pub use transport::{Endpoint, RequestObserver};
pub use types::{
    AccountState, AccountStatus, Authorization, AuthorizationStatus, AutoRenewal, AutoRenewalMeta,
    CertificateChain, Challenge, ChallengeStatus, Directory, DirectoryMeta, Identifier, NewAccount,
    NewOrder, Order, OrderState, OrderStatus, Problem,
};
