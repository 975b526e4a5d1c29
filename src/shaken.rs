//! SHAKEN data formats: the TNAuthList (RFC 8226), the CSR a SHAKEN CA expects, and the
//! checks an issued STI certificate must pass (ATIS-1000080).

mod tnauthlist;

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
}
