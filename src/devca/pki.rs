//! The embedded CA's keys and certificates, and issuance with the SHAKEN profile
//! (ATIS-1000080 v005 §6.4.1 and US SHAKEN CP 1.3/1.4, as the zlint SHAKEN lints encode
//! them; shaken-acme.md §3; each rule and the test that checks it: docs/profile.md).
//!
//! Encoding rules every artefact here follows, because independent parsers reject the
//! alternatives (pyca `cryptography`, pkilint):
//! - An end entity's basicConstraints is the empty SEQUENCE `30 00`: DER forbids encoding
//!   the DEFAULT `cA FALSE` (X.690 §11.5), which rcgen's `IsCa::ExplicitNoCa` writes.
//! - countryName and serialNumber are PrintableString ([`Subject::to_distinguished_name`]).
//! - The SKI is the 160-bit SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 §4.2.1.2
//!   method 1), and every AKI is its issuer's SKI.
//! - Roots carry neither certificatePolicies nor a CRLDP; intermediates, SCAs and end
//!   entities carry the one SHAKEN CP OID and one CRLDP (with a cRLIssuer under CP 1.4).
//! - CRLs are v2 with AKI and CRL number (RFC 5280 §5.2), reason codes only when not
//!   `unspecified` (§5.3.1).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};
use url::Url;

use super::{DevCaError, DevProfile};
use crate::shaken::{Subject, TN_AUTH_LIST_OID, TnAuthList, generate_key};

const CERTIFICATE_POLICIES_OID: &[u64] = &[2, 5, 29, 32];
const CRL_DISTRIBUTION_POINTS_OID: &[u64] = &[2, 5, 29, 31];
const BASIC_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 19];
const SUBJECT_KEY_IDENTIFIER_OID: &[u64] = &[2, 5, 29, 14];
/// The DER of `SHAKEN CP OID` minus its last arc: 2.16.840.1.114569.1.1.
const SHAKEN_CP_PREFIX: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x86, 0xff, 0x09, 0x01, 0x01];

/// Path of the CRL the intermediate signs: end-entity and SCA certificates.
pub(crate) const CRL_PATH: &str = "/download/v1/crl";
/// Path of the CRL the SHAKEN root signs: the intermediate.
pub(crate) const ROOT_CRL_PATH: &str = "/download/v1/root-crl";

impl DevProfile {
    /// The certificatePolicies extension value: the one SHAKEN CP OID of this profile.
    fn certificate_policies_der(self) -> Vec<u8> {
        let last = match self {
            Self::UsCp13 => 3,
            Self::UsCp14 => 4,
        };
        let oid = tlv(0x06, &[SHAKEN_CP_PREFIX, &[last]].concat());
        // CertificatePolicies ::= SEQUENCE OF PolicyInformation { policyIdentifier }
        tlv(0x30, &tlv(0x30, &oid))
    }
}

/// Everything the embedded CA signs with.
pub(crate) struct Pki {
    profile: DevProfile,
    pub(crate) tls_root_pem: String,
    pub(crate) tls_server_der: Vec<u8>,
    pub(crate) tls_server_key_der: Vec<u8>,
    pub(crate) shaken_root_pem: String,
    root_params: CertificateParams,
    root_key: KeyPair,
    intermediate_params: CertificateParams,
    intermediate_key: KeyPair,
    intermediate_name_der: Vec<u8>,
    pub(crate) intermediate_pem: String,
    /// PKCS#8 DER of the STI-PA token-signing key.
    pub(crate) stipa_key_der: Vec<u8>,
    /// SPKI DER of the STI-PA token-signing key.
    pub(crate) stipa_spki_der: Vec<u8>,
    pub(crate) stipa_cert_pem: String,
    pub(crate) stipa_cert_der: Vec<u8>,
    /// PKCS#8 DER of a key that signs deliberately wrong tokens.
    pub(crate) wrong_key_der: Vec<u8>,
    /// The CRL of end-entity and SCA certificates (the STI-PA token API's `crl`).
    pub(crate) crl_url: String,
}

/// What a certificate is issued for.
pub(crate) struct IssueRequest {
    pub(crate) spki_der: Vec<u8>,
    pub(crate) subject: Subject,
    pub(crate) tn_auth_list: Option<TnAuthList>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) ca: bool,
    pub(crate) not_after: OffsetDateTime,
}

/// An issued certificate.
pub(crate) struct Issued {
    pub(crate) leaf_der: Vec<u8>,
    /// Leaf then intermediate, PEM; the root is not included (RFC 8555 §7.4.2).
    pub(crate) chain_pem: String,
    pub(crate) serial_hex: String,
}

/// A revoked certificate as a CRL lists it.
pub(crate) struct RevokedEntry {
    /// Lowercase hex, no leading zero byte.
    pub(crate) serial_hex: String,
    /// RFC 5280 CRLReason; 0 (unspecified) is left out of the entry (§5.3.1).
    pub(crate) reason: u8,
    pub(crate) revoked_at: OffsetDateTime,
}

impl Pki {
    pub(crate) fn generate(
        base: &Url,
        listen: IpAddr,
        profile: DevProfile,
    ) -> Result<Self, DevCaError> {
        let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
        let key = || generate_key().map_err(|e| DevCaError::Pki(e.to_string()));
        let dn = |cn: &str| {
            Subject {
                country: "US".into(),
                organization: "certbroker devca".into(),
                common_name: cn.into(),
                serial_number: None,
            }
            .to_distinguished_name()
            .map_err(|e| DevCaError::Pki(e.to_string()))
        };
        let now = OffsetDateTime::now_utc();
        let crl_url = format!("{}{}", base.as_str(), &CRL_PATH[1..]);
        let root_crl_url = format!("{}{}", base.as_str(), &ROOT_CRL_PATH[1..]);

        // The TLS PKI of the HTTPS endpoints: not SHAKEN, so no policies and no CRLDP.
        let tls_root_key = key()?;
        let mut tls_root_params = ca_params(&tls_root_key, now, None);
        tls_root_params.distinguished_name = dn("certbroker devca TLS root")?;
        let tls_root = tls_root_params.self_signed(&tls_root_key).map_err(err)?;
        let tls_issuer = Issuer::from_params(&tls_root_params, &tls_root_key);
        let tls_server_key = key()?;
        let mut tls_params = ee_params(&tls_server_key, now, now + Duration::days(365));
        tls_params.distinguished_name = dn("localhost")?;
        tls_params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().map_err(err)?),
            SanType::IpAddress(listen),
        ];
        let tls_server = tls_params
            .signed_by(&tls_server_key, &tls_issuer)
            .map_err(err)?;

        // The SHAKEN root: CN with "ROOT", no certificatePolicies, no CRLDP.
        let root_key = key()?;
        let mut root_params = ca_params(&root_key, now, None);
        root_params.distinguished_name = dn("SHAKEN devca ROOT")?;
        let root = root_params.self_signed(&root_key).map_err(err)?;
        let root_name_der = subject_der(root.der())?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        // One level below: the subordinate CA (SCA) certificates it issues for delegate
        // certificates (RFC 9060) must be able to sign end-entity certificates.
        let intermediate_key = key()?;
        let mut intermediate_params = ca_params(&intermediate_key, now, Some(1));
        intermediate_params.distinguished_name = dn("SHAKEN devca Intermediate")?;
        intermediate_params
            .custom_extensions
            .push(certificate_policies(profile));
        intermediate_params
            .custom_extensions
            .push(crl_distribution_point(
                &root_crl_url,
                (profile == DevProfile::UsCp14).then_some(root_name_der.as_slice()),
            ));
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .map_err(err)?;
        let intermediate_name_der = subject_der(intermediate.der())?;

        let stipa_key = key()?;
        let mut stipa_params = ee_params(&stipa_key, now, now + Duration::days(365));
        stipa_params.distinguished_name = dn("STI-PA devca token signing")?;
        let stipa = stipa_params
            .signed_by(&stipa_key, &root_issuer)
            .map_err(err)?;

        Ok(Self {
            profile,
            tls_root_pem: tls_root.pem(),
            tls_server_der: tls_server.der().to_vec(),
            tls_server_key_der: tls_server_key.serialize_der(),
            shaken_root_pem: root.pem(),
            root_params,
            root_key,
            intermediate_pem: intermediate.pem(),
            intermediate_params,
            intermediate_key,
            intermediate_name_der,
            stipa_key_der: stipa_key.serialize_der(),
            stipa_spki_der: rcgen::PublicKeyData::subject_public_key_info(&stipa_key),
            stipa_cert_pem: stipa.pem(),
            stipa_cert_der: stipa.der().to_vec(),
            wrong_key_der: key()?.serialize_der(),
            crl_url,
        })
    }

    /// Issues a SHAKEN certificate from the intermediate: random 128-bit serial; subject C,
    /// O, CN (and serialNumber) from the CSR, re-encoded; under CP 1.3 a serialNumber the
    /// CSR lacks becomes the certificate serial in uppercase hex (CP 1.3 §3.1: "shall");
    /// basicConstraints and keyUsage critical; SKI, AKI, the profile's CP OID, a CRLDP at
    /// the intermediate's CRL and the TNAuthList non-critical.
    pub(crate) fn issue(&self, req: &IssueRequest) -> Result<Issued, DevCaError> {
        let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
        let now = OffsetDateTime::now_utc();
        let spki = SubjectPublicKeyInfo::from_der(&req.spki_der).map_err(err)?;
        let mut params = if req.ca {
            let mut p = ca_params(&spki, now, Some(0));
            p.not_after = req.not_after;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            p
        } else {
            ee_params(&spki, now, req.not_after)
        };
        let mut subject = req.subject.clone();
        if subject.serial_number.is_none() && self.profile == DevProfile::UsCp13 {
            subject.serial_number = Some(serial_hex(&params).to_ascii_uppercase());
        }
        params.distinguished_name = subject
            .to_distinguished_name()
            .map_err(|e| DevCaError::Pki(e.to_string()))?;
        params
            .custom_extensions
            .push(certificate_policies(self.profile));
        params.custom_extensions.push(crl_distribution_point(
            &self.crl_url,
            (self.profile == DevProfile::UsCp14).then_some(self.intermediate_name_der.as_slice()),
        ));
        params.subject_alt_names = req
            .dns_names
            .iter()
            .map(|n| n.clone().try_into().map(SanType::DnsName))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        if let Some(list) = &req.tn_auth_list {
            let mut ext = CustomExtension::from_oid_content(TN_AUTH_LIST_OID, list.to_der());
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        let issuer = Issuer::from_params(&self.intermediate_params, &self.intermediate_key);
        let leaf = params.signed_by(&spki, &issuer).map_err(err)?;
        Ok(Issued {
            leaf_der: leaf.der().to_vec(),
            chain_pem: format!("{}{}", leaf.pem(), self.intermediate_pem),
            serial_hex: serial_hex(&params),
        })
    }

    /// The DER CRL of the certificates the intermediate issued, listing `revoked`, valid for
    /// a day. The real SHAKEN CRL is the STI-PA's; one issuer per CRL keeps the devca small.
    pub(crate) fn crl(&self, revoked: &[RevokedEntry]) -> Result<Vec<u8>, DevCaError> {
        sign_crl(&self.intermediate_params, &self.intermediate_key, revoked)
    }

    /// The DER CRL of the CA certificates the root issued (the intermediate, never revoked).
    pub(crate) fn root_crl(&self) -> Result<Vec<u8>, DevCaError> {
        sign_crl(&self.root_params, &self.root_key, &[])
    }
}

fn sign_crl(
    params: &CertificateParams,
    key: &KeyPair,
    revoked: &[RevokedEntry],
) -> Result<Vec<u8>, DevCaError> {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .filter_map(|r| Some((hex::decode(&r.serial_hex).ok()?, r)))
        .map(|(serial, r)| rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: r.revoked_at,
            reason_code: revocation_reason(r.reason),
            invalidity_date: None,
        })
        .collect();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(1),
        // Increases with time, as RFC 5280 §5.2.3 wants, without state.
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // The AKI is the issuer's SKI (its SHA-1 method-1 identifier).
        key_identifier_method: params.key_identifier_method.clone(),
    };
    let issuer = Issuer::from_params(params, key);
    Ok(crl
        .signed_by(&issuer)
        .map_err(|e| DevCaError::Pki(e.to_string()))?
        .der()
        .to_vec())
}

/// RFC 5280 §5.3.1: the reasonCode entry extension is left out for `unspecified` (0) and
/// for values rcgen cannot name.
fn revocation_reason(code: u8) -> Option<RevocationReason> {
    Some(match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

fn serial_hex(params: &CertificateParams) -> String {
    let hex = params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.to_bytes()))
        .unwrap_or_default();
    hex.trim_start_matches("00").to_owned()
}

/// A CA certificate: CA:TRUE (critical, optional pathLen), keyCertSign + cRLSign (critical),
/// SKI (SHA-1 of the key), AKI; valid ten years. No policies or CRLDP: callers add them.
fn ca_params(
    key: &impl rcgen::PublicKeyData,
    now: OffsetDateTime,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = base_params(key, now, now + Duration::days(3650));
    p.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// An end entity: basicConstraints the empty SEQUENCE (critical; cA FALSE is the DEFAULT, so
/// DER leaves it out), SKI (SHA-1 of the key), digitalSignature (critical), AKI.
fn ee_params(
    key: &impl rcgen::PublicKeyData,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut p = base_params(key, now, not_after);
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut bc = CustomExtension::from_oid_content(BASIC_CONSTRAINTS_OID, vec![0x30, 0x00]);
    bc.set_criticality(true);
    p.custom_extensions.push(bc);
    // rcgen writes the SKI only for CA certificates; an end entity gets it here.
    p.custom_extensions.push(CustomExtension::from_oid_content(
        SUBJECT_KEY_IDENTIFIER_OID,
        tlv(0x04, &key_id(key)),
    ));
    p
}

/// Validity (notBefore backdated five minutes), a random positive 128-bit serial, the AKI,
/// and the SHA-1 key identifier as the SKI and as the AKI of what this certificate issues.
fn base_params(
    key: &impl rcgen::PublicKeyData,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = now - Duration::minutes(5);
    p.not_after = not_after;
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(key));
    let mut serial: [u8; 16] = rand::random();
    // Positive and exactly 16 bytes: clear the sign bit, set the next one.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p
}

/// RFC 5280 §4.2.1.2 method 1: the SHA-1 of the subjectPublicKey BIT STRING's bits (the
/// key, without tag, length and unused-bits octet).
fn key_id(key: &impl rcgen::PublicKeyData) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key.der_bytes())
        .as_ref()
        .to_vec()
}

fn certificate_policies(profile: DevProfile) -> CustomExtension {
    CustomExtension::from_oid_content(CERTIFICATE_POLICIES_OID, profile.certificate_policies_der())
}

/// CRLDistributionPoints with one DistributionPoint: `fullName` the one URI, and under CP 1.4
/// a `cRLIssuer` directoryName (the DER Name of the CRL's issuer). RFC 5280 §4.2.1.13:
/// ```text
/// DistributionPoint ::= SEQUENCE {
///     distributionPoint [0] DistributionPointName OPTIONAL,  -- explicit: a CHOICE
///     cRLIssuer         [2] GeneralNames OPTIONAL }          -- implicit SEQUENCE OF
/// DistributionPointName ::= CHOICE { fullName [0] GeneralNames, ... }
/// GeneralName: uniformResourceIdentifier [6] IA5String, directoryName [4] Name (explicit)
/// ```
fn crl_distribution_point(uri: &str, crl_issuer: Option<&[u8]>) -> CustomExtension {
    let full_name = tlv(0xa0, &tlv(0x86, uri.as_bytes()));
    let mut point = tlv(0xa0, &full_name);
    if let Some(name) = crl_issuer {
        point.extend(tlv(0xa2, &tlv(0xa4, name)));
    }
    CustomExtension::from_oid_content(CRL_DISTRIBUTION_POINTS_OID, tlv(0x30, &tlv(0x30, &point)))
}

/// The DER of a certificate's subject Name.
fn subject_der(cert_der: &[u8]) -> Result<Vec<u8>, DevCaError> {
    x509_parser::parse_x509_certificate(cert_der)
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .map_err(|e| DevCaError::Pki(format!("reading back a generated certificate: {e}")))
}

/// One DER TLV (definite length, short or long form).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaken::{CertInfo, Expected, check_issued, parse_pem_chain};

    fn pki_with(profile: DevProfile) -> Pki {
        Pki::generate(
            &Url::parse("https://127.0.0.1:1/").unwrap(),
            "127.0.0.1".parse().unwrap(),
            profile,
        )
        .unwrap()
    }

    fn pki() -> Pki {
        pki_with(DevProfile::UsCp13)
    }

    fn request(ca: bool) -> (IssueRequest, KeyPair) {
        let key = generate_key().unwrap();
        let req = IssueRequest {
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            subject: Subject::shaken("Example Telecom", "1234"),
            tn_auth_list: Some(TnAuthList::from_spc("1234").unwrap()),
            dns_names: vec![],
            ca,
            not_after: OffsetDateTime::now_utc() + Duration::days(1),
        };
        (req, key)
    }

    #[test]
    fn end_entity_has_the_shaken_profile() {
        let pki = pki();
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let chain = parse_pem_chain(&issued.chain_pem).unwrap();
        assert_eq!(chain.len(), 2, "leaf and intermediate, no root");
        let leaf = check_issued(
            &chain,
            &Expected {
                tn_auth_list: req.tn_auth_list.as_ref(),
                dns_names: &[],
                public_key_spki_der: &req.spki_der,
                ca: req.ca,
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(leaf.serial_hex, issued.serial_hex);
        assert!(leaf.serial_hex.len() >= 16, "serial of at least 64 bits");
        // CP 1.3 §3.1: a CSR without serialNumber gets the certificate serial.
        assert_eq!(
            leaf.subject,
            req.subject
                .clone()
                .with_serial_number(issued.serial_hex.to_ascii_uppercase())
        );
        assert!(!leaf.is_ca);
        assert_eq!(leaf.policy_oids, vec!["2.16.840.1.114569.1.1.3".to_owned()]);
        assert!(leaf.subject_key_id.is_some() && leaf.authority_key_id.is_some());
        let critical: Vec<&str> = leaf
            .extensions
            .iter()
            .filter(|(_, c)| *c)
            .map(|(o, _)| o.as_str())
            .collect();
        assert_eq!(
            critical.len(),
            2,
            "only BasicConstraints and KeyUsage: {critical:?}"
        );
        assert!(critical.contains(&"2.5.29.19") && critical.contains(&"2.5.29.15"));
        assert!(
            leaf.extensions.iter().any(|(o, _)| o == "2.5.29.31"),
            "CRLDP"
        );
        let intermediate = CertInfo::parse(&chain[1]).unwrap();
        assert!(intermediate.is_ca);
        assert!(intermediate.tn_auth_list.is_none());
        assert_eq!(leaf.authority_key_id, intermediate.subject_key_id);
    }

    #[test]
    fn ca_request_gives_a_ca_certificate() {
        let pki = pki();
        let (req, _key) = request(true);
        let chain = parse_pem_chain(&pki.issue(&req).unwrap().chain_pem).unwrap();
        assert!(CertInfo::parse(&chain[0]).unwrap().is_ca);
    }

    #[test]
    fn crl_lists_revoked_serials() {
        let pki = pki();
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let der = pki
            .crl(&[RevokedEntry {
                serial_hex: issued.serial_hex.clone(),
                reason: 1,
                revoked_at: OffsetDateTime::now_utc(),
            }])
            .unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![issued.serial_hex]);
    }

    #[test]
    fn end_entity_basic_constraints_is_the_empty_sequence_and_ski_is_sha1() {
        let pki = pki();
        let (req, key) = request(false);
        let der = pki.issue(&req).unwrap().leaf_der;
        // Extension { 2.5.29.19, critical TRUE, OCTET STRING { SEQUENCE {} } }: no cA FALSE.
        let needle = hex::decode("0603551d130101ff04023000").unwrap();
        assert!(der.windows(needle.len()).any(|w| w == needle.as_slice()));
        let info = CertInfo::parse(&der).unwrap();
        let sha1 = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            rcgen::PublicKeyData::der_bytes(&key),
        );
        assert_eq!(info.subject_key_id.as_deref(), Some(sha1.as_ref()));
    }

    #[test]
    fn cp_1_4_has_its_policy_a_crl_issuer_and_adds_no_serial_number() {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let pki = pki_with(DevProfile::UsCp14);
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let info = CertInfo::parse(&issued.leaf_der).unwrap();
        assert_eq!(info.policy_oids, vec!["2.16.840.1.114569.1.1.4".to_owned()]);
        assert_eq!(
            info.subject, req.subject,
            "serialNumber only when the CSR has one"
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&issued.leaf_der).unwrap();
        let crl_issuer = x509
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::CRLDistributionPoints(p) => p.points[0].crl_issuer.clone(),
                _ => None,
            })
            .expect("cRLIssuer");
        match &crl_issuer[..] {
            [GeneralName::DirectoryName(name)] => assert_eq!(name, x509.issuer()),
            other => panic!("cRLIssuer {other:?}"),
        }
    }

    #[test]
    fn serials_differ() {
        let pki = pki();
        let (req, _key) = request(false);
        let a = pki.issue(&req).unwrap();
        let b = pki.issue(&req).unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
    }
}
