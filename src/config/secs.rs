//! Serde for a `Duration` written as whole seconds (the `*_secs` keys). The keys keep their
//! names and their integer values (as before, a fractional value is a type error naming
//! the key); only the Rust side is a `Duration`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// Writes `d` as whole seconds.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// Reads whole seconds.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_secs(u64::deserialize(d)?))
}

/// Reads whole seconds, at least `MIN`; a smaller value is an error that loading reports
/// with the key (``invalid `server.request_timeout_secs`: must be at least 1 second ...``).
pub(crate) fn at_least<'de, const MIN: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs < MIN {
        let unit = if MIN == 1 { "second" } else { "seconds" };
        return Err(D::Error::custom(format!("must be at least {MIN} {unit}")));
    }
    Ok(Duration::from_secs(secs))
}

/// An optional [`Duration`] in whole seconds.
pub(crate) mod option {
    use super::*;

    /// Writes `d` as whole seconds, or nothing.
    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    /// Reads whole seconds, at least 1, when present.
    pub(crate) fn deserialize_at_least_one<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<u64>::deserialize(d)? {
            Some(0) => Err(D::Error::custom("must be at least 1 second")),
            secs => Ok(secs.map(Duration::from_secs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize)]
    struct T {
        #[serde(with = "super", rename = "a_secs")]
        a: Duration,
        #[serde(
            serialize_with = "super::serialize",
            deserialize_with = "super::at_least::<3, _>",
            rename = "b_secs"
        )]
        b: Duration,
        #[serde(
            default,
            serialize_with = "super::option::serialize",
            deserialize_with = "super::option::deserialize_at_least_one",
            rename = "c_secs"
        )]
        c: Option<Duration>,
    }

    #[test]
    fn whole_seconds_with_lower_bounds() {
        let t: T = serde_json::from_str(r#"{"a_secs":0,"b_secs":3,"c_secs":7}"#).unwrap();
        assert_eq!(
            (t.a, t.b, t.c),
            (
                Duration::ZERO,
                Duration::from_secs(3),
                Some(Duration::from_secs(7))
            )
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a_secs":0,"b_secs":3,"c_secs":7}"#
        );
        let t: T = serde_json::from_str(r#"{"a_secs":1,"b_secs":4}"#).unwrap();
        assert_eq!(t.c, None);
        for (bad, reason) in [
            (r#"{"a_secs":1,"b_secs":2}"#, "must be at least 3"),
            (
                r#"{"a_secs":1,"b_secs":3,"c_secs":0}"#,
                "must be at least 1",
            ),
            (r#"{"a_secs":1.5,"b_secs":3}"#, "invalid type"),
        ] {
            let err = serde_json::from_str::<T>(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
