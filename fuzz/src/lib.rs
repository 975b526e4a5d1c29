//! Shared pieces of the fuzz targets: a fixed test key that signs what a target builds (so
//! inputs get past signature checks into the parsers behind them), small DER helpers, and the
//! seed inputs each target starts from.
//!
//! Seeds are generated from the library at run time rather than checked in: `scripts/fuzz`
//! runs each target once with `CERTBROKER_FUZZ_SEEDS=<dir>`, which writes the seeds there
//! and exits before fuzzing starts (see [`write_seeds_if_asked`]).

use std::sync::OnceLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    },
};
use serde_json::{Value, json};

pub mod seeds;

/// A P-256 key made for these fuzz targets only (PKCS#8 DER). It signs nothing outside them.
const TEST_KEY_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201\
    010420bc12e80c4729094bed9610bd21d14675bfed4cc3d88e778ee0970b134e0facbba14403420004d58375ec\
    65cf2a116828be9b9056f3dc08325cfc04fd823f1e263c6ddd1880f4a4f77ba35aa5f8150dbf7d7dc2e57be363\
    eff471eecd9151b4bbe601bd27365b";

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The test key's PKCS#8 DER.
pub fn test_key_pkcs8() -> Vec<u8> {
    (0..TEST_KEY_PKCS8.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TEST_KEY_PKCS8[i..i + 2], 16).expect("hex constant"))
        .collect()
}

fn key(alg: &'static ring::signature::EcdsaSigningAlgorithm) -> EcdsaKeyPair {
    EcdsaKeyPair::from_pkcs8(alg, &test_key_pkcs8(), &SystemRandom::new()).expect("test key")
}

/// The test key, signing ASN.1 DER ECDSA signatures (X.509, PKCS#10).
fn der_signer() -> &'static EcdsaKeyPair {
    static KEY: OnceLock<EcdsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| key(&ECDSA_P256_SHA256_ASN1_SIGNING))
}

/// The test key, signing fixed-size `r || s` ECDSA signatures (JWS ES256).
fn jws_signer() -> &'static EcdsaKeyPair {
    static KEY: OnceLock<EcdsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| key(&ECDSA_P256_SHA256_FIXED_SIGNING))
}

/// The test key as an rcgen key pair, for building CSRs and certificates.
pub fn test_key_rcgen() -> rcgen::KeyPair {
    rcgen::KeyPair::try_from(test_key_pkcs8().as_slice()).expect("test key")
}

/// The test key's DER SubjectPublicKeyInfo.
pub fn test_key_spki() -> Vec<u8> {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(der_signer().public_key().as_ref());
    spki
}

/// The test key's public JWK.
pub fn test_key_jwk() -> Value {
    let point = jws_signer().public_key().as_ref();
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    })
}

/// A DER TLV with a one-byte tag: the library's own encoder.
pub use certbroker::shaken::der_tlv;

/// The first TLV inside the SEQUENCE `der` (e.g. a CSR's CertificationRequestInfo).
pub fn first_inner_tlv(der: &[u8]) -> Option<&[u8]> {
    let (_, outer) = split_tlv(der)?;
    let (head, len) = header_lengths(outer)?;
    outer.get(..head.checked_add(len)?)
}

/// `(header length, content length)` of the TLV at the start of `der`.
fn header_lengths(der: &[u8]) -> Option<(usize, usize)> {
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let len = der
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((2 + n, len))
}

/// The tag and content of the TLV at the start of `der`.
fn split_tlv(der: &[u8]) -> Option<(u8, &[u8])> {
    let (head, len) = header_lengths(der)?;
    Some((der[0], der.get(head..head.checked_add(len)?)?))
}

/// A PKCS#10 CSR: `info` (any bytes, meant as a CertificationRequestInfo) signed with the
/// test key, ecdsa-with-SHA256.
pub fn sign_csr_info(info: &[u8]) -> Vec<u8> {
    let sig = der_signer()
        .sign(&SystemRandom::new(), info)
        .expect("signing cannot fail");
    // AlgorithmIdentifier { ecdsa-with-SHA256 } without parameters.
    let alg = der_tlv(
        0x30,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
    );
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_ref());
    let mut body = info.to_vec();
    body.extend(alg);
    body.extend(der_tlv(0x03, &bits));
    der_tlv(0x30, &body)
}

/// A flattened JWS (RFC 7515 §7.2.2) of `protected` and `payload`, signed ES256 with the test
/// key whatever the header says.
pub fn sign_flattened_jws(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let protected = URL_SAFE_NO_PAD.encode(protected);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let sig = jws_signer()
        .sign(
            &SystemRandom::new(),
            format!("{protected}.{payload}").as_bytes(),
        )
        .expect("signing cannot fail");
    json!({
        "protected": protected,
        "payload": payload,
        "signature": URL_SAFE_NO_PAD.encode(sig.as_ref()),
    })
    .to_string()
    .into_bytes()
}

/// A compact JWS (JWT) of `header` and `claims`, signed ES256 with the test key.
pub fn sign_compact_jws(header: &Value, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jws_signer()
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .expect("signing cannot fail");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// If `CERTBROKER_FUZZ_SEEDS` names a directory, writes `seeds` there (one file each) and
/// exits: `scripts/fuzz` calls every target this way before fuzzing it. Call it from the
/// target's `init`.
pub fn write_seeds_if_asked(seeds: fn() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("CERTBROKER_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("creating the seed directory");
    let seeds = seeds();
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("writing a seed");
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}
