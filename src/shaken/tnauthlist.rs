//! TNAuthList (RFC 8226 §9), DER with EXPLICIT tags, as SHAKEN uses it:
//!
//! ```text
//! TNAuthorizationList ::= SEQUENCE SIZE (1..MAX) OF TNEntry
//! TNEntry ::= CHOICE { spc [0] ServiceProviderCode, range [1] TelephoneNumberRange,
//!                      one [2] TelephoneNumber }
//! ```
//!
//! An SPC-only list encodes as `30 08 a0 06 16 04 <4 bytes>`: the `[0]` wraps the
//! IA5String (explicit), it does not replace its tag.

use std::fmt;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use der::{Choice, Decode, Encode, Sequence, asn1::Ia5String};

use super::ShakenError;

/// One TNAuthList entry, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TnEntry {
    /// A Service Provider Code (OCN): non-empty IA5 text.
    Spc(String),
    /// A range of telephone numbers starting at `start`.
    Range {
        /// First number: 1 to 15 characters from `0123456789#*`.
        start: String,
        /// How many numbers; at least 2.
        count: u32,
    },
    /// One telephone number: 1 to 15 characters from `0123456789#*`.
    One(String),
}

/// A validated, non-empty TNAuthList.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TnAuthList(Vec<TnEntry>);

/// How a TNAuthList is written as a string in ACME identifiers and in the `tkvalue` of an
/// SPC token request. RFC 9448 says base64url without padding; deployed STI-PAs and CAs
/// use padded standard base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TkValueEncoding {
    /// Standard base64 with `=` padding (iconectiv, Peeringhub). The default.
    #[default]
    Base64,
    /// base64url without padding (RFC 9448 §3, §5).
    Base64Url,
}

// === impl TnEntry ===

impl TnEntry {
    /// Validates and builds an SPC entry.
    pub fn spc(spc: &str) -> Result<Self, ShakenError> {
        let bad = |reason: &str| ShakenError::InvalidEntry {
            field: "spc",
            reason: reason.to_owned(),
        };
        if spc.is_empty() {
            return Err(bad("must not be empty"));
        }
        if !spc.chars().all(|c| c.is_ascii_graphic()) {
            return Err(bad("must be printable ASCII without spaces"));
        }
        Ok(Self::Spc(spc.to_owned()))
    }

    /// Validates and builds a one-number entry.
    pub fn one(tn: &str) -> Result<Self, ShakenError> {
        validate_tn(tn, "tn")?;
        Ok(Self::One(tn.to_owned()))
    }

    /// Validates and builds a range entry.
    pub fn range(start: &str, count: u32) -> Result<Self, ShakenError> {
        validate_tn(start, "range.start")?;
        if count < 2 {
            return Err(ShakenError::InvalidEntry {
                field: "range.count",
                reason: format!("must be at least 2, got {count}"),
            });
        }
        Ok(Self::Range {
            start: start.to_owned(),
            count,
        })
    }
}

impl fmt::Display for TnEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spc(spc) => write!(f, "spc:{spc}"),
            Self::Range { start, count } => write!(f, "range:{start}+{count}"),
            Self::One(tn) => write!(f, "tn:{tn}"),
        }
    }
}

// === impl TnAuthList ===

impl TnAuthList {
    /// Builds a list from validated entries; it must not be empty.
    pub fn new(entries: Vec<TnEntry>) -> Result<Self, ShakenError> {
        if entries.is_empty() {
            return Err(ShakenError::InvalidEntry {
                field: "tn_auth_list",
                reason: "must hold at least one entry".into(),
            });
        }
        Ok(Self(entries))
    }

    /// A list holding the one SPC, the SHAKEN end-entity case.
    pub fn from_spc(spc: &str) -> Result<Self, ShakenError> {
        Self::new(vec![TnEntry::spc(spc)?])
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[TnEntry] {
        &self.0
    }

    /// The SPCs in the list, in order.
    pub fn spcs(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|e| match e {
            TnEntry::Spc(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// DER encoding: the value of the TNAuthList extension and of the ACME identifier.
    pub fn to_der(&self) -> Vec<u8> {
        let asn1: Vec<Asn1Entry> = self.0.iter().map(Asn1Entry::from).collect();
        // Encoding owned, validated values into a Vec cannot fail.
        asn1.to_der().unwrap_or_default()
    }

    /// Decodes and validates DER.
    pub fn from_der(der: &[u8]) -> Result<Self, ShakenError> {
        let asn1 =
            Vec::<Asn1Entry>::from_der(der).map_err(|e| ShakenError::Malformed(e.to_string()))?;
        let entries = asn1
            .into_iter()
            .map(TnEntry::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(entries)
    }

    /// The string form sent to a CA or an STI-PA.
    pub fn encode(&self, encoding: TkValueEncoding) -> String {
        let der = self.to_der();
        match encoding {
            TkValueEncoding::Base64 => STANDARD.encode(der),
            TkValueEncoding::Base64Url => URL_SAFE_NO_PAD.encode(der),
        }
    }

    /// Decodes either string form (padded standard base64 or base64url with or without
    /// padding). Compare lists after decoding, never as strings.
    pub fn decode(value: &str) -> Result<Self, ShakenError> {
        let trimmed = value.trim_end_matches('=');
        let der = if trimmed.contains(['-', '_']) {
            URL_SAFE_NO_PAD.decode(trimmed)
        } else {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed)
        }
        .map_err(|e| ShakenError::Malformed(format!("not base64: {e}")))?;
        Self::from_der(&der)
    }
}

impl fmt::Display for TnAuthList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// === ASN.1 ===

#[derive(Debug, Clone, PartialEq, Eq, Choice)]
enum Asn1Entry {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", constructed = "true")]
    Spc(Ia5String),
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    Range(Asn1Range),
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
    One(Ia5String),
}

#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
struct Asn1Range {
    start: Ia5String,
    count: u32,
}

impl From<&TnEntry> for Asn1Entry {
    fn from(entry: &TnEntry) -> Self {
        // Invariant: entries are validated printable ASCII, which is always IA5.
        #[allow(clippy::expect_used)]
        let ia5 = |s: &str| Ia5String::new(s).expect("validated TnEntry text is IA5");
        match entry {
            TnEntry::Spc(s) => Self::Spc(ia5(s)),
            TnEntry::Range { start, count } => Self::Range(Asn1Range {
                start: ia5(start),
                count: *count,
            }),
            TnEntry::One(s) => Self::One(ia5(s)),
        }
    }
}

impl TryFrom<Asn1Entry> for TnEntry {
    type Error = ShakenError;

    fn try_from(entry: Asn1Entry) -> Result<Self, ShakenError> {
        match entry {
            Asn1Entry::Spc(s) => Self::spc(s.as_str()),
            Asn1Entry::Range(r) => Self::range(r.start.as_str(), r.count),
            Asn1Entry::One(s) => Self::one(s.as_str()),
        }
    }
}

fn validate_tn(tn: &str, field: &'static str) -> Result<(), ShakenError> {
    let bad = |reason: String| ShakenError::InvalidEntry { field, reason };
    if tn.is_empty() || tn.len() > 15 {
        return Err(bad(format!("must be 1 to 15 characters, got {}", tn.len())));
    }
    if let Some(c) = tn.chars().find(|c| !matches!(c, '0'..='9' | '#' | '*')) {
        return Err(bad(format!("character {c:?} is not one of 0-9 # *")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of shaken-acme.md §8: (list, DER hex, padded base64, base64url).
    fn vectors() -> Vec<(TnAuthList, &'static str, &'static str, &'static str)> {
        let l = |e: Vec<TnEntry>| TnAuthList::new(e).unwrap();
        vec![
            (
                l(vec![TnEntry::spc("818H").unwrap()]),
                "3008a006160438313848",
                "MAigBhYEODE4SA==",
                "MAigBhYEODE4SA",
            ),
            (
                l(vec![TnEntry::spc("281K").unwrap()]),
                "3008a00616043238314b",
                "MAigBhYEMjgxSw==",
                "MAigBhYEMjgxSw",
            ),
            (
                l(vec![TnEntry::spc("1234").unwrap()]),
                "3008a006160431323334",
                "MAigBhYEMTIzNA==",
                "MAigBhYEMTIzNA",
            ),
            (
                l(vec![TnEntry::spc("6628").unwrap()]),
                "3008a006160436363238",
                "MAigBhYENjYyOA==",
                "MAigBhYENjYyOA",
            ),
            (
                l(vec![TnEntry::one("12155551212").unwrap()]),
                "300fa20d160b3132313535353531323132",
                "MA+iDRYLMTIxNTU1NTEyMTI=",
                "MA-iDRYLMTIxNTU1NTEyMTI",
            ),
            (
                l(vec![TnEntry::range("12155551000", 100).unwrap()]),
                "3014a1123010160b3132313535353531303030020164",
                "MBShEjAQFgsxMjE1NTU1MTAwMAIBZA==",
                "MBShEjAQFgsxMjE1NTU1MTAwMAIBZA",
            ),
            (
                l(vec![
                    TnEntry::spc("818H").unwrap(),
                    TnEntry::one("12155551212").unwrap(),
                ]),
                "3017a006160438313848a20d160b3132313535353531323132",
                "MBegBhYEODE4SKINFgsxMjE1NTU1MTIxMg==",
                "MBegBhYEODE4SKINFgsxMjE1NTU1MTIxMg",
            ),
        ]
    }

    #[test]
    fn vectors_encode() {
        for (list, der, b64, b64url) in vectors() {
            assert_eq!(hex::encode(list.to_der()), der, "{list}");
            assert_eq!(list.encode(TkValueEncoding::Base64), b64, "{list}");
            assert_eq!(list.encode(TkValueEncoding::Base64Url), b64url, "{list}");
        }
    }

    #[test]
    fn vectors_decode_all_forms() {
        for (list, der, b64, b64url) in vectors() {
            assert_eq!(
                TnAuthList::from_der(&hex::decode(der).unwrap()).unwrap(),
                list
            );
            assert_eq!(TnAuthList::decode(b64).unwrap(), list, "{b64}");
            assert_eq!(TnAuthList::decode(b64url).unwrap(), list, "{b64url}");
        }
    }

    #[test]
    fn implicit_tagging_is_rejected() {
        // akamu's comment claims `spc [0]` is implicit (0x80); real samples are explicit.
        assert!(
            TnAuthList::from_der(&hex::decode("30068004 31323334".replace(' ', "")).unwrap())
                .is_err()
        );
    }

    #[test]
    fn published_typos_do_not_decode() {
        assert!(TnAuthList::decode("MAigxxYEODE4SA==").is_err());
        assert!(TnAuthList::decode("MAigBhzzMjgxSw==").is_err());
    }

    #[test]
    fn validation() {
        assert!(matches!(
            TnEntry::spc(""),
            Err(ShakenError::InvalidEntry { field: "spc", .. })
        ));
        assert!(matches!(
            TnEntry::spc("12 4"),
            Err(ShakenError::InvalidEntry { field: "spc", .. })
        ));
        assert!(matches!(
            TnEntry::one("1215555121x"),
            Err(ShakenError::InvalidEntry { field: "tn", .. })
        ));
        assert!(matches!(
            TnEntry::one("1234567890123456"),
            Err(ShakenError::InvalidEntry { field: "tn", .. })
        ));
        assert!(TnEntry::one("*#0123456789").is_ok());
        assert!(matches!(
            TnEntry::range("1215", 1),
            Err(ShakenError::InvalidEntry {
                field: "range.count",
                ..
            })
        ));
        assert!(matches!(
            TnEntry::range("", 5),
            Err(ShakenError::InvalidEntry {
                field: "range.start",
                ..
            })
        ));
        assert!(matches!(
            TnAuthList::new(vec![]),
            Err(ShakenError::InvalidEntry {
                field: "tn_auth_list",
                ..
            })
        ));
        // An empty SEQUENCE decodes as DER but is not a valid TNAuthList.
        assert!(TnAuthList::from_der(&[0x30, 0x00]).is_err());
    }
}
