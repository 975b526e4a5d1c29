//! Which `CERTBROKER_*` variables are configuration overrides (the rule is in the README's
//! configuration reference), and which names a configuration file refers to in `*_env` keys.

use std::collections::BTreeSet;

use figment::{
    Figment,
    providers::{Format, Toml},
};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "CERTBROKER_";

/// `CERTBROKER_*` variables the command line reads itself (`--config`, and the client's
/// `--addr`, `--ca-cert`, `--cert`, `--key`); never configuration overrides.
pub const CLI_ENV: &[&str] = &[
    "CERTBROKER_CONFIG",
    "CERTBROKER_ADDR",
    "CERTBROKER_CA_CERT",
    "CERTBROKER_CLIENT_CERT",
    "CERTBROKER_CLIENT_KEY",
];

/// The top-level keys of [`Settings`]: a variable whose name starts with one of them followed
/// by a single `_` is taken for a misspelt override.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "store",
    "broker",
    "telemetry",
    "renewal",
    "publish",
    "ca",
    "pool",
    "policy",
];

/// What a variable in the process environment is to the configuration loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvRole {
    /// Does not start with `CERTBROKER_` (case-insensitively, as figment matches it).
    NotOurs,
    /// Starts with `CERTBROKER_` but is no override: one of [`CLI_ENV`], a name some `*_env`
    /// key of the file refers to, a Kubernetes service-link variable, or any other name
    /// without `__` whose first segment is not a top-level key.
    NotConfig,
    /// `CERTBROKER_<KEY>__<KEY>...` (or a bare top-level key): loaded, and an unknown key or
    /// a bad value stops start-up naming it.
    Override,
    /// A top-level key and a single `_` (`CERTBROKER_SERVER_LISTEN`): most likely an override
    /// with the wrong separator, so start-up stops rather than ignoring it.
    Misspelt,
}

/// Sorts one environment variable name; `referenced` holds the names the configuration file
/// gives in `*_env` keys (e.g. `ca.sti_pa.password_env`).
///
/// The order matters: CLI names and referenced secrets first, then anything with `__` is an
/// override (so a real override always wins), then the kubelet's service links, then the
/// typo check.
pub fn classify_env(name: &str, referenced: &BTreeSet<String>) -> EnvRole {
    let prefix_len = ENV_PREFIX.len();
    if name.len() < prefix_len
        || !name.is_char_boundary(prefix_len)
        || !name[..prefix_len].eq_ignore_ascii_case(ENV_PREFIX)
    {
        return EnvRole::NotOurs;
    }
    if CLI_ENV.iter().any(|c| c.eq_ignore_ascii_case(name)) || referenced.contains(name) {
        return EnvRole::NotConfig;
    }
    let rest = &name[prefix_len..];
    if rest.contains("__") {
        return EnvRole::Override;
    }
    if is_service_link(name) {
        return EnvRole::NotConfig;
    }
    let first = rest.split('_').next().unwrap_or_default();
    match TOP_LEVEL_KEYS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(first))
    {
        Some(_) if first.len() == rest.len() => EnvRole::Override,
        Some(_) => EnvRole::Misspelt,
        None => EnvRole::NotConfig,
    }
}

/// The variables the kubelet sets for every Service with a cluster IP in the pod's namespace
/// (`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT NAME>]`, `<NAME>_PORT`,
/// `<NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`, the name upper-cased with `-` as `_`).
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
        || name.ends_with("_PORT")
    {
        return true;
    }
    // ..._PORT_<digits>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]
    name.match_indices("_PORT_").any(|(i, m)| {
        let tail = &name[i + m.len()..];
        let mut parts = tail.split('_');
        let number = parts.next().unwrap_or_default();
        let proto = parts.next().unwrap_or_default();
        let field = parts.next();
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && matches!(proto, "TCP" | "UDP" | "SCTP")
            && matches!(field, None | Some("PROTO" | "PORT" | "ADDR"))
            && parts.next().is_none()
    })
}

/// Values of every `*_env` key in a TOML file (any depth, in tables and arrays of tables):
/// the environment variables the file names for its secrets. An unreadable file gives none
/// (loading it reports the error).
pub(super) fn env_names_referenced_by(file: &std::path::Path) -> BTreeSet<String> {
    fn walk(value: &figment::value::Value, out: &mut BTreeSet<String>) {
        use figment::value::Value;
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    match v {
                        Value::String(_, s) if k.ends_with("_env") => {
                            out.insert(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(_, items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(value) = Figment::from(Toml::file(file)).extract::<figment::value::Value>() {
        walk(&value, &mut out);
    }
    out
}
