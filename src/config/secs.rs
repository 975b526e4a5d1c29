//! Serde for a `Duration` written as whole seconds (the `*_secs` keys).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as whole seconds.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// Reads whole seconds.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_secs(u64::deserialize(d)?))
}
