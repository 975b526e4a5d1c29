//! Property tests beside the fuzz targets in fuzz/ (run by scripts/fuzz): the parsers that
//! read attacker-controlled bytes — TNAuthList DER and its string form, CSRs, SPC tokens,
//! ACME responses — never panic, and round-trip where a round trip exists. They run with
//! every `cargo test`; case counts are bounded so CI stays fast.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use certbroker::{
    acme::{Authorization, Challenge, Directory, OrderState, Problem},
    challenge::AuthorityToken,
    shaken::{TkValueEncoding, TnAuthList, TnEntry, parse_csr},
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn entry() -> impl Strategy<Value = TnEntry> {
    prop_oneof![
        "[A-Za-z0-9]{1,12}".prop_map(|s| TnEntry::spc(&s).expect("valid SPC")),
        "[0-9#*]{1,15}".prop_map(|s| TnEntry::one(&s).expect("valid TN")),
        ("[0-9]{1,15}", 2u32..100_000)
            .prop_map(|(s, n)| TnEntry::range(&s, n).expect("valid range")),
    ]
}

/// DER-ish bytes: valid encodings with random edits, so the parser gets past the first tag.
fn mutated_der() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(entry(), 1..4),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<usize>(),
    )
        .prop_map(|(entries, edits, cut)| {
            let mut der = TnAuthList::new(entries).expect("non-empty").to_der();
            for (at, byte) in edits {
                let i = at % der.len();
                der[i] = byte;
            }
            der.truncate(cut % (der.len() + 1));
            der
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tnauthlist_round_trips(entries in proptest::collection::vec(entry(), 1..6)) {
        let list = TnAuthList::new(entries).expect("non-empty");
        let der = list.to_der();
        prop_assert_eq!(TnAuthList::from_der(&der).expect("own DER parses"), list.clone());
        for enc in [TkValueEncoding::Base64, TkValueEncoding::Base64Url] {
            prop_assert_eq!(TnAuthList::decode(&list.encode(enc)).expect("own string parses"), list.clone());
        }
    }

    #[test]
    fn tnauthlist_der_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = TnAuthList::from_der(&bytes);
    }

    #[test]
    fn tnauthlist_mutated_der_never_panics(der in mutated_der()) {
        if let Ok(list) = TnAuthList::from_der(&der) {
            // Whatever parses re-encodes to something that parses to the same list.
            prop_assert_eq!(TnAuthList::from_der(&list.to_der()).expect("re-encoding parses"), list);
        }
    }

    #[test]
    fn tnauthlist_string_never_panics(s in "\\PC{0,200}") {
        let _ = TnAuthList::decode(&s);
    }

    #[test]
    fn csr_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_csr(&bytes);
    }

    #[test]
    fn spc_token_parsing_never_panics(s in "\\PC{0,300}") {
        let _ = AuthorityToken::parse(&s);
    }

    #[test]
    fn spc_token_with_arbitrary_json_never_panics(header in any_json(), claims in any_json(), sig in "[A-Za-z0-9_-]{0,20}") {
        let jwt = format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
        );
        let _ = AuthorityToken::parse(&jwt);
    }

    #[test]
    fn acme_responses_never_panic(v in any_json(), raw in "\\PC{0,200}") {
        for text in [v.to_string(), raw] {
            let _ = serde_json::from_str::<Directory>(&text);
            let _ = serde_json::from_str::<OrderState>(&text);
            let _ = serde_json::from_str::<Authorization>(&text);
            let _ = serde_json::from_str::<Challenge>(&text);
            let _ = serde_json::from_str::<Problem>(&text);
        }
    }
}

/// JSON values shaped like ACME and JWT objects: known field names, any values.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("valid"),
            Just("pending"),
            Just("ready"),
            Just("ES256"),
            Just("tkauth-01"),
            Just("TNAuthList"),
            Just("https://x/")
        ]
        .prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("status"),
        Just("identifier"),
        Just("challenges"),
        Just("type"),
        Just("url"),
        Just("token"),
        Just("newNonce"),
        Just("newAccount"),
        Just("newOrder"),
        Just("meta"),
        Just("authorizations"),
        Just("finalize"),
        Just("certificate"),
        Just("detail"),
        Just("subproblems"),
        Just("alg"),
        Just("x5u"),
        Just("exp"),
        Just("jti"),
        Just("atc"),
        Just("tktype"),
        Just("tkvalue"),
        Just("fingerprint"),
        Just("ca"),
        Just("value"),
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys.clone().prop_map(str::to_owned), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
