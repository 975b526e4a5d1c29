//! The PKCS#10 CSR a SHAKEN STI-CA expects (ATIS-1000080 §6.4.1, shaken-acme.md §3): a
//! P-256 key, subject `C=US, O=<org>, CN=SHAKEN <SPC>, serialNumber=<sn>`, and an
//! extensionRequest carrying the non-critical TNAuthList (RFC 8226 §9). The CA adds policies
//! and CRL distribution points.
//!
//! Subject encoding (docs/profile.md): countryName and serialNumber are PrintableString, as
//! X.520 and RFC 5280 Appendix A define them (a CA that copies the CSR subject copies the
//! string type too); organizationName and commonName are UTF8String (RFC 5280 §4.1.2.6).

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, KeyPair,
    PKCS_ECDSA_P256_SHA256, SanType, string::PrintableString,
};
use x509_parser::{
    certification_request::X509CertificationRequest,
    cri_attributes::ParsedCriAttribute,
    extensions::{GeneralName, ParsedExtension, X509Extension},
    prelude::FromDer,
    x509::X509Name,
};

use super::{
    ECDSA_SHA256_OID, ShakenError, TN_AUTH_LIST_OID, TN_AUTH_LIST_OID_STR, TnAuthList, is_p256_spki,
};

/// The subject of a SHAKEN certificate: country, organization, common name and serial
/// number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Country, `US` in the US ecosystem: two letters (ISO 3166), encoded as a
    /// PrintableString.
    pub country: String,
    /// The service provider's legal name.
    pub organization: String,
    /// `SHAKEN <SPC>` for an end-entity certificate.
    pub common_name: String,
    /// The `serialNumber` attribute (2.5.4.5, a PrintableString of 1 to 64 characters), which
    /// US SHAKEN CP 1.3 §3.1 requires beside the CN "to distinguish among successive
    /// instances of certificates associated with the same entity" (CP 1.4: may). `None`:
    /// absent.
    pub serial_number: Option<String>,
}

/// What goes into a CSR.
#[derive(Debug, Clone, Copy)]
pub struct CsrSpec<'a> {
    /// The subject.
    pub subject: &'a Subject,
    /// The TNAuthList to request as a non-critical extension, if any.
    pub tn_auth_list: Option<&'a TnAuthList>,
    /// DNS names to request as subjectAltName.
    pub dns_names: &'a [String],
    /// Request a CA certificate (basicConstraints CA:TRUE, critical), as for an SCA.
    pub ca: bool,
}

/// A CSR whose self-signature verified, with what a SHAKEN CA looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    /// The DER `SubjectPublicKeyInfo` of the requested key.
    pub public_key_spki_der: Vec<u8>,
    /// True when the key is P-256.
    pub key_is_p256: bool,
    /// Dotted OID of the signature algorithm.
    pub signature_algorithm_oid: String,
    /// The requested TNAuthList, decoded.
    pub tn_auth_list: Option<TnAuthList>,
    /// Whether the TNAuthList extension was marked critical (SHAKEN forbids it).
    pub tn_auth_list_critical: bool,
    /// The requested DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// Whether basicConstraints CA:TRUE was requested.
    pub ca: bool,
    /// The subject; a missing attribute is an empty string.
    pub subject: Subject,
}

// === impl Subject ===

impl Subject {
    /// The end-entity subject: `C=US, O=<org>, CN=SHAKEN <spc>`.
    /// No serialNumber; see [`Subject::with_serial_number`].
    pub fn shaken(org: &str, spc: &str) -> Self {
        Self {
            country: "US".to_owned(),
            organization: org.to_owned(),
            common_name: format!("SHAKEN {spc}"),
            serial_number: None,
        }
    }

    /// The same subject with this `serialNumber`.
    pub fn with_serial_number(self, serial_number: impl Into<String>) -> Self {
        Self {
            serial_number: Some(serial_number.into()),
            ..self
        }
    }

    pub(crate) fn from_x509_name(name: &X509Name<'_>) -> Self {
        Self {
            country: first_str(name.iter_country()),
            organization: first_str(name.iter_organization()),
            common_name: first_str(name.iter_common_name()),
            serial_number: name
                .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned),
        }
    }

    /// Checks what the encoding needs: a two-letter country (or none: the empty string, as
    /// in a Web PKI CSR for `dns` names that names only a CN) and a serialNumber that is a
    /// PrintableString of 1 to 64 characters (RFC 5280 Appendix A, `ub-serial-number`).
    pub fn validate(&self) -> Result<(), ShakenError> {
        if !self.country.is_empty()
            && (self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(ShakenError::Subject(format!(
                "countryName {:?} must be two uppercase letters (ISO 3166)",
                self.country
            )));
        }
        if let Some(sn) = &self.serial_number {
            if sn.is_empty() || sn.len() > 64 || !sn.chars().all(is_printable) {
                return Err(ShakenError::Subject(format!(
                    "serialNumber {sn:?} must be 1 to 64 PrintableString characters \
                     (A-Z a-z 0-9 space '()+,-./:=?)"
                )));
            }
        }
        Ok(())
    }

    /// `C, O, CN[, serialNumber]`, country and serialNumber as PrintableString; an empty C,
    /// O or CN (absent from the CSR it came from) is left out. Fails as
    /// [`Subject::validate`] does.
    pub(crate) fn to_distinguished_name(&self) -> Result<DistinguishedName, ShakenError> {
        self.validate()?;
        let printable = |s: &str| {
            PrintableString::try_from(s)
                .map(DnValue::PrintableString)
                .map_err(|e| ShakenError::Subject(format!("{s:?}: {e}")))
        };
        let mut dn = DistinguishedName::new();
        if !self.country.is_empty() {
            dn.push(DnType::CountryName, printable(&self.country)?);
        }
        if !self.organization.is_empty() {
            dn.push(DnType::OrganizationName, self.organization.as_str());
        }
        if !self.common_name.is_empty() {
            dn.push(DnType::CommonName, self.common_name.as_str());
        }
        if let Some(sn) = &self.serial_number {
            dn.push(
                DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()),
                printable(sn)?,
            );
        }
        Ok(dn)
    }
}

/// Whether `c` is in the PrintableString alphabet (X.680 §41.4).
pub(crate) fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

/// id-at-serialNumber (X.520).
const SERIAL_NUMBER_OID: &[u64] = &[2, 5, 4, 5];

// === CSR ===

/// Generates a fresh P-256 key pair.
pub fn generate_key() -> Result<KeyPair, ShakenError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ShakenError::Key(e.to_string()))
}

/// Builds a DER PKCS#10 CSR signed with `key` (ECDSA P-256 with SHA-256).
///
/// The TNAuthList goes in the extensionRequest as a non-critical extension whose value is
/// [`TnAuthList::to_der`]; `dns_names` become a subjectAltName; `ca` adds a critical
/// basicConstraints CA:TRUE.
pub fn build_csr(key: &KeyPair, spec: &CsrSpec<'_>) -> Result<Vec<u8>, ShakenError> {
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(ShakenError::Key("SHAKEN requires a P-256 ECDSA key".into()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = spec
        .subject
        .to_distinguished_name()
        .map_err(|e| ShakenError::CsrBuild(e.to_string()))?;
    params.subject_alt_names = spec
        .dns_names
        .iter()
        .map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| ShakenError::CsrBuild(format!("dns name {n:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if let Some(list) = spec.tn_auth_list {
        let mut ext = CustomExtension::from_oid_content(TN_AUTH_LIST_OID, list.to_der());
        ext.set_criticality(false);
        params.custom_extensions.push(ext);
    }
    if spec.ca {
        // basicConstraints ::= SEQUENCE { cA BOOLEAN TRUE } (no pathLen).
        let mut ext =
            CustomExtension::from_oid_content(BASIC_CONSTRAINTS_OID, BASIC_CONSTRAINTS_CA.to_vec());
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    }
    let csr = params
        .serialize_request(key)
        .map_err(|e| ShakenError::CsrBuild(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// Parses a DER CSR and verifies its self-signature.
///
/// Errors: [`ShakenError::CsrMalformed`] when it does not parse (or carries a malformed
/// TNAuthList), [`ShakenError::CsrSignature`] when the signature does not verify.
pub fn parse_csr(der: &[u8]) -> Result<ParsedCsr, ShakenError> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| ShakenError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ShakenError::CsrMalformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|e| ShakenError::CsrSignature(e.to_string()))?;
    let info = &csr.certification_request_info;
    let spki = info.subject_pki.raw.to_vec();
    let mut parsed = ParsedCsr {
        key_is_p256: is_p256_spki(&spki),
        public_key_spki_der: spki,
        signature_algorithm_oid: csr.signature_algorithm.algorithm.to_id_string(),
        tn_auth_list: None,
        tn_auth_list_critical: false,
        dns_names: Vec::new(),
        ca: false,
        subject: Subject::from_x509_name(&info.subject),
    };
    for attr in info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            for ext in &req.extensions {
                read_extension(ext, &mut parsed)?;
            }
        }
    }
    Ok(parsed)
}

impl ParsedCsr {
    /// True when the CSR is signed with ecdsa-with-SHA256, as SHAKEN requires.
    pub fn is_ecdsa_sha256(&self) -> bool {
        self.signature_algorithm_oid == ECDSA_SHA256_OID
    }
}

fn read_extension(ext: &X509Extension<'_>, parsed: &mut ParsedCsr) -> Result<(), ShakenError> {
    if ext.oid.to_id_string() == TN_AUTH_LIST_OID_STR {
        let list = TnAuthList::from_der(ext.value)
            .map_err(|e| ShakenError::CsrMalformed(format!("TNAuthList extension: {e}")))?;
        parsed.tn_auth_list = Some(list);
        parsed.tn_auth_list_critical = ext.critical;
        return Ok(());
    }
    match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => {
            parsed
                .dns_names
                .extend(san.general_names.iter().filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                }));
        }
        ParsedExtension::BasicConstraints(bc) => parsed.ca = bc.ca,
        _ => {}
    }
    Ok(())
}

fn first_str<'a>(
    mut attrs: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> String {
    attrs
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

const BASIC_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 19];
const BASIC_CONSTRAINTS_CA: &[u8] = &[0x30, 0x03, 0x01, 0x01, 0xff];

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData;

    use super::*;

    fn spec_parts() -> (Subject, TnAuthList, Vec<String>) {
        (
            Subject::shaken("Example Telecom", "1234"),
            TnAuthList::from_spc("1234").unwrap(),
            vec!["sti.example.com".to_owned()],
        )
    }

    /// A CSR for `subject` with the TNAuthList `list`, the SANs `dns` and the CA flag `ca`.
    fn csr_der(
        key: &KeyPair,
        subject: &Subject,
        list: &TnAuthList,
        dns: &[String],
        ca: bool,
    ) -> Vec<u8> {
        build_csr(
            key,
            &CsrSpec {
                subject,
                tn_auth_list: Some(list),
                dns_names: dns,
                ca,
            },
        )
        .unwrap()
    }

    #[test]
    fn roundtrip_keeps_tnauthlist_sans_key_subject() {
        let key = generate_key().unwrap();
        let (subject, list, dns) = spec_parts();
        let der = csr_der(&key, &subject, &list, &dns, false);
        let parsed = parse_csr(&der).unwrap();
        assert_eq!(parsed.tn_auth_list.as_ref(), Some(&list));
        assert!(!parsed.tn_auth_list_critical);
        assert_eq!(parsed.dns_names, dns);
        assert_eq!(parsed.public_key_spki_der, key.subject_public_key_info());
        assert!(parsed.key_is_p256);
        assert!(parsed.is_ecdsa_sha256());
        assert!(!parsed.ca);
        assert_eq!(parsed.subject, subject);
        assert_eq!(parsed.subject.common_name, "SHAKEN 1234");
    }

    #[test]
    fn country_and_serial_number_are_printable_strings() {
        let key = generate_key().unwrap();
        let (subject, list, _) = spec_parts();
        let subject = subject.with_serial_number("1234-0A1B");
        let der = csr_der(&key, &subject, &list, &[], false);
        // AttributeTypeAndValue { 2.5.4.6, PrintableString "US" }, { 2.5.4.5, PrintableString }
        let country = hex::decode("0603550406130255 53".replace(' ', "")).unwrap();
        let serial = [
            &hex::decode("060355040513").unwrap()[..],
            &[9],
            b"1234-0A1B",
        ]
        .concat();
        assert!(der.windows(country.len()).any(|w| w == country.as_slice()));
        assert!(der.windows(serial.len()).any(|w| w == serial.as_slice()));
        assert_eq!(parse_csr(&der).unwrap().subject, subject);
    }

    #[test]
    fn unencodable_subjects_are_refused() {
        let key = generate_key().unwrap();
        let (subject, _, _) = spec_parts();
        for bad in [
            Subject {
                country: "USA".into(),
                ..subject.clone()
            },
            subject.clone().with_serial_number("12#4"),
            subject.clone().with_serial_number("x".repeat(65)),
            subject.clone().with_serial_number(""),
        ] {
            let spec = CsrSpec {
                subject: &bad,
                tn_auth_list: None,
                dns_names: &[],
                ca: false,
            };
            assert!(
                matches!(build_csr(&key, &spec), Err(ShakenError::CsrBuild(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn absent_attributes_stay_absent() {
        // A Web PKI CSR for a dns name often names only a CN: nothing empty is encoded.
        let subject = Subject {
            country: String::new(),
            organization: String::new(),
            common_name: "sip.example.test".into(),
            serial_number: None,
        };
        let dn = subject.to_distinguished_name().unwrap();
        assert_eq!(dn.iter().count(), 1, "{dn:?}");
        assert!(dn.get(&DnType::CountryName).is_none());
    }

    #[test]
    fn ca_flag_roundtrips() {
        let key = generate_key().unwrap();
        let (subject, list, _) = spec_parts();
        let der = csr_der(&key, &subject, &list, &[], true);
        let parsed = parse_csr(&der).unwrap();
        assert!(parsed.ca);
        assert!(parsed.dns_names.is_empty());
    }

    #[test]
    fn tnauthlist_extension_is_present_and_non_critical_in_der() {
        let key = generate_key().unwrap();
        let (subject, list, _) = spec_parts();
        let der = csr_der(&key, &subject, &list, &[], false);
        // Extension ::= SEQUENCE { OID 1.3.6.1.5.5.7.1.26, OCTET STRING { TNAuthList } }
        // with no `critical` BOOLEAN between the OID and the OCTET STRING.
        let mut needle = hex::decode("06082b0601050507011a040a").unwrap();
        needle.extend(list.to_der());
        assert!(der.windows(needle.len()).any(|w| w == needle.as_slice()));
    }

    #[test]
    fn tampered_signature_is_a_signature_error() {
        let key = generate_key().unwrap();
        let (subject, list, dns) = spec_parts();
        let mut der = csr_der(&key, &subject, &list, &dns, false);
        // The last byte is inside the signature's BIT STRING (the ECDSA `s` INTEGER).
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert!(matches!(parse_csr(&der), Err(ShakenError::CsrSignature(_))));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            parse_csr(b"not a csr"),
            Err(ShakenError::CsrMalformed(_))
        ));
    }

    #[test]
    fn non_p256_key_is_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let (subject, _, _) = spec_parts();
        let spec = CsrSpec {
            subject: &subject,
            tn_auth_list: None,
            dns_names: &[],
            ca: false,
        };
        assert!(matches!(build_csr(&key, &spec), Err(ShakenError::Key(_))));
    }
}
