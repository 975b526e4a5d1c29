//! Inspection of issued STI certificates and the checks a client runs before it trusts what
//! a CA returned (ATIS-1000080 §6.4.1; shaken-acme.md §3).

use rustls_pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::{
    certificate::X509Certificate,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
};

use super::{
    ECDSA_SHA256_OID, ShakenError, Subject, TN_AUTH_LIST_OID_STR, TnAuthList, is_p256_spki,
};

/// What a client needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial number: lowercase hex, no separators, no leading `00` sign byte.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256_fingerprint_hex: String,
    /// The DER `SubjectPublicKeyInfo`.
    pub public_key_spki_der: Vec<u8>,
    /// True when the key is P-256.
    pub key_is_p256: bool,
    /// Dotted OID of the signature algorithm.
    pub signature_algorithm_oid: String,
    /// The TNAuthList extension, decoded.
    pub tn_auth_list: Option<TnAuthList>,
    /// Whether the TNAuthList extension is critical (SHAKEN forbids it).
    pub tn_auth_list_critical: bool,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// The subject's C, O and CN.
    pub subject: Subject,
    /// The subject Name, DER, for chain linking.
    pub subject_der: Vec<u8>,
    /// The issuer Name, DER, for chain linking.
    pub issuer_der: Vec<u8>,
    /// Subject Key Identifier, if present.
    pub subject_key_id: Option<Vec<u8>>,
    /// Authority Key Identifier keyIdentifier, if present.
    pub authority_key_id: Option<Vec<u8>>,
    /// Dotted OIDs of the certificate policies.
    pub policy_oids: Vec<String>,
    /// Every extension as (dotted OID, critical), in certificate order.
    pub extensions: Vec<(String, bool)>,
}

/// What the client asked for, to compare an issued certificate against.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The TNAuthList that must be in the leaf, if one was ordered.
    pub tn_auth_list: Option<&'a TnAuthList>,
    /// DNS names that must be the leaf's subjectAltNames (any order); empty: not checked.
    pub dns_names: &'a [String],
    /// The CSR's public key, DER `SubjectPublicKeyInfo`.
    pub public_key_spki_der: &'a [u8],
    /// Whether the leaf must be a CA certificate (basicConstraints CA:TRUE), as ordered.
    pub ca: bool,
}

// === impl CertInfo ===

impl CertInfo {
    /// Parses one DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, ShakenError> {
        let (rest, x509) = X509Certificate::from_der(der)
            .map_err(|e| ShakenError::CertMalformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ShakenError::CertMalformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        let raw_serial = x509.raw_serial();
        let first_nonzero = raw_serial
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(raw_serial.len().saturating_sub(1));
        let time = |t: x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp())
                .map_err(|e| ShakenError::CertMalformed(format!("validity: {e}")))
        };
        let spki = x509.public_key().raw.to_vec();
        let mut info = Self {
            der: der.to_vec(),
            serial_hex: hex::encode(&raw_serial[first_nonzero..]),
            not_before: time(x509.validity().not_before)?,
            not_after: time(x509.validity().not_after)?,
            sha256_fingerprint_hex: hex::encode(Sha256::digest(der)),
            key_is_p256: is_p256_spki(&spki),
            public_key_spki_der: spki,
            signature_algorithm_oid: x509.signature_algorithm.algorithm.to_id_string(),
            tn_auth_list: None,
            tn_auth_list_critical: false,
            dns_names: Vec::new(),
            is_ca: x509.is_ca(),
            subject: Subject::from_x509_name(x509.subject()),
            subject_der: x509.subject().as_raw().to_vec(),
            issuer_der: x509.issuer().as_raw().to_vec(),
            subject_key_id: None,
            authority_key_id: None,
            policy_oids: Vec::new(),
            extensions: Vec::new(),
        };
        for ext in x509.extensions() {
            let oid = ext.oid.to_id_string();
            info.extensions.push((oid.clone(), ext.critical));
            if oid == TN_AUTH_LIST_OID_STR {
                info.tn_auth_list = Some(TnAuthList::from_der(ext.value).map_err(|e| {
                    ShakenError::CertMalformed(format!("TNAuthList extension: {e}"))
                })?);
                info.tn_auth_list_critical = ext.critical;
                continue;
            }
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    info.dns_names
                        .extend(san.general_names.iter().filter_map(|n| match n {
                            GeneralName::DNSName(d) => Some((*d).to_owned()),
                            _ => None,
                        }));
                }
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    info.subject_key_id = Some(id.0.to_vec());
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    info.authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                ParsedExtension::CertificatePolicies(policies) => {
                    info.policy_oids
                        .extend(policies.iter().map(|p| p.policy_id.to_id_string()));
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// Splits a PEM chain (`application/pem-certificate-chain`) into DER certificates, in file
/// order (leaf first, as RFC 8555 §7.4.2 delivers it).
pub fn parse_pem_chain(pem: &str) -> Result<Vec<Vec<u8>>, ShakenError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ShakenError::CertMalformed(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ShakenError::CertMalformed(
            "PEM holds no certificate".into(),
        ));
    }
    Ok(certs)
}

/// Checks an issued chain (leaf first) against what was ordered and the SHAKEN profile,
/// and returns the leaf.
///
/// Checks: for TNAuthList orders, P-256 leaf key and ecdsa-with-SHA256 signature; TNAuthList present, equal after
/// DER decoding and non-critical; DNS names equal as sets; the leaf key equals the CSR key;
/// `now` within validity; each certificate's issuer equals the next one's subject and its
/// signature verifies with the next one's key.
pub fn check_issued(
    chain_der: &[Vec<u8>],
    expected: &Expected<'_>,
    now: OffsetDateTime,
) -> Result<CertInfo, ShakenError> {
    let fail = |check: &'static str, reason: String| ShakenError::Profile { check, reason };
    let leaf_der = chain_der
        .first()
        .ok_or_else(|| fail("chain", "empty chain".into()))?;
    let leaf = CertInfo::parse(leaf_der)?;
    // The SHAKEN key and signature rules bind STI certificates only; a `dns` certificate
    // from a Web PKI CA (Pebble signs with RSA) is checked for names, key and validity.
    let shaken = expected.tn_auth_list.is_some();
    if shaken && !leaf.key_is_p256 {
        return Err(fail("key_algorithm", "leaf key is not P-256".into()));
    }
    if shaken && leaf.signature_algorithm_oid != ECDSA_SHA256_OID {
        return Err(fail(
            "signature_algorithm",
            format!("{} is not ecdsa-with-SHA256", leaf.signature_algorithm_oid),
        ));
    }
    if let Some(want) = expected.tn_auth_list {
        match &leaf.tn_auth_list {
            None => return Err(fail("tn_auth_list", "leaf has no TNAuthList".into())),
            Some(got) if got != want => {
                return Err(fail(
                    "tn_auth_list",
                    format!("leaf has {got}, ordered {want}"),
                ));
            }
            Some(_) if leaf.tn_auth_list_critical => {
                return Err(fail(
                    "tn_auth_list_critical",
                    "TNAuthList extension is critical".into(),
                ));
            }
            Some(_) => {}
        }
    }
    if !expected.dns_names.is_empty() {
        let norm = |names: &[String]| {
            let mut v: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            v.sort();
            v.dedup();
            v
        };
        if norm(&leaf.dns_names) != norm(expected.dns_names) {
            return Err(fail(
                "dns_names",
                format!(
                    "leaf has {:?}, ordered {:?}",
                    leaf.dns_names, expected.dns_names
                ),
            ));
        }
    }
    if leaf.is_ca != expected.ca {
        return Err(fail(
            "basic_constraints",
            format!("leaf CA={}, ordered CA={}", leaf.is_ca, expected.ca),
        ));
    }
    if leaf.public_key_spki_der != expected.public_key_spki_der {
        return Err(fail("public_key", "leaf key is not the CSR's key".into()));
    }
    if now < leaf.not_before || now > leaf.not_after {
        return Err(fail(
            "validity",
            format!(
                "now {now} is outside {} .. {}",
                leaf.not_before, leaf.not_after
            ),
        ));
    }
    check_links(chain_der)?;
    Ok(leaf)
}

fn check_links(chain_der: &[Vec<u8>]) -> Result<(), ShakenError> {
    let fail = |reason: String| ShakenError::Profile {
        check: "chain",
        reason,
    };
    let parsed = chain_der
        .iter()
        .map(|d| {
            X509Certificate::from_der(d)
                .map(|(_, c)| c)
                .map_err(|e| ShakenError::CertMalformed(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pair) in parsed.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(fail(format!(
                "certificate {i} issuer {} is not certificate {} subject {}",
                child.issuer(),
                i + 1,
                parent.subject()
            )));
        }
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|e| {
                fail(format!(
                    "certificate {i} signature does not verify with certificate {}: {e}",
                    i + 1
                ))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use time::Duration;

    use super::*;
    use crate::shaken::{TN_AUTH_LIST_OID, generate_key};
    use rcgen::PublicKeyData;

    struct Fixture {
        ca_key: KeyPair,
        ca_params: CertificateParams,
        ca_der: Vec<u8>,
        leaf_key: KeyPair,
        list: TnAuthList,
    }

    fn fixture() -> Fixture {
        let ca_key = generate_key().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = Subject::shaken("Test CA", "CA")
            .to_distinguished_name()
            .unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_der = ca_params.self_signed(&ca_key).unwrap().der().to_vec();
        Fixture {
            ca_key,
            ca_params,
            ca_der,
            leaf_key: generate_key().unwrap(),
            list: TnAuthList::from_spc("1234").unwrap(),
        }
    }

    fn leaf(f: &Fixture, list: &TnAuthList, critical: bool, lifetime: Duration) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        p.distinguished_name = Subject::shaken("Example", "1234")
            .to_distinguished_name()
            .unwrap();
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + lifetime;
        p.use_authority_key_identifier_extension = true;
        let mut ext = CustomExtension::from_oid_content(TN_AUTH_LIST_OID, list.to_der());
        ext.set_criticality(critical);
        p.custom_extensions.push(ext);
        let issuer = Issuer::from_params(&f.ca_params, &f.ca_key);
        p.signed_by(&f.leaf_key, &issuer).unwrap().der().to_vec()
    }

    fn check(f: &Fixture, chain: &[Vec<u8>], list: &TnAuthList) -> Result<CertInfo, ShakenError> {
        let spki = f.leaf_key.subject_public_key_info();
        check_issued(
            chain,
            &Expected {
                tn_auth_list: Some(list),
                dns_names: &[],
                public_key_spki_der: &spki,
                ca: false,
            },
            OffsetDateTime::now_utc(),
        )
    }

    fn check_name(r: Result<CertInfo, ShakenError>) -> &'static str {
        match r {
            Err(ShakenError::Profile { check, .. }) => check,
            other => panic!("expected a profile error, got {other:?}"),
        }
    }

    #[test]
    fn good_chain_passes_and_info_is_filled() {
        let f = fixture();
        let chain = vec![
            leaf(&f, &f.list, false, Duration::days(1)),
            f.ca_der.clone(),
        ];
        let info = check(&f, &chain, &f.list).unwrap();
        assert_eq!(info.tn_auth_list.as_ref(), Some(&f.list));
        assert_eq!(info.subject.common_name, "SHAKEN 1234");
        assert_eq!(info.sha256_fingerprint_hex.len(), 64);
        assert!(!info.serial_hex.starts_with("00"));
        assert!(info.authority_key_id.is_some());
    }

    #[test]
    fn wrong_tnauthlist_fails() {
        let f = fixture();
        let other = TnAuthList::from_spc("9999").unwrap();
        let chain = vec![leaf(&f, &other, false, Duration::days(1)), f.ca_der.clone()];
        assert_eq!(check_name(check(&f, &chain, &f.list)), "tn_auth_list");
    }

    #[test]
    fn critical_tnauthlist_fails() {
        let f = fixture();
        let chain = vec![leaf(&f, &f.list, true, Duration::days(1)), f.ca_der.clone()];
        assert_eq!(
            check_name(check(&f, &chain, &f.list)),
            "tn_auth_list_critical"
        );
    }

    #[test]
    fn wrong_key_fails() {
        let f = fixture();
        let chain = vec![
            leaf(&f, &f.list, false, Duration::days(1)),
            f.ca_der.clone(),
        ];
        let other = generate_key().unwrap().subject_public_key_info();
        let r = check_issued(
            &chain,
            &Expected {
                tn_auth_list: Some(&f.list),
                dns_names: &[],
                public_key_spki_der: &other,
                ca: false,
            },
            OffsetDateTime::now_utc(),
        );
        assert_eq!(check_name(r), "public_key");
    }

    #[test]
    fn end_entity_leaf_fails_a_ca_order() {
        let f = fixture();
        let chain = vec![
            leaf(&f, &f.list, false, Duration::days(1)),
            f.ca_der.clone(),
        ];
        let spki = f.leaf_key.subject_public_key_info();
        let r = check_issued(
            &chain,
            &Expected {
                tn_auth_list: Some(&f.list),
                dns_names: &[],
                public_key_spki_der: &spki,
                ca: true,
            },
            OffsetDateTime::now_utc(),
        );
        assert_eq!(check_name(r), "basic_constraints");
    }

    #[test]
    fn expired_fails() {
        let f = fixture();
        let chain = vec![
            leaf(&f, &f.list, false, Duration::minutes(-1)),
            f.ca_der.clone(),
        ];
        assert_eq!(check_name(check(&f, &chain, &f.list)), "validity");
    }

    #[test]
    fn wrong_issuer_fails_chain() {
        let f = fixture();
        let g = fixture();
        let chain = vec![
            leaf(&f, &f.list, false, Duration::days(1)),
            g.ca_der.clone(),
        ];
        // Same subject DN, different key: the link passes by name, fails by signature.
        assert_eq!(check_name(check(&f, &chain, &f.list)), "chain");
    }

    #[test]
    fn pem_chain_splits_in_order() {
        let f = fixture();
        let leaf_der = leaf(&f, &f.list, false, Duration::days(1));
        let pem = [&leaf_der, &f.ca_der]
            .iter()
            .map(|d| pem_of(d))
            .collect::<String>();
        let chain = parse_pem_chain(&pem).unwrap();
        assert_eq!(chain, vec![leaf_der, f.ca_der.clone()]);
        assert!(parse_pem_chain("nothing here").is_err());
    }

    fn pem_of(der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).unwrap());
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s
    }
}
