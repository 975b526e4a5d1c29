//! Proto messages to validated domain requests and back. Every rejection names the request
//! field it is about, in the proto's own field paths.

use std::time::Duration;

use prost_types::Timestamp;

use crate::{
    broker::{BrokerError, CacheStatus, CertRequest, Identifiers, RevokeRequest, Revoked},
    pb::{self, tn_auth_entry::Entry},
    shaken::{self, ShakenError, TnAuthList, TnEntry},
    store::{CertRecord, CertSelector},
};

/// Pool used when a request names none.
pub(crate) const DEFAULT_POOL: &str = "default";

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
        (true, false) => Identifiers::dns(&req.dns_names)?,
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
            Duration::try_from(d)
                .map_err(|_| BrokerError::invalid("min_remaining_validity", "must not be negative"))
        })
        .transpose()?;

    let pool = if req.ca_pool.is_empty() {
        DEFAULT_POOL.to_owned()
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
            Some(Entry::Spc(spc)) => TnEntry::spc(spc),
            Some(Entry::Tn(tn)) => TnEntry::one(tn),
            Some(Entry::Range(r)) => TnEntry::range(&r.start, r.count),
        };
        out.push(entry.map_err(at)?);
    }
    TnAuthList::new(out).map_err(|e| BrokerError::invalid("tn_auth_list", e))
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
                    format!("CSR TNAuthList [{got}] differs from tn_auth_list [{want}]"),
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
                    format!("CSR names {got:?} differ from dns_names {want:?}"),
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
            let f = f.replace(':', "").to_ascii_lowercase();
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
    let s = s.replace(':', "").to_ascii_lowercase();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BrokerError::invalid("serial_hex", "must be hex digits"));
    }
    let trimmed = s.trim_start_matches('0');
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
