//! Proto messages to validated domain requests and back. Every rejection names the request
//! field it is about, in the proto's own field paths.

use std::time::Duration;

use prost_types::Timestamp;

use crate::{
    broker::{BrokerError, CacheStatus, CertRequest, RevokeRequest, Revoked},
    cert::{CertRecord, CertSelector, Identifiers},
    pb::{self, tn_auth_entry::Entry},
    shaken::{self, ShakenError, TnAuthList, TnEntry},
};

/// Pool used when a request names none.
pub(crate) const DEFAULT_POOL: &str = "default";

/// Bounds checked before any CA or STI-PA work (README, "Errors").
/// SPC length: ATIS-1000080 v005 asks for digits and uppercase letters; OCNs and SPIDs are
/// four characters; longer codes are allowed up to this many.
pub(crate) const SPC_LEN: std::ops::RangeInclusive<usize> = 4..=16;
/// Most entries in one TNAuthList.
pub(crate) const MAX_TN_ENTRIES: usize = 100;
/// Most numbers in one TNAuthList range.
pub(crate) const MAX_RANGE_COUNT: u32 = 1_000_000;
/// Most DNS names in one request.
pub(crate) const MAX_DNS_NAMES: usize = 100;
/// Longest pool name.
pub(crate) const MAX_POOL_LEN: usize = 64;
/// Longest `min_remaining_validity` (ten years).
pub(crate) const MAX_MIN_REMAINING: Duration = Duration::from_secs(3650 * 86_400);
/// Longest serial: RFC 5280 §4.1.2.2 allows 20 octets, 40 hex digits (colons and leading
/// zeros aside; the raw text may be up to [`MAX_SERIAL_TEXT`] characters).
pub(crate) const MAX_SERIAL_DIGITS: usize = 40;
const MAX_SERIAL_TEXT: usize = 64;
/// Longest fingerprint text: 64 hex digits with a colon between each pair.
const MAX_FINGERPRINT_TEXT: usize = 95;
/// Longest echo of a caller's value inside an error message.
const ECHO: usize = 64;

/// A caller's value, bounded for an error message.
fn echo(s: &str) -> String {
    super::status::bounded(s, ECHO)
}

/// Validates a GetCertificate request.
pub(crate) fn cert_request(req: pb::GetCertificateRequest) -> Result<CertRequest, BrokerError> {
    let identifiers = match (req.tn_auth_list.is_empty(), req.dns_names.is_empty()) {
        (true, true) => {
            return Err(BrokerError::invalid(
                "tn_auth_list",
                "set tn_auth_list or dns_names",
            ));
        }
        (false, false) => {
            return Err(BrokerError::invalid(
                "dns_names",
                "set tn_auth_list or dns_names, not both",
            ));
        }
        (false, true) => Identifiers::TnAuthList(tn_auth_list(&req.tn_auth_list)?),
        (true, false) => {
            if req.dns_names.len() > MAX_DNS_NAMES {
                return Err(BrokerError::invalid(
                    "dns_names",
                    format!("at most {MAX_DNS_NAMES} names, got {}", req.dns_names.len()),
                ));
            }
            Identifiers::dns(&req.dns_names)?
        }
    };

    if req.ca_certificate && !matches!(identifiers, Identifiers::TnAuthList(_)) {
        return Err(BrokerError::invalid(
            "ca_certificate",
            "CA (delegate-issuing) certificates are for tn_auth_list, not dns_names",
        ));
    }
    let (csr_der, csr_public_key) = if req.csr_der.is_empty() {
        (None, None)
    } else {
        let spki = check_csr(&req.csr_der, &identifiers, req.ca_certificate)?;
        (Some(req.csr_der), Some(spki))
    };

    let min_remaining = req
        .min_remaining_validity
        .map(|d| {
            let d = Duration::try_from(d).map_err(|_| {
                BrokerError::invalid(
                    "min_remaining_validity",
                    "must be a valid, non-negative duration",
                )
            })?;
            if d > MAX_MIN_REMAINING {
                return Err(BrokerError::invalid(
                    "min_remaining_validity",
                    format!(
                        "must be at most {} days",
                        MAX_MIN_REMAINING.as_secs() / 86_400
                    ),
                ));
            }
            Ok(d)
        })
        .transpose()?;

    let pool = if req.ca_pool.is_empty() {
        DEFAULT_POOL.to_owned()
    } else if req.ca_pool.chars().count() > MAX_POOL_LEN {
        return Err(BrokerError::invalid(
            "ca_pool",
            format!("must be at most {MAX_POOL_LEN} characters"),
        ));
    } else {
        req.ca_pool
    };
    Ok(CertRequest {
        identifiers,
        csr_der,
        csr_public_key,
        pool,
        min_remaining,
        force_renew: req.force_renew,
        ca: req.ca_certificate,
    })
}

fn tn_auth_list(entries: &[pb::TnAuthEntry]) -> Result<TnAuthList, BrokerError> {
    if entries.len() > MAX_TN_ENTRIES {
        return Err(BrokerError::invalid(
            "tn_auth_list",
            format!("at most {MAX_TN_ENTRIES} entries, got {}", entries.len()),
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let at = |err: ShakenError| match err {
            ShakenError::InvalidEntry { field, reason } => {
                BrokerError::invalid(format!("tn_auth_list[{i}].{field}"), reason)
            }
            other => BrokerError::invalid(format!("tn_auth_list[{i}]"), other),
        };
        let entry = match &e.entry {
            None => {
                return Err(BrokerError::invalid(
                    format!("tn_auth_list[{i}]"),
                    "entry is not set",
                ));
            }
            Some(Entry::Spc(spc)) => {
                check_spc(spc)
                    .map_err(|r| BrokerError::invalid(format!("tn_auth_list[{i}].spc"), r))?;
                TnEntry::spc(spc)
            }
            Some(Entry::Tn(tn)) => TnEntry::one(tn),
            Some(Entry::Range(r)) => TnEntry::range(&r.start, r.count).and_then(|e| {
                check_range(&r.start, r.count)
                    .map_err(|(field, reason)| ShakenError::InvalidEntry { field, reason })?;
                Ok(e)
            }),
        };
        out.push(entry.map_err(at)?);
    }
    let list = TnAuthList::new(out).map_err(|e| BrokerError::invalid("tn_auth_list", e))?;
    if list.spcs().next().is_none() {
        return Err(BrokerError::invalid(
            "tn_auth_list",
            "needs an spc entry: the STI-PA issues tokens per SPC, and a SHAKEN certificate \
             names its SPC",
        ));
    }
    Ok(list)
}

/// ATIS-1000080 v005: an SPC is digits and uppercase letters; [`SPC_LEN`] bounds its length.
fn check_spc(spc: &str) -> Result<(), String> {
    let len = spc.chars().count();
    if !SPC_LEN.contains(&len) {
        return Err(format!(
            "must be {} to {} digits or uppercase letters, got {len} characters",
            SPC_LEN.start(),
            SPC_LEN.end()
        ));
    }
    if let Some(c) = spc
        .chars()
        .find(|c| !(c.is_ascii_digit() || c.is_ascii_uppercase()))
    {
        return Err(format!(
            "character {c:?} is not a digit or an uppercase letter (ATIS-1000080 v005)"
        ));
    }
    Ok(())
}

/// A range counts up from a number of digits and stays within that many digits, and holds
/// at most [`MAX_RANGE_COUNT`] numbers.
fn check_range(start: &str, count: u32) -> Result<(), (&'static str, String)> {
    if !start.bytes().all(|b| b.is_ascii_digit()) {
        return Err(("range.start", "a range starts at digits only".into()));
    }
    if count > MAX_RANGE_COUNT {
        return Err((
            "range.count",
            format!("must be at most {MAX_RANGE_COUNT}, got {count}"),
        ));
    }
    // At most 15 digits (checked before): fits u64, as does 10^15.
    let first: u64 = start.parse().unwrap_or(u64::MAX);
    let end = 10u64.saturating_pow(u32::try_from(start.len()).unwrap_or(u32::MAX));
    if first.saturating_add(u64::from(count)) > end {
        return Err((
            "range.count",
            format!(
                "the range runs past {} digits (last number would be {})",
                start.len(),
                first.saturating_add(u64::from(count) - 1)
            ),
        ));
    }
    Ok(())
}

/// Parses and verifies the caller's CSR and checks that it asks for exactly the request's
/// identifiers, and for a CA certificate exactly when `ca` is set. Returns its
/// SubjectPublicKeyInfo DER.
fn check_csr(der: &[u8], identifiers: &Identifiers, ca: bool) -> Result<Vec<u8>, BrokerError> {
    let csr = shaken::parse_csr(der).map_err(|e| BrokerError::invalid("csr_der", e))?;
    if csr.ca != ca {
        return Err(BrokerError::invalid(
            "csr_der",
            format!("CSR basicConstraints CA={} but ca_certificate={ca}", csr.ca),
        ));
    }
    match identifiers {
        Identifiers::TnAuthList(want) => match &csr.tn_auth_list {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(BrokerError::invalid(
                    "csr_der",
                    format!(
                        "CSR TNAuthList [{}] differs from tn_auth_list [{}]",
                        echo(&got.to_string()),
                        echo(&want.to_string())
                    ),
                ));
            }
            None => {
                return Err(BrokerError::invalid(
                    "csr_der",
                    "CSR has no TNAuthList extension request",
                ));
            }
        },
        Identifiers::Dns(want) => {
            let mut got: Vec<String> = csr
                .dns_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect();
            got.sort();
            got.dedup();
            if &got != want {
                return Err(BrokerError::invalid(
                    "csr_der",
                    format!(
                        "CSR names {} differ from dns_names {}",
                        echo(&format!("{got:?}")),
                        echo(&format!("{want:?}"))
                    ),
                ));
            }
        }
    }
    Ok(csr.public_key_spki_der)
}

/// Validates a Revoke request.
pub(crate) fn revoke_request(req: pb::RevokeRequest) -> Result<RevokeRequest, BrokerError> {
    use pb::revoke_request::Target;
    let selector = match req.target {
        None => {
            return Err(BrokerError::invalid(
                "target",
                "set serial_hex or sha256_fingerprint_hex",
            ));
        }
        Some(Target::SerialHex(s)) => CertSelector::Serial(normalize_serial(&s)?),
        Some(Target::Sha256FingerprintHex(f)) => {
            let f = if f.len() > MAX_FINGERPRINT_TEXT {
                String::new()
            } else {
                f.replace(':', "").to_ascii_lowercase()
            };
            if f.len() != 64 || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BrokerError::invalid(
                    "sha256_fingerprint_hex",
                    "must be 64 hex digits",
                ));
            }
            CertSelector::Fingerprint(f)
        }
    };
    let reason = pb::RevocationReason::try_from(req.reason).map_err(|_| {
        BrokerError::invalid(
            "reason",
            format!("{} is not a supported RFC 5280 reason", req.reason),
        )
    })?;
    Ok(RevokeRequest {
        selector,
        // The enum's values are the RFC 5280 codes.
        reason: reason as i32 as u8,
    })
}

fn normalize_serial(s: &str) -> Result<String, BrokerError> {
    let too_long = || {
        BrokerError::invalid(
            "serial_hex",
            format!("must be at most {MAX_SERIAL_DIGITS} hex digits (20 octets, RFC 5280)"),
        )
    };
    if s.len() > MAX_SERIAL_TEXT {
        return Err(too_long());
    }
    let s = s.replace(':', "").to_ascii_lowercase();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BrokerError::invalid("serial_hex", "must be hex digits"));
    }
    let trimmed = s.trim_start_matches('0');
    if trimmed.len() > MAX_SERIAL_DIGITS {
        return Err(too_long());
    }
    Ok(if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    })
}

/// Encodes a certificate answer. The private key goes out only when the broker made it.
pub(crate) fn cert_response(
    cert: &CertRecord,
    status: CacheStatus,
    caller_has_key: bool,
) -> pb::GetCertificateResponse {
    let cache_status = match status {
        CacheStatus::HitLocal => pb::CacheStatus::HitLocal,
        CacheStatus::HitShared => pb::CacheStatus::HitShared,
        CacheStatus::Joined => pb::CacheStatus::Joined,
        CacheStatus::Issued => pb::CacheStatus::Issued,
    };
    let private_key = match (&cert.private_key_pkcs8, caller_has_key) {
        (Some(k), false) => k.clone(),
        _ => Vec::new(),
    };
    pb::GetCertificateResponse {
        certificate_chain_pem: cert.chain_pem.clone(),
        certificate_chain_der: cert.chain_der.clone(),
        private_key_pkcs8_der: private_key,
        not_before: Some(timestamp(cert.not_before)),
        not_after: Some(timestamp(cert.not_after)),
        serial_hex: cert.serial_hex.clone(),
        sha256_fingerprint_hex: cert.fingerprint_hex.clone(),
        issuer_ca: cert.issuer_ca.clone(),
        cache_status: cache_status as i32,
        x5u: String::new(),
    }
}

/// Encodes one renewal-status entry.
pub(crate) fn renewal_entry(s: crate::broker::RenewalStatus) -> pb::RenewalEntry {
    pb::RenewalEntry {
        cache_key: s.cache_key,
        serial_hex: s.serial_hex.unwrap_or_default(),
        not_after: s.not_after.map(timestamp),
        next_renewal: s.next_renewal.map(timestamp),
        last_error: s.last_error.unwrap_or_default(),
        failures: s.failures,
        profile_findings: s.profile_findings,
        issuer_ca: s.issuer_ca.unwrap_or_default(),
    }
}

/// Encodes a revocation answer.
pub(crate) fn revoke_response(r: &Revoked) -> pb::RevokeResponse {
    pb::RevokeResponse {
        serial_hex: r.serial_hex.clone(),
        issuer_ca: r.issuer_ca.clone(),
        revoked_at: Some(timestamp(r.revoked_at.unix_timestamp())),
    }
}

fn timestamp(unix: i64) -> Timestamp {
    Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(e: Entry) -> pb::TnAuthEntry {
        pb::TnAuthEntry { entry: Some(e) }
    }

    fn field_of(err: BrokerError) -> String {
        match err {
            BrokerError::InvalidArgument { field, .. } => field,
            other => panic!("not InvalidArgument: {other}"),
        }
    }

    #[test]
    fn identifier_errors_name_the_field() {
        let base = pb::GetCertificateRequest::default();
        let cases: Vec<(pb::GetCertificateRequest, &str)> = vec![
            (base.clone(), "tn_auth_list"),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![entry(Entry::Spc("1234".into()))],
                    dns_names: vec!["a.example".into()],
                    ..base.clone()
                },
                "dns_names",
            ),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![
                        entry(Entry::Spc("1234".into())),
                        entry(Entry::Spc(String::new())),
                    ],
                    ..base.clone()
                },
                "tn_auth_list[1].spc",
            ),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![entry(Entry::Tn("12x".into()))],
                    ..base.clone()
                },
                "tn_auth_list[0].tn",
            ),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![entry(Entry::Range(pb::TelephoneNumberRange {
                        start: "1215".into(),
                        count: 1,
                    }))],
                    ..base.clone()
                },
                "tn_auth_list[0].range.count",
            ),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![pb::TnAuthEntry { entry: None }],
                    ..base.clone()
                },
                "tn_auth_list[0]",
            ),
            (
                pb::GetCertificateRequest {
                    dns_names: vec!["ok.example".into(), "bad_name".into()],
                    ..base.clone()
                },
                "dns_names[1]",
            ),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![entry(Entry::Spc("1234".into()))],
                    csr_der: vec![1, 2, 3],
                    ..base.clone()
                },
                "csr_der",
            ),
            (
                pb::GetCertificateRequest {
                    tn_auth_list: vec![entry(Entry::Spc("1234".into()))],
                    min_remaining_validity: Some(prost_types::Duration {
                        seconds: -5,
                        nanos: 0,
                    }),
                    ..base.clone()
                },
                "min_remaining_validity",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(cert_request(req).unwrap_err()), field);
        }
    }

    #[test]
    fn spc_and_range_bounds() {
        assert!(check_spc("1234").is_ok() && check_spc("123H").is_ok());
        assert!(check_spc(&"9".repeat(16)).is_ok());
        for bad in ["", "123", "123h", "12-4", "12 4", "１２３４"] {
            assert!(check_spc(bad).is_err(), "{bad:?}");
        }
        assert!(check_spc(&"9".repeat(17)).is_err());
        assert!(check_range("12155550000", 10_000).is_ok());
        assert!(check_range("99999999990", 10).is_ok());
        assert_eq!(check_range("99999999990", 11).unwrap_err().0, "range.count");
        assert_eq!(check_range("1", u32::MAX).unwrap_err().0, "range.count");
        assert_eq!(
            check_range("100000000000000", 1_000_001).unwrap_err().0,
            "range.count"
        );
        assert_eq!(check_range("1215*", 2).unwrap_err().0, "range.start");
        assert_eq!(normalize_serial(&"0".repeat(20)).unwrap(), "0");
        assert!(normalize_serial(&"f".repeat(40)).is_ok());
        assert!(normalize_serial(&"f".repeat(41)).is_err());
        assert!(normalize_serial(&"f".repeat(50_000)).is_err());
    }

    #[test]
    fn valid_request_defaults() {
        let req = cert_request(pb::GetCertificateRequest {
            tn_auth_list: vec![entry(Entry::Spc("1234".into()))],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(req.pool, DEFAULT_POOL);
        assert_eq!(
            req.identifiers,
            Identifiers::TnAuthList(TnAuthList::from_spc("1234").unwrap())
        );
        assert!(req.csr_der.is_none() && req.min_remaining.is_none());
    }

    #[test]
    fn revoke_validation() {
        use pb::revoke_request::Target;
        let r = |t: Option<Target>, reason: i32| {
            revoke_request(pb::RevokeRequest { target: t, reason })
        };
        assert_eq!(field_of(r(None, 0).unwrap_err()), "target");
        assert_eq!(
            field_of(r(Some(Target::SerialHex("xyz".into())), 0).unwrap_err()),
            "serial_hex"
        );
        assert_eq!(
            field_of(r(Some(Target::Sha256FingerprintHex("ab".into())), 0).unwrap_err()),
            "sha256_fingerprint_hex"
        );
        assert_eq!(
            field_of(r(Some(Target::SerialHex("01".into())), 2).unwrap_err()),
            "reason"
        );
        let ok = r(Some(Target::SerialHex("00:0A:bC".into())), 4).unwrap();
        assert_eq!(ok.selector, CertSelector::Serial("abc".into()));
        assert_eq!(ok.reason, 4);
    }
}
