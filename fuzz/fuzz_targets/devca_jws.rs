//! The devca's verification of incoming ACME requests (flattened JWS, RFC 8555 §6.2): a
//! server-side parser of whatever a client posts. Mode byte 0: the rest is a request body.
//! Mode byte 1 or 2: a 2-byte big-endian length, a protected header and a payload, signed
//! by the target with the test key; in mode 2 the header (if a JSON object) first gets
//! `alg: ES256` and the test key's `jwk`, and loses any `kid`.
//!
//! Invariants: a body verifies only under the key it names; a correctly signed request always
//! verifies and hands back its exact payload; thumbprint and fingerprints are well formed.

#![no_main]

use certbroker::devca::verify_jwk_request;
use certbroker_fuzz::{sign_flattened_jws, test_key_jwk};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(
    init: certbroker_fuzz::write_seeds_if_asked(certbroker_fuzz::seeds::devca_jws),
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(req) = verify_jwk_request(rest) {
                check_fields(&req);
            }
        }
        signed => {
            let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let split = usize::from(u16::from_be_bytes(*len)).min(rest.len());
            let (header, payload) = rest.split_at(split);
            let mut header = header.to_vec();
            let mut must_verify = false;
            if signed == 2
                && let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&header)
            {
                map.insert("alg".into(), "ES256".into());
                map.insert("jwk".into(), test_key_jwk());
                map.remove("kid");
                header = serde_json::to_vec(&map).expect("a map serializes");
                must_verify = true;
            }
            let body = sign_flattened_jws(&header, payload);
            match verify_jwk_request(&body) {
                Ok(req) => {
                    assert_eq!(
                        req.jwk,
                        test_key_jwk(),
                        "verified under a key it was not signed with"
                    );
                    assert_eq!(req.payload, payload);
                    check_fields(&req);
                }
                Err(e) => assert!(!must_verify, "a correctly signed request is refused: {e}"),
            }
        }
    }
}

fn check_fields(req: &certbroker::devca::JwkSignedRequest) {
    assert_eq!(req.thumbprint.len(), 43, "{}", req.thumbprint);
    for fp in &req.fingerprints {
        let hex = fp.strip_prefix("SHA256 ").expect("SHA256 prefix");
        assert_eq!(hex.split(':').count(), 32, "{fp}");
        assert!(
            hex.split(':')
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit())),
            "{fp}"
        );
    }
}
