//! Certificate inspection: `CertInfo::parse` of one DER certificate (mode byte 0) and
//! `parse_pem_chain` of a PEM chain (mode byte 1), then `check_issued`, which the broker runs
//! on every chain a CA returns.
//!
//! Invariants: the info describes the very bytes parsed (DER, SHA-256, serial without a sign
//! byte), a TNAuthList round-trips, and `check_issued` of a lone certificate against its own
//! values fails only for the reasons it documents.

#![no_main]

use certbroker::shaken::{
    CertInfo, Expected, ShakenError, TnAuthList, check_issued, parse_pem_chain,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: certbroker_fuzz::write_seeds_if_asked(certbroker_fuzz::seeds::cert),
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(info) = CertInfo::parse(rest) {
            check_info(&info, rest);
            check_alone(&info);
        }
    } else if let Ok(pem) = std::str::from_utf8(rest) {
        let Ok(chain) = parse_pem_chain(pem) else {
            return;
        };
        assert!(!chain.is_empty());
        let Ok(leaf) = CertInfo::parse(&chain[0]) else {
            return;
        };
        check_info(&leaf, &chain[0]);
        let _ = check_issued(&chain, &expected(&leaf), leaf.not_before);
    }
}

fn check_info(info: &CertInfo, der: &[u8]) {
    assert_eq!(info.der, der);
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    assert!(info.sha256_fingerprint_hex.len() == 64 && hex(&info.sha256_fingerprint_hex));
    assert!(hex(&info.serial_hex) && info.serial_hex.len().is_multiple_of(2));
    assert!(
        info.serial_hex == "00" || !info.serial_hex.starts_with("00"),
        "{}",
        info.serial_hex
    );
    if let Some(list) = &info.tn_auth_list {
        assert_eq!(TnAuthList::from_der(&list.to_der()).as_ref(), Ok(list));
    }
}

fn expected(leaf: &CertInfo) -> Expected<'_> {
    Expected {
        tn_auth_list: leaf.tn_auth_list.as_ref(),
        dns_names: &leaf.dns_names,
        public_key_spki_der: &leaf.public_key_spki_der,
        ca: leaf.is_ca,
    }
}

/// A lone certificate checked against its own TNAuthList, names and key at its notBefore can
/// only fail the SHAKEN key/signature rules, criticality, or an inverted validity.
fn check_alone(info: &CertInfo) {
    let result = check_issued(
        std::slice::from_ref(&info.der),
        &expected(info),
        info.not_before,
    );
    let shaken = info.tn_auth_list.is_some();
    let may_fail = (shaken
        && (!info.key_is_p256
            || info.signature_algorithm_oid != "1.2.840.10045.4.3.2"
            || info.tn_auth_list_critical))
        || info.not_after < info.not_before;
    match result {
        Ok(leaf) => assert_eq!(&leaf, info),
        Err(ShakenError::Profile { check, reason }) => {
            assert!(may_fail, "unexpected {check} failure: {reason}");
        }
        Err(e) => panic!("a certificate that parsed fails to parse again: {e}"),
    }
}
