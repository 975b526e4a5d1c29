//! Certificate parameters and extensions of the SHAKEN profile: validity, serial and key
//! identifiers, CA and end-entity parameters, certificatePolicies and CRLDistributionPoints
//! (each rule and its test: docs/profile.md).

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyIdMethod, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::super::{DevCaError, DevProfile};
use crate::shaken::der_tlv;

pub(super) const CERTIFICATE_POLICIES_OID: &[u64] = &[2, 5, 29, 32];
pub(super) const CRL_DISTRIBUTION_POINTS_OID: &[u64] = &[2, 5, 29, 31];
pub(super) const BASIC_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 19];
pub(super) const SUBJECT_KEY_IDENTIFIER_OID: &[u64] = &[2, 5, 29, 14];
/// The DER of `SHAKEN CP OID` minus its last arc: 2.16.840.1.114569.1.1.
pub(super) const SHAKEN_CP_PREFIX: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x86, 0xff, 0x09, 0x01, 0x01];

impl DevProfile {
    /// The certificatePolicies extension value: the one SHAKEN CP OID of this profile.
    pub(super) fn certificate_policies_der(self) -> Vec<u8> {
        let last = match self {
            Self::UsCp13 => 3,
            Self::UsCp14 => 4,
        };
        let oid = der_tlv(0x06, &[SHAKEN_CP_PREFIX, &[last]].concat());
        // CertificatePolicies ::= SEQUENCE OF PolicyInformation { policyIdentifier }
        der_tlv(0x30, &der_tlv(0x30, &oid))
    }
}

pub(super) fn serial_hex(params: &CertificateParams) -> String {
    let hex = params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.to_bytes()))
        .unwrap_or_default();
    hex.trim_start_matches("00").to_owned()
}

/// A CA certificate: CA:TRUE (critical, optional pathLen), keyCertSign + cRLSign (critical),
/// SKI (SHA-1 of the key), AKI; valid ten years. No policies or CRLDP: callers add them.
pub(super) fn ca_params(
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
pub(super) fn ee_params(
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
        der_tlv(0x04, &key_id(key)),
    ));
    p
}

/// Validity (notBefore backdated five minutes), a random positive 128-bit serial, the AKI,
/// and the SHA-1 key identifier as the SKI and as the AKI of what this certificate issues.
pub(super) fn base_params(
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
pub(super) fn key_id(key: &impl rcgen::PublicKeyData) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key.der_bytes())
        .as_ref()
        .to_vec()
}

pub(super) fn certificate_policies(profile: DevProfile) -> CustomExtension {
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
pub(super) fn crl_distribution_point(uri: &str, crl_issuer: Option<&[u8]>) -> CustomExtension {
    let full_name = der_tlv(0xa0, &der_tlv(0x86, uri.as_bytes()));
    let mut point = der_tlv(0xa0, &full_name);
    if let Some(name) = crl_issuer {
        point.extend(der_tlv(0xa2, &der_tlv(0xa4, name)));
    }
    CustomExtension::from_oid_content(
        CRL_DISTRIBUTION_POINTS_OID,
        der_tlv(0x30, &der_tlv(0x30, &point)),
    )
}

/// The DER of a certificate's subject Name.
pub(super) fn subject_der(cert_der: &[u8]) -> Result<Vec<u8>, DevCaError> {
    x509_parser::parse_x509_certificate(cert_der)
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .map_err(|e| DevCaError::Pki(format!("reading back a generated certificate: {e}")))
}
