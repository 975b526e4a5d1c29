//! SHAKEN data formats: the TNAuthList (RFC 8226), the CSR a SHAKEN CA expects, and the
//! checks an issued STI certificate must pass (ATIS-1000080): [`check_issued`] for what makes
//! a certificate unusable, [`profile_findings`] for the strict DER and profile review.

mod cert;
mod csr;
mod profile;
mod tnauthlist;

pub use cert::{CertInfo, Expected, check_issued, parse_pem_chain};
pub use csr::{CsrSpec, ParsedCsr, Subject, build_csr, generate_key, parse_csr};
pub use profile::{CODES as FINDING_CODES, Finding, profile_findings};
pub use tnauthlist::{TkValueEncoding, TnAuthList, TnEntry};

/// OID of the TNAuthList certificate extension, id-pe 26.
pub const TN_AUTH_LIST_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 26];

/// Errors in SHAKEN data: always a caller's mistake, never an upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShakenError {
    /// A TNAuthList entry is invalid; `field` names which part.
    #[error("invalid {field}: {reason}")]
    InvalidEntry {
        /// Which part: `spc`, `tn`, `range.start`, `range.count`, `tn_auth_list`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The TNAuthList DER or its string encoding did not decode.
    #[error("malformed TNAuthList: {0}")]
    Malformed(String),
    /// A key could not be generated, or is not the P-256 key SHAKEN requires.
    #[error("key: {0}")]
    Key(String),
    /// A subject attribute cannot be encoded as the profile wants (docs/profile.md).
    #[error("subject: {0}")]
    Subject(String),
    /// The CSR could not be built from the given subject, names and key.
    #[error("building CSR: {0}")]
    CsrBuild(String),
    /// The CSR is not a well-formed PKCS#10 request (RFC 2986).
    #[error("CSR does not parse: {0}")]
    CsrMalformed(String),
    /// The CSR parses but its self-signature does not verify against its own key.
    #[error("CSR signature does not verify: {0}")]
    CsrSignature(String),
    /// A certificate or PEM chain does not parse.
    #[error("certificate does not parse: {0}")]
    CertMalformed(String),
    /// An issued certificate or chain fails a SHAKEN profile or consistency check
    /// (ATIS-1000080 §6.4.1).
    #[error("certificate check {check} failed: {reason}")]
    Profile {
        /// Which check: `chain`, `dns_names`, `key_algorithm`, `public_key`,
        /// `signature_algorithm`, `tn_auth_list`, `tn_auth_list_critical`, `validity`.
        check: &'static str,
        /// What was found instead of what was expected.
        reason: String,
    },
}

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1), followed by
/// the 65-byte uncompressed point.
pub(crate) const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Dotted OID of ecdsa-with-SHA256, the only signature SHAKEN allows.
pub(crate) const ECDSA_SHA256_OID: &str = "1.2.840.10045.4.3.2";

/// Dotted OID of the TNAuthList extension.
pub(crate) const TN_AUTH_LIST_OID_STR: &str = "1.3.6.1.5.5.7.1.26";

/// True when `spki_der` is a P-256 public key.
pub(crate) fn is_p256_spki(spki_der: &[u8]) -> bool {
    spki_der.len() == P256_SPKI_PREFIX.len() + 65
        && spki_der.starts_with(P256_SPKI_PREFIX)
        && spki_der[P256_SPKI_PREFIX.len()] == 0x04
}

/// One DER TLV with a one-byte `tag` around `content` (definite length, short or long form).
/// Public so the fuzz crate's seed builders and the tests encode DER the same way.
pub fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
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
