//! PKCS#10 CSR parsing with signature verification (what the devca's finalize reads, and
//! what the broker checks of its own CSRs). Mode byte 0: the rest is a whole CSR. Mode byte
//! 1: the rest is a CertificationRequestInfo that the target signs with the test key, so
//! mutated requests get past the signature into the attribute and extension parsing.
//!
//! Invariant: a CSR that parses is rebuilt by `build_csr` from what was parsed (subject,
//! TNAuthList, DNS names, CA flag) and parses back to the same values.

#![no_main]

use certbroker::shaken::{CsrSpec, ShakenError, build_csr, parse_csr};
use certbroker_fuzz::{sign_csr_info, test_key_rcgen, test_key_spki};
use libfuzzer_sys::fuzz_target;
use x509_parser::{certification_request::X509CertificationRequest, prelude::FromDer};

fuzz_target!(
    init: certbroker_fuzz::write_seeds_if_asked(certbroker_fuzz::seeds::csr),
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (der, signed_by_us) = if mode & 1 == 0 {
        (rest.to_vec(), false)
    } else {
        (sign_csr_info(rest), true)
    };
    let parsed = match parse_csr(&der) {
        Ok(parsed) => parsed,
        Err(ShakenError::CsrSignature(e)) => {
            // We signed it: it may only fail to verify when it names another key, or when the
            // info is followed by bytes the parser takes for the algorithm and signature.
            if signed_by_us {
                let ours = X509CertificationRequest::from_der(&der).is_ok_and(|(_, csr)| {
                    let info = &csr.certification_request_info;
                    info.raw == rest && info.subject_pki.raw == test_key_spki()
                });
                assert!(!ours, "a CSR signed with its own key is refused: {e}");
            }
            return;
        }
        Err(_) => return,
    };
    // x509-parser checks the signature with the key's bits and the signature algorithm,
    // not the SPKI's algorithm OID; `key_is_p256`, which the devca enforces, looks at the
    // whole SPKI.
    if signed_by_us {
        let spki = test_key_spki();
        assert!(
            parsed
                .public_key_spki_der
                .ends_with(&spki[spki.len() - 65..]),
            "verified under another key"
        );
    }
    assert_eq!(
        parsed.key_is_p256,
        parsed.public_key_spki_der.len() == 91
            && parsed.public_key_spki_der[..27] == test_key_spki()[..27]
    );
    let key = test_key_rcgen();
    let spec = CsrSpec {
        subject: &parsed.subject,
        tn_auth_list: parsed.tn_auth_list.as_ref(),
        dns_names: &parsed.dns_names,
        ca: parsed.ca,
    };
    // The builder is stricter (e.g. DNS names must be IA5): what it refuses is not ours to
    // rebuild.
    let Ok(rebuilt) = build_csr(&key, &spec) else {
        return;
    };
    let again = parse_csr(&rebuilt).expect("a CSR we built parses");
    assert_eq!(again.subject, parsed.subject);
    assert_eq!(again.tn_auth_list, parsed.tn_auth_list);
    assert_eq!(again.dns_names, parsed.dns_names);
    assert_eq!(again.ca, parsed.ca);
    assert!(!again.tn_auth_list_critical);
}
