//! SPC token (JWT) decoding: `AuthorityToken::parse` of whatever an STI-PA or a token file
//! returns (mode byte 0, then the JWT; mode byte 1, then the claims JSON of an ES256 JWT),
//! then `check` against the request the token claims to answer.
//!
//! Invariants: a parsed token keeps the text it came from, never shows it in `Debug`, its
//! fields re-serialize into a token that parses to the same fields, and `check` against a
//! request built from its own claims never reports a mismatch.

#![no_main]

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use certbroker::{
    challenge::{AuthorityToken, TokenRequest},
    shaken::TnAuthList,
};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(
    init: certbroker_fuzz::write_seeds_if_asked(certbroker_fuzz::seeds::token),
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        // The claims as JSON bytes: mutations reach `exp`, `jti` and `atc` directly
        // rather than through base64url.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(rest))
    };
    let text = text.as_str();
    let Ok(token) = AuthorityToken::parse(text) else {
        return;
    };
    assert_eq!(token.jwt(), text.trim());
    assert!(
        !format!("{token:?}").contains(token.jwt()),
        "Debug shows the JWT"
    );

    let claims = json!({
        "exp": token.expires_at.unix_timestamp(),
        "jti": token.jti,
        "atc": {"tktype": token.tktype, "tkvalue": token.tkvalue, "ca": token.ca,
                "fingerprint": token.fingerprint},
    });
    // `parse` does not check signatures (the CA does): a dummy one keeps this fast.
    let again = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let again = AuthorityToken::parse(&again).expect("re-serialized token parses");
    assert_eq!(
        (
            again.expires_at,
            &again.jti,
            &again.tktype,
            &again.tkvalue,
            again.ca,
            &again.fingerprint
        ),
        (
            token.expires_at,
            &token.jti,
            &token.tktype,
            &token.tkvalue,
            token.ca,
            &token.fingerprint
        )
    );

    let Ok(tn_auth_list) = TnAuthList::decode(&token.tkvalue) else {
        return;
    };
    let req = TokenRequest {
        tn_auth_list,
        ca: token.ca,
        fingerprint: token.fingerprint.clone(),
    };
    // The refresh margins the broker uses: none (fresh from the STI-PA) and a cache's.
    for margin in [Duration::ZERO, Duration::from_secs(300)] {
        match token.check(&req, margin) {
            Ok(()) | Err(certbroker::challenge::TokenError::Expired(_)) => {}
            Err(e) => assert!(!token.tktype.eq_ignore_ascii_case("TNAuthList"), "{e}"),
        }
    }
}
