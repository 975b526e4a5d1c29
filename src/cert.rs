//! The domain every layer shares, on the ground floor: the record of an issued certificate,
//! how a caller names one, and what a certificate is for. `api`, `broker`, `store` and `ca`
//! all speak these types, so they live here rather than in any of them.
//!
//! Imports nothing of the project except the TNAuthList data type from [`crate::shaken`],
//! itself a leaf (it imports nothing of the project): the SHAKEN identifiers are that type.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::shaken::{TnAuthList, TnEntry};

/// One issued certificate as the broker keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// The cache key this certificate answers.
    pub cache_key: String,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// DER chain, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER of the leaf key when the broker generated it. Secret.
    pub private_key_pkcs8: Option<Vec<u8>>,
    /// Leaf notBefore, Unix seconds.
    pub not_before: i64,
    /// Leaf notAfter, Unix seconds.
    pub not_after: i64,
    /// Leaf serial, lowercase hex.
    pub serial_hex: String,
    /// SHA-256 of the leaf DER, lowercase hex.
    pub fingerprint_hex: String,
    /// Configured name of the CA that issued it.
    pub issuer_ca: String,
    /// The account at that CA that ordered it (needed to revoke).
    pub issuer_account: String,
    /// When the broker obtained it, Unix seconds. Renewal measures the lifetime from here,
    /// since CAs backdate notBefore (the devca by five minutes, some CAs by an hour).
    #[serde(default)]
    pub issued_at: i64,
    /// The STAR order (RFC 8739) this certificate came from, when it is a short-term one:
    /// the broker fetches its successor there, and cancels it on revocation. Boxed: most
    /// certificates have none, and every cached record would carry its size inline.
    #[serde(default)]
    pub star: Option<Box<StarOrder>>,
}

impl fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRecord")
            .field("cache_key", &self.cache_key)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("issuer_ca", &self.issuer_ca)
            .field(
                "private_key_pkcs8",
                &self.private_key_pkcs8.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl CertRecord {
    /// Seconds of validity left at `now` (Unix seconds); negative once expired.
    pub fn remaining_secs(&self, now: i64) -> i64 {
        self.not_after - now
    }
}

/// A running STAR order, as the certificate record keeps it (so every replica, and a
/// restarted fleet, continues it instead of ordering anew).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StarOrder {
    /// The order URL (cancellation goes there).
    pub order_url: String,
    /// Its `star-certificate` URL, which serves the current short-term certificate.
    pub certificate_url: String,
    /// The order's end-date, Unix seconds: no certificate is valid past it.
    pub end_date: i64,
    /// Validity of each short-term certificate, seconds.
    pub lifetime_secs: u64,
}

impl StarOrder {
    /// When to fetch the successor of the order's certificate that expires at `not_after`
    /// (Unix seconds), or `None` when that is the order's last (the next needs a new order).
    /// The CA issues the next certificate at the latest halfway through the current one's
    /// lifetime; this is a margin after that (a second for the dates' truncation, and a
    /// sixteenth of the lifetime, at least a second, for the CA's own delay), and always
    /// before `not_after`.
    pub fn successor_due(&self, not_after: i64) -> Option<i64> {
        if not_after >= self.end_date || self.lifetime_secs == 0 {
            return None;
        }
        let lifetime = i64::try_from(self.lifetime_secs).unwrap_or(i64::MAX / 4);
        let halfway = not_after - lifetime + lifetime / 2 + lifetime % 2;
        let margin = 1 + (lifetime / 16).max(1);
        Some((halfway + margin).min(not_after - 1))
    }
}

/// How a caller names a certificate it wants revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSelector {
    /// Leaf serial, lowercase hex.
    Serial(String),
    /// SHA-256 of the leaf DER, lowercase hex.
    Fingerprint(String),
}

impl fmt::Display for CertSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial(s) => write!(f, "serial {s}"),
            Self::Fingerprint(s) => write!(f, "fingerprint {s}"),
        }
    }
}

/// What a certificate is for: exactly one kind of identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifiers {
    /// SHAKEN identifiers (RFC 8226).
    TnAuthList(TnAuthList),
    /// Ordinary DNS names, lowercased, sorted and de-duplicated.
    Dns(Vec<String>),
}

/// A DNS name (or the list of them) is not acceptable; `field` names the request field
/// (`dns_names[i]`, or `dns_names` when the list is empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidIdentifier {
    /// Request field path, e.g. `dns_names[0]`.
    pub field: String,
    /// Why it is invalid.
    pub reason: String,
}

// === impl Identifiers ===

impl Identifiers {
    /// Validates DNS names (`dns_names[i]` names the bad one) into canonical form.
    pub fn dns(names: &[String]) -> Result<Self, InvalidIdentifier> {
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let field = format!("dns_names[{i}]");
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            validate_dns_name(&name).map_err(|reason| InvalidIdentifier { field, reason })?;
            out.push(name);
        }
        if out.is_empty() {
            return Err(InvalidIdentifier {
                field: "dns_names".into(),
                reason: "must not be empty".into(),
            });
        }
        out.sort();
        out.dedup();
        Ok(Self::Dns(out))
    }

    /// The identifiers as one canonical string, part of the cache key.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.write_canonical(&mut out);
        out
    }

    /// Appends [`Identifiers::canonical`] to `out`.
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            Self::TnAuthList(list) => {
                out.push_str("tnauthlist:");
                let der = list.to_der();
                let mut pair = [0u8; 2];
                for b in der {
                    // Two hex digits are ASCII; the buffer holds exactly them.
                    let _ = hex::encode_to_slice([b], &mut pair);
                    out.push(char::from(pair[0]));
                    out.push(char::from(pair[1]));
                }
            }
            Self::Dns(names) => {
                out.push_str("dns:");
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(name);
                }
            }
        }
    }

    /// The identifiers in words, for denials, the audit log and metrics labels (no secrets
    /// in them).
    pub fn describe(&self) -> String {
        match self {
            Self::TnAuthList(list) => {
                let parts: Vec<String> = list
                    .entries()
                    .iter()
                    .map(|e| match e {
                        TnEntry::Spc(s) => format!("spc {s}"),
                        TnEntry::One(tn) => format!("tn {tn}"),
                        TnEntry::Range { start, count } => format!("tn range {start}+{count}"),
                    })
                    .collect();
                parts.join(", ")
            }
            Self::Dns(names) => format!("dns {}", names.join(", ")),
        }
    }
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for label in name.split('.') {
        let ok_chars = label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if label.is_empty() || label.len() > 63 || !ok_chars {
            return Err(format!("label {label:?} is not a valid DNS label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}
