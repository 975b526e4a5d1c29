//! Profile defects written into issued end-entity certificates on purpose
//! ([`super::Behaviour::set_profile_defect`]), so tests can see a client's strict checks
//! react. The certificate the PKI issued is decoded, changed, and signed again by the
//! intermediate, so that the chain still verifies and only the defect differs.

use der::{
    Decode, Encode,
    asn1::{BitString, ObjectIdentifier, OctetString},
};
use x509_cert::{Certificate, ext::Extension};

use super::pki::{Issued, Pki};

/// A defect the devca writes into the end-entity certificates it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileDefect {
    /// basicConstraints `cA FALSE` written out (`30 03 01 01 00`): a DEFAULT value encoded,
    /// which DER forbids (X.690 §11.5) and pyca `cryptography` refuses.
    EncodedDefault,
    /// No keyUsage extension (ATIS-1000080 §6.4.1 requires a critical digitalSignature).
    NoKeyUsage,
}

const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

/// `issued` with `defect` written into its leaf, re-signed by the intermediate.
pub(crate) fn apply(
    defect: ProfileDefect,
    mut issued: Issued,
    pki: &Pki,
) -> Result<Issued, String> {
    let mut cert = Certificate::from_der(&issued.leaf_der).map_err(|e| e.to_string())?;
    let exts = cert.tbs_certificate.extensions.get_or_insert_with(Vec::new);
    match defect {
        ProfileDefect::EncodedDefault => {
            let value =
                OctetString::new(vec![0x30, 0x03, 0x01, 0x01, 0x00]).map_err(|e| e.to_string())?;
            match exts.iter_mut().find(|e| e.extn_id == BASIC_CONSTRAINTS) {
                Some(bc) => bc.extn_value = value,
                None => exts.push(Extension {
                    extn_id: BASIC_CONSTRAINTS,
                    critical: true,
                    extn_value: value,
                }),
            }
        }
        ProfileDefect::NoKeyUsage => exts.retain(|e| e.extn_id != KEY_USAGE),
    }
    let tbs = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let signature = pki.sign_as_intermediate(&tbs).map_err(|e| e.to_string())?;
    cert.signature = BitString::from_bytes(&signature).map_err(|e| e.to_string())?;
    let leaf_der = cert.to_der().map_err(|e| e.to_string())?;
    // The chain is leaf first: swap the first PEM block.
    const END: &str = "-----END CERTIFICATE-----";
    let rest = issued
        .chain_pem
        .find(END)
        .map(|i| issued.chain_pem[i + END.len()..].trim_start())
        .unwrap_or_default();
    issued.chain_pem = format!("{}{rest}", pem(&leaf_der));
    issued.leaf_der = leaf_der;
    Ok(issued)
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
