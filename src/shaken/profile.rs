//! The strict look at what a CA returned: every certificate of a chain decoded with a strict
//! DER decoder (the `der` crate through `x509-cert`, independent of the x509-parser reading
//! in [`super::CertInfo`]) and held to RFC 5280's encoding rules, and a TNAuthList leaf held
//! to the SHAKEN certificate profile (ATIS-1000080 v005 §6.4.1, US SHAKEN CP 1.3/1.4;
//! shaken-acme.md §3, "Encoding and naming points").
//!
//! The result is data, a list of [`Finding`]s: things that strict verifiers (pyca
//! `cryptography`, pkilint, zlint's SHAKEN lints, some STI-VS) may reject, in a certificate
//! that lax ones accept. What to do with a finding is the caller's decision (the CA pool hands
//! the certificate out and reports it, or treats it as the CA's failure under
//! `strict_profile`). What makes a certificate unusable for the order (wrong TNAuthList, wrong
//! key, not P-256, not ecdsa-with-SHA256, expired, broken chain) is not a finding but an error
//! of [`super::check_issued`].
//!
//! A `der` decode accepts an explicitly encoded DEFAULT value (it reads `cA FALSE` as the
//! default) and re-encodes without it, so every decoded structure is also re-encoded and
//! compared with the bytes the CA sent: DER has exactly one encoding per value (X.690 §11).

mod sti;

use std::{collections::BTreeSet, fmt};

use der::{
    Decode, Encode, Tag, Tagged,
    asn1::{ObjectIdentifier as Oid, OctetString},
};
use x509_cert::{
    Certificate,
    certificate::Version,
    ext::{
        Extension,
        pkix::{
            AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies, CrlDistributionPoints,
            KeyUsage, SubjectAltName, SubjectKeyIdentifier,
        },
    },
    time::Time,
};

use super::TnAuthList;
use sti::shaken;

/// One way a certificate departs from DER, RFC 5280 or the SHAKEN profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Position in the chain as the CA sent it; 0 is the leaf.
    pub cert: usize,
    /// A stable short name, usable as a metric label (see [`CODES`]).
    pub code: &'static str,
    /// What was found, and the rule it breaks.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (certificate {}): {}",
            self.code, self.cert, self.detail
        )
    }
}

/// Every [`Finding::code`], with the rule behind it. The first group applies to every
/// certificate of every chain, the second to a leaf that carries a TNAuthList.
pub const CODES: &[(&str, &str)] = &[
    (
        "der_decode",
        "not a DER X.509 certificate, or an extension's value is not DER",
    ),
    (
        "der_encoded_default",
        "a DEFAULT value written out (X.690 §11.5), e.g. basicConstraints cA FALSE",
    ),
    (
        "der_not_canonical",
        "decodes, but is not the one DER encoding of its value (X.690 §11)",
    ),
    (
        "version",
        "a certificate with extensions is not v3 (RFC 5280 §4.1.2.1)",
    ),
    (
        "serial_number",
        "serial not a positive integer of at most 20 octets (RFC 5280 §4.1.2.2)",
    ),
    (
        "signature_algorithm_mismatch",
        "tbsCertificate.signature differs from signatureAlgorithm (RFC 5280 §4.1.1.2)",
    ),
    (
        "validity_time_type",
        "a date before 2050 not in UTCTime (RFC 5280 §4.1.2.5)",
    ),
    (
        "country_not_printable",
        "countryName not a two-letter PrintableString (X.520, RFC 5280 App. A)",
    ),
    (
        "duplicate_extension",
        "an extension appears twice (RFC 5280 §4.2)",
    ),
    (
        "signature_algorithm_parameters",
        "ecdsa-with-SHA256 with parameters (RFC 5758 §3.2: absent)",
    ),
    (
        "serial_number_short",
        "serial shorter than 64 bits (ATIS-1000080 v005)",
    ),
    (
        "subject_attribute_missing",
        "subject lacks C, O or CN (ATIS-1000080 §6.4.1)",
    ),
    (
        "subject_serial_number_missing",
        "subject lacks serialNumber (US SHAKEN CP 1.3 §3.1; CP 1.4: may)",
    ),
    (
        "basic_constraints_missing",
        "no basicConstraints (ATIS-1000080 §6.4.1)",
    ),
    (
        "basic_constraints_not_critical",
        "basicConstraints not critical (ATIS-1000080 §6.4.1)",
    ),
    (
        "basic_constraints_path_len",
        "pathLenConstraint on an end-entity certificate (RFC 5280 §4.2.1.9)",
    ),
    ("key_usage_missing", "no keyUsage (ATIS-1000080 §6.4.1)"),
    (
        "key_usage_not_critical",
        "keyUsage not critical (ATIS-1000080 §6.4.1)",
    ),
    (
        "key_usage_bits",
        "end entity: not exactly digitalSignature; SCA: no keyCertSign or other bits",
    ),
    (
        "certificate_policies_missing",
        "no certificatePolicies (ATIS-1000080 §6.4.1)",
    ),
    (
        "certificate_policies",
        "not exactly one SHAKEN CP OID 2.16.840.1.114569.1.1.x",
    ),
    (
        "crl_distribution_points_missing",
        "no CRL distribution points (ATIS-1000080 §6.4.1)",
    ),
    (
        "crl_distribution_points",
        "not one distribution point with an HTTP(S) URI",
    ),
    (
        "crl_issuer_missing",
        "CP 1.4 certificate whose distribution point has no cRLIssuer",
    ),
    ("crl_issuer_not_dirname", "cRLIssuer is not a directoryName"),
    (
        "subject_key_id_missing",
        "no subjectKeyIdentifier (ATIS-1000080 v005)",
    ),
    (
        "authority_key_id_missing",
        "no authorityKeyIdentifier keyIdentifier (ATIS-1000080 §6.4.1)",
    ),
    (
        "extension_critical",
        "a critical extension other than basicConstraints and keyUsage (v005)",
    ),
    (
        "extension_unexpected",
        "an extension outside the SHAKEN profile (v005)",
    ),
];

const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
const CERTIFICATE_POLICIES: Oid = Oid::new_unwrap("2.5.29.32");
const CRL_DISTRIBUTION_POINTS: Oid = Oid::new_unwrap("2.5.29.31");
const SUBJECT_KEY_ID: Oid = Oid::new_unwrap("2.5.29.14");
const AUTHORITY_KEY_ID: Oid = Oid::new_unwrap("2.5.29.35");
const SUBJECT_ALT_NAME: Oid = Oid::new_unwrap("2.5.29.17");
const TN_AUTH_LIST: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.1.26");
const AT_COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
const AT_SERIAL_NUMBER: Oid = Oid::new_unwrap("2.5.4.5");
const AT_COUNTRY: Oid = Oid::new_unwrap("2.5.4.6");
const AT_ORGANIZATION: Oid = Oid::new_unwrap("2.5.4.10");
const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ANY_POLICY: Oid = Oid::new_unwrap("2.5.29.32.0");
/// US SHAKEN CP 1.4: the subject serialNumber becomes optional, the CRLDP carries a cRLIssuer.
const SHAKEN_CP_1_4: Oid = Oid::new_unwrap("2.16.840.1.114569.1.1.4");
/// The arc of the SHAKEN CP OIDs, 2.16.840.1.114569.1.1.
const SHAKEN_CP_ARC: &str = "2.16.840.1.114569.1.1.";

/// Checks every certificate of `chain_der` (leaf first), returning what it finds; empty when
/// the chain is clean. Never fails: a certificate that does not decode is itself a finding.
pub fn profile_findings(chain_der: &[Vec<u8>]) -> Vec<Finding> {
    let mut out = vec![];
    for (i, der) in chain_der.iter().enumerate() {
        let mut f = Findings {
            cert: i,
            out: &mut out,
        };
        let cert = match Certificate::from_der(der) {
            Ok(c) => c,
            Err(e) => {
                f.push("der_decode", format!("not a DER X.509 certificate: {e}"));
                continue;
            }
        };
        rfc5280(&cert, der, &mut f);
        if i == 0 && extension(&cert, TN_AUTH_LIST).is_some() {
            shaken(&cert, &mut f);
        }
    }
    out
}

struct Findings<'a> {
    cert: usize,
    out: &'a mut Vec<Finding>,
}

impl Findings<'_> {
    fn push(&mut self, code: &'static str, detail: impl Into<String>) {
        debug_assert!(CODES.iter().any(|(c, _)| *c == code), "{code} is listed");
        self.out.push(Finding {
            cert: self.cert,
            code,
            detail: detail.into(),
        });
    }
}

/// Encoding rules every X.509 certificate must follow, whatever its use.
fn rfc5280(cert: &Certificate, der: &[u8], f: &mut Findings<'_>) {
    let tbs = &cert.tbs_certificate;
    canonical(cert, der, f);
    let exts = tbs.extensions.as_deref().unwrap_or_default();
    if !exts.is_empty() && tbs.version != Version::V3 {
        f.push("version", format!("{:?} with extensions", tbs.version));
    }
    let serial = tbs.serial_number.as_bytes();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        f.push("serial_number", "serial number is negative");
    } else if serial.iter().all(|b| *b == 0) {
        f.push("serial_number", "serial number is zero");
    } else if serial.len() > 20 {
        f.push(
            "serial_number",
            format!("serial number has {} octets", serial.len()),
        );
    }
    if tbs.signature != cert.signature_algorithm {
        f.push(
            "signature_algorithm_mismatch",
            format!(
                "tbsCertificate says {}, the certificate {}",
                tbs.signature.oid, cert.signature_algorithm.oid
            ),
        );
    }
    for (which, t) in [
        ("notBefore", &tbs.validity.not_before),
        ("notAfter", &tbs.validity.not_after),
    ] {
        if let Time::GeneralTime(g) = t {
            let year = g.to_date_time().year();
            if year < 2050 {
                f.push(
                    "validity_time_type",
                    format!("{which} in {year} is a GeneralizedTime, not a UTCTime"),
                );
            }
        }
    }
    for (which, name) in [("subject", &tbs.subject), ("issuer", &tbs.issuer)] {
        for atv in name.0.iter().flat_map(|rdn| rdn.0.iter()) {
            if atv.oid != AT_COUNTRY {
                continue;
            }
            let tag = atv.value.tag();
            let len = atv.value.value().len();
            if tag != Tag::PrintableString || len != 2 {
                f.push(
                    "country_not_printable",
                    format!("{which} countryName is a {tag} of {len} octets, not a two-letter PrintableString"),
                );
            }
        }
    }
    let mut seen = BTreeSet::new();
    for ext in exts {
        if !seen.insert(ext.extn_id) {
            f.push(
                "duplicate_extension",
                format!("{} appears more than once", ext_name(ext.extn_id)),
            );
        }
        extension_value(ext, f);
    }
}

/// Whether `der` is the one DER encoding of the certificate it decodes to; if not, names
/// the DEFAULT values written out, where it can tell.
fn canonical(cert: &Certificate, der: &[u8], f: &mut Findings<'_>) {
    let Ok(again) = cert.to_der() else {
        f.push(
            "der_not_canonical",
            "the decoded certificate does not re-encode",
        );
        return;
    };
    if again == der {
        return;
    }
    let mut explained = false;
    let tbs = &cert.tbs_certificate;
    // version [0] EXPLICIT INTEGER 0 (v1) is the DEFAULT.
    if tbs.version == Version::V1
        && tbs_content(der).is_some_and(|c| c.starts_with(&[0xa0, 0x03, 0x02, 0x01, 0x00]))
    {
        f.push("der_encoded_default", "version v1 is written out");
        explained = true;
    }
    for ext in tbs.extensions.as_deref().unwrap_or_default() {
        if ext.critical {
            continue;
        }
        // extnID immediately followed by BOOLEAN FALSE: `critical` written out.
        let Ok(mut pattern) = ext.extn_id.to_der() else {
            continue;
        };
        pattern.extend_from_slice(&[0x01, 0x01, 0x00]);
        if der.windows(pattern.len()).any(|w| w == pattern) {
            f.push(
                "der_encoded_default",
                format!("{}: critical FALSE is written out", ext_name(ext.extn_id)),
            );
            explained = true;
        }
    }
    if !explained {
        f.push(
            "der_not_canonical",
            "the certificate decodes but re-encodes differently (non-minimal or out-of-order encoding)",
        );
    }
}

/// The content octets of the tbsCertificate inside a certificate's DER.
fn tbs_content(der: &[u8]) -> Option<&[u8]> {
    let cert = tlv_content(der)?;
    tlv_content(cert)
}

/// The content of the first TLV in `der` (definite length).
fn tlv_content(der: &[u8]) -> Option<&[u8]> {
    let first = *der.get(1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        let bytes = der.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    der.get(start..start + len)
}

/// Decodes the value of an extension this module knows and checks it is canonical DER.
fn extension_value(ext: &Extension, f: &mut Findings<'_>) {
    let raw = ext.extn_value.as_bytes();
    let name = ext_name(ext.extn_id);
    let again: Result<Vec<u8>, String> = match ext.extn_id {
        BASIC_CONSTRAINTS => match BasicConstraints::from_der(raw) {
            Ok(bc) => {
                let again = bc.to_der().map_err(|e| e.to_string());
                if !bc.ca && again.as_deref().is_ok_and(|a| a != raw) {
                    f.push(
                        "der_encoded_default",
                        "basicConstraints: cA FALSE is written out (an end entity's is the empty SEQUENCE 30 00)",
                    );
                    return;
                }
                again
            }
            Err(e) => Err(e.to_string()),
        },
        KEY_USAGE => reencode::<KeyUsage>(raw),
        CERTIFICATE_POLICIES => reencode::<CertificatePolicies>(raw),
        CRL_DISTRIBUTION_POINTS => reencode::<CrlDistributionPoints>(raw),
        SUBJECT_KEY_ID => reencode::<SubjectKeyIdentifier>(raw),
        AUTHORITY_KEY_ID => reencode::<AuthorityKeyIdentifier>(raw),
        SUBJECT_ALT_NAME => reencode::<SubjectAltName>(raw),
        TN_AUTH_LIST => TnAuthList::from_der(raw)
            .map(|l| l.to_der())
            .map_err(|e| e.to_string()),
        _ => return,
    };
    match again {
        Err(e) => f.push("der_decode", format!("{name}: {e}")),
        Ok(a) if a != raw => f.push(
            "der_not_canonical",
            format!("{name}: decodes but re-encodes differently"),
        ),
        Ok(_) => {}
    }
}

fn reencode<T>(raw: &[u8]) -> Result<Vec<u8>, String>
where
    T: for<'a> Decode<'a> + Encode,
{
    T::from_der(raw)
        .and_then(|v| v.to_der())
        .map_err(|e| e.to_string())
}

/// The extension with this OID: (critical, value).
fn extension(cert: &Certificate, oid: Oid) -> Option<(bool, &OctetString)> {
    cert.tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| (e.critical, &e.extn_value))
}

/// The decoded extension, if present and decodable (a decode failure is already a finding).
fn decoded<T: for<'a> Decode<'a>>(cert: &Certificate, oid: Oid) -> Option<(bool, Option<T>)> {
    extension(cert, oid).map(|(critical, v)| (critical, T::from_der(v.as_bytes()).ok()))
}

fn ext_name(oid: Oid) -> String {
    match oid {
        BASIC_CONSTRAINTS => "basicConstraints".into(),
        KEY_USAGE => "keyUsage".into(),
        CERTIFICATE_POLICIES => "certificatePolicies".into(),
        CRL_DISTRIBUTION_POINTS => "cRLDistributionPoints".into(),
        SUBJECT_KEY_ID => "subjectKeyIdentifier".into(),
        AUTHORITY_KEY_ID => "authorityKeyIdentifier".into(),
        SUBJECT_ALT_NAME => "subjectAltName".into(),
        TN_AUTH_LIST => "TNAuthList".into(),
        other => format!("extension {other}"),
    }
}

#[cfg(test)]
mod tests {
    //! Every finding on a certificate built here, one defect at a time, from a clean leaf
    //! (no finding) signed by a clean CA. Nothing depends on the devca's certificates.

    use crate::shaken::der_tlv;
    use der::asn1::{Any, GeneralizedTime, Ia5String};
    use rcgen::{
        BasicConstraints as RcBasicConstraints, CertificateParams, CrlDistributionPoint,
        CustomExtension, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};
    use x509_cert::ext::pkix::{
        crl::dp::DistributionPoint,
        name::{DistributionPointName, GeneralName},
    };

    use super::*;
    use crate::shaken::{TN_AUTH_LIST_OID, generate_key};

    const CP_1_3: [u8; 16] = [
        0x30, 0x0e, 0x30, 0x0c, 0x06, 0x0a, 0x60, 0x86, 0x48, 0x01, 0x86, 0xff, 0x09, 0x01, 0x01,
        0x03,
    ];
    const CRL_URL: &str = "https://sti-pa.example/download/v1/crl";

    struct Ca {
        key: KeyPair,
        params: CertificateParams,
        der: Vec<u8>,
    }

    fn ca() -> Ca {
        let key = generate_key().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[
            (DnType::CountryName, "US"),
            (DnType::OrganizationName, "Example CA"),
            (DnType::CommonName, "SHAKEN Example Intermediate"),
        ]);
        params.is_ca = IsCa::Ca(RcBasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { key, params, der }
    }

    /// PrintableString for C and serialNumber, UTF8String for the rest.
    fn dn(entries: &[(DnType, &str)]) -> DistinguishedName {
        let mut d = DistinguishedName::new();
        for (t, v) in entries {
            let value = match t {
                DnType::CountryName => DnValue::PrintableString((*v).try_into().unwrap()),
                DnType::CustomDnType(oid) if oid == &[2, 5, 4, 5] => {
                    DnValue::PrintableString((*v).try_into().unwrap())
                }
                _ => DnValue::Utf8String((*v).to_owned()),
            };
            d.push(t.clone(), value);
        }
        d
    }

    fn serial_number_attr() -> DnType {
        DnType::CustomDnType(vec![2, 5, 4, 5])
    }

    fn custom(oid: &[u64], content: Vec<u8>, critical: bool) -> CustomExtension {
        let mut e = CustomExtension::from_oid_content(oid, content);
        e.set_criticality(critical);
        e
    }

    fn bc_ext(content: &[u8], critical: bool) -> CustomExtension {
        custom(&[2, 5, 29, 19], content.to_vec(), critical)
    }

    fn ski_ext(critical: bool) -> CustomExtension {
        let mut v = vec![0x04, 0x14];
        v.extend_from_slice(&[0x5a; 20]);
        custom(&[2, 5, 29, 14], v, critical)
    }

    /// A SHAKEN CP 1.3 end-entity certificate that conforms: every finding below starts
    /// from it and breaks one thing.
    fn clean() -> CertificateParams {
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&[
            (DnType::CountryName, "US"),
            (DnType::OrganizationName, "Example Telecom"),
            (DnType::CommonName, "SHAKEN 1234"),
            (serial_number_attr(), "1234-1"),
        ]);
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + Duration::days(30);
        p.serial_number = Some(SerialNumber::from_slice(&[0x4b; 16]));
        p.is_ca = IsCa::NoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![CRL_URL.into()],
        }];
        p.custom_extensions = vec![
            bc_ext(&[0x30, 0x00], true),
            ski_ext(false),
            custom(&[2, 5, 29, 32], CP_1_3.to_vec(), false),
            custom(
                TN_AUTH_LIST_OID,
                TnAuthList::from_spc("1234").unwrap().to_der(),
                false,
            ),
        ];
        p
    }

    fn issue(ca: &Ca, p: &CertificateParams) -> Vec<u8> {
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        p.signed_by(&generate_key().unwrap(), &issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    fn codes_of(chain: &[Vec<u8>]) -> Vec<&'static str> {
        let mut c: Vec<&str> = profile_findings(chain).iter().map(|f| f.code).collect();
        c.sort_unstable();
        c
    }

    /// The findings of a leaf built from the clean one after `tweak`, in a chain with its CA.
    fn leaf_codes(tweak: impl FnOnce(&mut CertificateParams)) -> Vec<&'static str> {
        let ca = ca();
        let mut p = clean();
        tweak(&mut p);
        codes_of(&[issue(&ca, &p), ca.der])
    }

    /// The findings of the clean leaf after a change to its decoded structure (the signature
    /// no longer verifies; findings do not look at it).
    fn patched_codes(patch: impl FnOnce(&mut Certificate)) -> Vec<&'static str> {
        let ca = ca();
        let mut cert = Certificate::from_der(&issue(&ca, &clean())).unwrap();
        patch(&mut cert);
        codes_of(&[cert.to_der().unwrap(), ca.der])
    }

    fn without(p: &mut CertificateParams, oid: &[u64]) {
        p.custom_extensions
            .retain(|e| e.oid_components().ne(oid.iter().copied()));
    }

    /// Re-assembles a certificate by hand, writing `version` as given and the extension
    /// `explicit_false` with `critical FALSE` spelled out: DER a `der` encoder never writes.
    fn hand_encoded(cert: &Certificate, version: &[u8], explicit_false: Option<Oid>) -> Vec<u8> {
        let t = &cert.tbs_certificate;
        let mut tbs = version.to_vec();
        for part in [
            t.serial_number.to_der(),
            t.signature.to_der(),
            t.issuer.to_der(),
            t.validity.to_der(),
            t.subject.to_der(),
            t.subject_public_key_info.to_der(),
        ] {
            tbs.extend(part.unwrap());
        }
        let mut exts = vec![];
        for e in t.extensions.as_deref().unwrap_or_default() {
            if Some(e.extn_id) == explicit_false {
                let mut c = e.extn_id.to_der().unwrap();
                c.extend_from_slice(&[0x01, 0x01, 0x00]);
                c.extend(e.extn_value.to_der().unwrap());
                exts.extend(der_tlv(0x30, &c));
            } else {
                exts.extend(e.to_der().unwrap());
            }
        }
        tbs.extend(der_tlv(0xa3, &der_tlv(0x30, &exts)));
        let mut c = der_tlv(0x30, &tbs);
        c.extend(cert.signature_algorithm.to_der().unwrap());
        c.extend(cert.signature.to_der().unwrap());
        der_tlv(0x30, &c)
    }

    #[test]
    fn clean_chain_has_no_findings() {
        let ca = ca();
        let leaf = issue(&ca, &clean());
        assert_eq!(profile_findings(&[leaf.clone(), ca.der.clone()]), vec![]);
        // Hand re-assembly of the same certificate is byte-identical: the helper the
        // encoded-default tests use changes only what they ask for.
        let cert = Certificate::from_der(&leaf).unwrap();
        assert_eq!(
            hand_encoded(&cert, &[0xa0, 0x03, 0x02, 0x01, 0x02], None),
            leaf
        );
    }

    #[test]
    fn cp_1_4_needs_a_crl_issuer_but_no_subject_serial_number() {
        let cp_1_4 = {
            let mut v = CP_1_3.to_vec();
            *v.last_mut().unwrap() = 0x04;
            v
        };
        let ca_name = Certificate::from_der(&ca().der)
            .unwrap()
            .tbs_certificate
            .subject;
        let dps = |crl_issuer: Option<GeneralName>| {
            CrlDistributionPoints(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(Ia5String::new(CRL_URL).unwrap()),
                ])),
                reasons: None,
                crl_issuer: crl_issuer.map(|n| vec![n]),
            }])
            .to_der()
            .unwrap()
        };
        let cp14 = |p: &mut CertificateParams, dp: Vec<u8>| {
            without(p, &[2, 5, 29, 32]);
            p.custom_extensions
                .push(custom(&[2, 5, 29, 32], cp_1_4.clone(), false));
            p.crl_distribution_points.clear();
            p.custom_extensions.push(custom(&[2, 5, 29, 31], dp, false));
            p.distinguished_name.remove(serial_number_attr());
        };
        let with_issuer = dps(Some(GeneralName::DirectoryName(ca_name)));
        assert_eq!(leaf_codes(|p| cp14(p, with_issuer)), Vec::<&str>::new());
        assert_eq!(
            leaf_codes(|p| cp14(p, dps(None))),
            vec!["crl_issuer_missing"]
        );
        let uri = GeneralName::UniformResourceIdentifier(Ia5String::new(CRL_URL).unwrap());
        assert_eq!(
            leaf_codes(|p| cp14(p, dps(Some(uri)))),
            vec!["crl_issuer_not_dirname"]
        );
    }

    #[test]
    fn non_minimal_length_is_not_der() {
        let ca = ca();
        let leaf = issue(&ca, &clean());
        // 30 82 LL LL → 30 83 00 LL LL: BER allows it, DER does not (X.690 §10.1).
        assert_eq!(leaf[1], 0x82);
        let mut ber = vec![0x30, 0x83, 0x00];
        ber.extend_from_slice(&leaf[2..]);
        let found = profile_findings(&[ber.clone(), ca.der.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].cert, found[0].code), (0, "der_decode"));
        // The CA certificate is decoded too.
        assert_eq!(codes_of(&[leaf, ber]), vec!["der_decode"]);
    }

    #[test]
    fn explicit_ca_false_is_an_encoded_default_that_der_itself_accepts() {
        // rcgen's IsCa::ExplicitNoCa writes basicConstraints as 30 03 01 01 00.
        let codes = leaf_codes(|p| {
            without(p, &[2, 5, 29, 19]);
            without(p, &[2, 5, 29, 14]);
            p.is_ca = IsCa::ExplicitNoCa;
        });
        assert_eq!(codes, vec!["der_encoded_default"]);
        // Why the re-encoding check exists: the `der` decoder reads the written-out
        // DEFAULT without complaint, both inside the extension and in the certificate.
        let bc = BasicConstraints::from_der(&[0x30, 0x03, 0x01, 0x01, 0x00]).unwrap();
        assert!(!bc.ca);
        assert_eq!(bc.to_der().unwrap(), vec![0x30, 0x00]);
        let ca = ca();
        let mut p = clean();
        p.custom_extensions[0] = bc_ext(&[0x30, 0x03, 0x01, 0x01, 0x00], true);
        assert!(Certificate::from_der(&issue(&ca, &p)).is_ok());
    }

    #[test]
    fn explicit_critical_false_and_explicit_v1_are_encoded_defaults() {
        let ca = ca();
        let cert = Certificate::from_der(&issue(&ca, &clean())).unwrap();
        let v3 = [0xa0, 0x03, 0x02, 0x01, 0x02];
        let der = hand_encoded(&cert, &v3, Some(TN_AUTH_LIST));
        assert!(Certificate::from_der(&der).is_ok(), "der decodes it");
        let found = profile_findings(&[der, ca.der.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, "der_encoded_default");
        assert!(
            found[0].detail.contains("TNAuthList"),
            "{}",
            found[0].detail
        );

        // version v1 written out ([0] INTEGER 0), on a certificate without extensions.
        let mut bare = cert.clone();
        bare.tbs_certificate.extensions = None;
        bare.tbs_certificate.version = Version::V1;
        let plain = bare.to_der().unwrap();
        assert_eq!(codes_of(&[plain]), Vec::<&str>::new());
        let mut t = vec![0xa0, 0x03, 0x02, 0x01, 0x00];
        t.extend(tbs_content(&bare.to_der().unwrap()).unwrap());
        let mut c = der_tlv(0x30, &t);
        c.extend(bare.signature_algorithm.to_der().unwrap());
        c.extend(bare.signature.to_der().unwrap());
        assert_eq!(codes_of(&[der_tlv(0x30, &c)]), vec!["der_encoded_default"]);
    }

    #[test]
    fn non_minimal_key_usage_bits_are_not_canonical() {
        // digitalSignature with 0 unused bits: DER trims trailing zero bits (03 02 07 80).
        let codes = leaf_codes(|p| {
            p.key_usages.clear();
            p.custom_extensions
                .push(custom(&[2, 5, 29, 15], vec![0x03, 0x02, 0x00, 0x80], true));
        });
        assert_eq!(codes, vec!["der_not_canonical"]);
    }

    #[test]
    fn extensions_need_v3() {
        assert_eq!(
            patched_codes(|c| c.tbs_certificate.version = Version::V2),
            vec!["version"]
        );
    }

    #[test]
    fn serial_numbers() {
        assert_eq!(
            patched_codes(|c| {
                c.tbs_certificate.serial_number =
                    x509_cert::serial_number::SerialNumber::new(&[0]).unwrap();
            }),
            vec!["serial_number", "serial_number_short"]
        );
        assert_eq!(
            leaf_codes(|p| p.serial_number = Some(SerialNumber::from_slice(&[0x7f; 7]))),
            vec!["serial_number_short"]
        );
        assert_eq!(
            leaf_codes(|p| p.serial_number = Some(SerialNumber::from_slice(&[0x7f; 8]))),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn signature_algorithms() {
        assert_eq!(
            patched_codes(|c| {
                c.tbs_certificate.signature.oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
            }),
            vec!["signature_algorithm_mismatch"]
        );
        assert_eq!(
            patched_codes(|c| {
                c.tbs_certificate.signature.parameters = Some(Any::null());
                c.signature_algorithm.parameters = Some(Any::null());
            }),
            vec![
                "signature_algorithm_parameters",
                "signature_algorithm_parameters"
            ]
        );
    }

    #[test]
    fn dates_before_2050_are_utc_time() {
        let codes = patched_codes(|c| {
            let t = c.tbs_certificate.validity.not_after.to_unix_duration();
            c.tbs_certificate.validity.not_after =
                Time::GeneralTime(GeneralizedTime::from_unix_duration(t).unwrap());
        });
        assert_eq!(codes, vec!["validity_time_type"]);
    }

    #[test]
    fn utf8_country_in_subject_and_issuer() {
        // rcgen's default string type, which the broker's CSR once carried.
        let codes = leaf_codes(|p| {
            p.distinguished_name
                .push(DnType::CountryName, DnValue::Utf8String("US".into()));
        });
        assert_eq!(codes, vec!["country_not_printable"]);
        let codes = patched_codes(|c| {
            for rdn in c.tbs_certificate.issuer.0.iter_mut() {
                let mut atvs = rdn.0.clone().into_vec();
                for atv in &mut atvs {
                    if atv.oid == AT_COUNTRY {
                        atv.value = Any::new(Tag::Utf8String, b"US".to_vec()).unwrap();
                    }
                }
                rdn.0 = atvs.try_into().unwrap();
            }
        });
        assert_eq!(codes, vec!["country_not_printable"]);
        let f = profile_findings(&[{
            let ca = ca();
            let mut p = clean();
            p.distinguished_name.push(
                DnType::CountryName,
                DnValue::PrintableString("USA".try_into().unwrap()),
            );
            issue(&ca, &p)
        }]);
        assert_eq!(f.len(), 1);
        assert!(f[0].detail.contains("3 octets"), "{}", f[0].detail);
    }

    #[test]
    fn duplicate_extension() {
        let codes = patched_codes(|c| {
            let exts = c.tbs_certificate.extensions.as_mut().unwrap();
            let ski = exts
                .iter()
                .find(|e| e.extn_id == SUBJECT_KEY_ID)
                .unwrap()
                .clone();
            exts.push(ski);
        });
        assert_eq!(codes, vec!["duplicate_extension"]);
    }

    #[test]
    fn subject_attributes() {
        assert_eq!(
            leaf_codes(|p| {
                p.distinguished_name.remove(DnType::OrganizationName);
            }),
            vec!["subject_attribute_missing"]
        );
        assert_eq!(
            leaf_codes(|p| {
                p.distinguished_name.remove(serial_number_attr());
            }),
            vec!["subject_serial_number_missing"]
        );
    }

    #[test]
    fn basic_constraints() {
        assert_eq!(
            leaf_codes(|p| without(p, &[2, 5, 29, 19])),
            vec!["basic_constraints_missing"]
        );
        assert_eq!(
            leaf_codes(|p| p.custom_extensions[0] = bc_ext(&[0x30, 0x00], false)),
            vec!["basic_constraints_not_critical"]
        );
        assert_eq!(
            leaf_codes(|p| p.custom_extensions[0] = bc_ext(&[0x30, 0x03, 0x02, 0x01, 0x00], true)),
            vec!["basic_constraints_path_len"]
        );
    }

    #[test]
    fn key_usage() {
        assert_eq!(
            leaf_codes(|p| p.key_usages.clear()),
            vec!["key_usage_missing"]
        );
        assert_eq!(
            leaf_codes(|p| {
                p.key_usages.clear();
                p.custom_extensions.push(custom(
                    &[2, 5, 29, 15],
                    vec![0x03, 0x02, 0x07, 0x80],
                    false,
                ));
            }),
            vec!["key_usage_not_critical"]
        );
        assert_eq!(
            leaf_codes(|p| p.key_usages.push(KeyUsagePurpose::KeyEncipherment)),
            vec!["key_usage_bits"]
        );
    }

    #[test]
    fn sca_profile() {
        let sca = |p: &mut CertificateParams, usages: Vec<KeyUsagePurpose>| {
            without(p, &[2, 5, 29, 19]);
            without(p, &[2, 5, 29, 14]);
            p.is_ca = IsCa::Ca(RcBasicConstraints::Constrained(0));
            p.key_usages = usages;
        };
        assert_eq!(
            leaf_codes(|p| sca(
                p,
                vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign
                ]
            )),
            Vec::<&str>::new()
        );
        assert_eq!(
            leaf_codes(|p| sca(p, vec![KeyUsagePurpose::DigitalSignature])),
            vec!["key_usage_bits"]
        );
        // anyPolicy is allowed for a CA, not for an end entity.
        // SEQUENCE { SEQUENCE { OID 2.5.29.32.0 } }
        let any_policy = vec![0x30, 0x08, 0x30, 0x06, 0x06, 0x04, 0x55, 0x1d, 0x20, 0x00];
        let with_any = |p: &mut CertificateParams| {
            without(p, &[2, 5, 29, 32]);
            p.custom_extensions
                .push(custom(&[2, 5, 29, 32], any_policy.clone(), false));
        };
        assert_eq!(
            leaf_codes(|p| {
                sca(p, vec![KeyUsagePurpose::KeyCertSign]);
                with_any(p);
            }),
            Vec::<&str>::new()
        );
        assert_eq!(leaf_codes(with_any), vec!["certificate_policies"]);
    }

    #[test]
    fn certificate_policies() {
        assert_eq!(
            leaf_codes(|p| without(p, &[2, 5, 29, 32])),
            vec!["certificate_policies_missing"]
        );
        // Two policies: the CP 1.3 one twice over is still not "exactly one".
        let two = {
            let inner = &CP_1_3[2..];
            let mut c = inner.to_vec();
            c.extend_from_slice(inner);
            der_tlv(0x30, &c)
        };
        assert_eq!(
            leaf_codes(|p| {
                without(p, &[2, 5, 29, 32]);
                p.custom_extensions
                    .push(custom(&[2, 5, 29, 32], two, false));
            }),
            vec!["certificate_policies"]
        );
    }

    #[test]
    fn crl_distribution_points() {
        assert_eq!(
            leaf_codes(|p| p.crl_distribution_points.clear()),
            vec!["crl_distribution_points_missing"]
        );
        assert_eq!(
            leaf_codes(|p| p.crl_distribution_points[0].uris = vec!["ldap://crl.example/".into()]),
            vec!["crl_distribution_points"]
        );
        assert_eq!(
            leaf_codes(|p| p.crl_distribution_points.push(CrlDistributionPoint {
                uris: vec![CRL_URL.into()]
            })),
            vec!["crl_distribution_points"]
        );
    }

    #[test]
    fn key_identifiers() {
        assert_eq!(
            leaf_codes(|p| without(p, &[2, 5, 29, 14])),
            vec!["subject_key_id_missing"]
        );
        assert_eq!(
            leaf_codes(|p| p.use_authority_key_identifier_extension = false),
            vec!["authority_key_id_missing"]
        );
    }

    #[test]
    fn other_extensions() {
        assert_eq!(
            leaf_codes(|p| {
                without(p, &[2, 5, 29, 14]);
                p.custom_extensions.push(ski_ext(true));
            }),
            vec!["extension_critical"]
        );
        assert_eq!(
            leaf_codes(|p| p
                .extended_key_usages
                .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth)),
            vec!["extension_unexpected"]
        );
    }

    #[test]
    fn without_tnauthlist_only_encoding_rules_apply() {
        // A Web PKI style certificate: no SHAKEN rule is asked of it, DER still is.
        let codes = leaf_codes(|p| {
            p.custom_extensions.clear();
            p.key_usages.clear();
            p.crl_distribution_points.clear();
            p.distinguished_name = dn(&[(DnType::CommonName, "www.example")]);
        });
        assert_eq!(codes, Vec::<&str>::new());
        let codes = leaf_codes(|p| {
            p.custom_extensions.clear();
            p.is_ca = IsCa::ExplicitNoCa;
        });
        assert_eq!(codes, vec!["der_encoded_default"]);
    }

    #[test]
    fn every_code_is_documented_once() {
        let mut names: Vec<&str> = CODES.iter().map(|(c, _)| *c).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
