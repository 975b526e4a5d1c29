//! The record of an in-flight order, so another replica can finish it after a crash: which
//! CA and account placed it, its URL, and the CSR and key it will be finalized with.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

/// An order placed but not yet downloaded. Holds a private key: the store seals it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderProgress {
    /// Configured name of the CA.
    pub ca: String,
    /// The account that placed the order.
    pub account_url: String,
    /// The order URL.
    pub order_url: String,
    /// The CSR to finalize with (base64 DER).
    csr: String,
    /// PKCS#8 DER of the broker-made key (base64), if the broker made it.
    key: Option<String>,
}

impl std::fmt::Debug for OrderProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProgress")
            .field("ca", &self.ca)
            .field("order_url", &self.order_url)
            .finish_non_exhaustive()
    }
}

impl OrderProgress {
    /// A record of `order_url`.
    pub fn new(
        ca: &str,
        account_url: &str,
        order_url: &str,
        csr: &[u8],
        key: Option<&[u8]>,
    ) -> Self {
        Self {
            ca: ca.to_owned(),
            account_url: account_url.to_owned(),
            order_url: order_url.to_owned(),
            csr: STANDARD.encode(csr),
            key: key.map(|k| STANDARD.encode(k)),
        }
    }

    /// JSON bytes for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a record; `None` for anything unreadable (then a new order is placed).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The CSR, DER.
    pub fn csr(&self) -> Option<Vec<u8>> {
        STANDARD.decode(&self.csr).ok()
    }

    /// The key, PKCS#8 DER, when the broker made it.
    pub fn key(&self) -> Option<Vec<u8>> {
        self.key.as_ref().and_then(|k| STANDARD.decode(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_redacted_debug() {
        let p = OrderProgress::new(
            "ca1",
            "https://a/acct/1",
            "https://a/order/2",
            b"csr",
            Some(b"secret-key"),
        );
        let back = OrderProgress::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.csr().unwrap(), b"csr");
        assert_eq!(back.key().unwrap(), b"secret-key");
        assert!(!format!("{p:?}").contains(&STANDARD.encode(b"secret-key")));
        assert!(OrderProgress::from_bytes(b"garbage").is_none());
    }
}
