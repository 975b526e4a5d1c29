//! TNAuthList decoding (RFC 8226 §9): DER from certificates, CSRs and ACME identifiers, and
//! the base64 / base64url strings of `tkvalue`. Whatever decodes must round-trip, and DER is
//! canonical, so a decoded list re-encodes to the very bytes it came from.

#![no_main]

use certbroker::shaken::{TkValueEncoding, TnAuthList, TnEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: certbroker_fuzz::write_seeds_if_asked(certbroker_fuzz::seeds::tnauthlist),
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    if let Ok(list) = TnAuthList::from_der(data) {
        assert_eq!(
            list.to_der(),
            data,
            "decoded {list} re-encodes to other bytes"
        );
        round_trips(&list);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(list) = TnAuthList::decode(text)
    {
        round_trips(&list);
    }
}

fn round_trips(list: &TnAuthList) {
    assert_eq!(TnAuthList::from_der(&list.to_der()).as_ref(), Ok(list));
    for encoding in [TkValueEncoding::Base64, TkValueEncoding::Base64Url] {
        assert_eq!(
            TnAuthList::decode(&list.encode(encoding)).as_ref(),
            Ok(list)
        );
    }
    // Every decoded entry passes the same validation as one built by hand.
    for entry in list.entries() {
        let again = match entry {
            TnEntry::Spc(spc) => TnEntry::spc(spc),
            TnEntry::One(tn) => TnEntry::one(tn),
            TnEntry::Range { start, count } => TnEntry::range(start, *count),
        };
        assert_eq!(again.as_ref(), Ok(entry));
    }
    assert!(!list.to_string().is_empty());
}
