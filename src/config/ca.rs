//! `[[ca]]` and `[[pool]]`: the upstream STI-CAs and how pools pick among them. Plain
//! settings; `ca` builds its upstreams from them.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

use super::TkAuthSettings;

/// One `[[ca]]` upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaSettings {
    /// Unique name; reported as `issuer_ca`.
    pub name: String,
    /// ACME directory URL.
    pub directory: Url,
    /// PEM bundle trusted for the CA's HTTPS (and the STI-PA's, unless it names its own);
    /// absent: the system's roots.
    #[serde(default)]
    pub trust_roots: Option<PathBuf>,
    /// Pools this CA serves; a request names one (`ca_pool`), empty means `default`.
    #[serde(default = "super::default_pools")]
    pub pools: Vec<String>,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
    /// PKCS#8 PEM of the ACME account key; created (0600) on first use if absent, and
    /// re-read by a running broker when the file changes (`certbroker account rollover`
    /// replaces it).
    pub account_key: PathBuf,
    /// Account contact URLs (`mailto:`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// External account binding, when the CA requires it.
    #[serde(default)]
    pub eab: Option<EabSettings>,
    /// Timeout of one HTTP request to the CA (`request_timeout_secs`, at least 1).
    #[serde(
        default = "default_request_timeout",
        serialize_with = "super::secs::serialize",
        deserialize_with = "super::secs::at_least::<1, _>",
        rename = "request_timeout_secs"
    )]
    pub request_timeout: Duration,
    /// Timeout of one whole order at this CA (per-attempt deadline before failover;
    /// `attempt_timeout_secs`, at least 1).
    #[serde(
        default = "default_attempt_timeout",
        serialize_with = "super::secs::serialize",
        deserialize_with = "super::secs::at_least::<1, _>",
        rename = "attempt_timeout_secs"
    )]
    pub attempt_timeout: Duration,
    /// Subject fields of the CSRs the broker makes.
    #[serde(default)]
    pub csr: CsrSettings,
    /// tkauth-01 dialect of this CA.
    #[serde(default)]
    pub challenge: TkAuthSettings,
    /// Where SPC tokens come from: the STI-PA API ...
    #[serde(default)]
    pub sti_pa: Option<StiPaSettings>,
    /// ... or a file holding a token obtained out of band.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// For `dns` identifiers: where to serve http-01 key authorizations (the CA must reach
    /// it on port 80 of the names, usually through a load balancer). Absent: the broker
    /// answers http-01 without serving anything, for CAs that validate out of band.
    #[serde(default)]
    pub http01_listen: Option<SocketAddr>,
    /// Share of requests among CAs of equal priority in a `weighted` pool (at least 1).
    #[serde(default = "default_weight")]
    pub weight: NonZeroU32,
    /// When to stop sending requests to this CA after failures.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// The CA accepts (Peeringhub: demands) a certificate key equal to the ACME account key.
    /// When set, certificates the broker makes keys for use the account key, and that key
    /// is what the caller receives. Default false: a fresh P-256 key per certificate, as
    /// Boulder-style CAs require.
    #[serde(default)]
    pub allow_account_key_reuse: bool,
    /// Agree to the CA's terms of service (the directory's `meta.termsOfService`) when the
    /// broker creates its account there. Default false: a CA that has terms refuses to open
    /// an account until they are agreed to here, as `certbot --agree-tos` and
    /// `lego --accept-tos` ask.
    #[serde(default)]
    pub accept_terms_of_service: bool,
    /// Certificate lifetime to ask for, sent as `notAfter` in newOrder
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)). Absent: the
    /// CA's default; leave it absent for CAs that reject `notAfter` (`cert_lifetime_secs`,
    /// at least 1).
    #[serde(
        default,
        serialize_with = "super::secs::option::serialize",
        deserialize_with = "super::secs::option::deserialize_at_least_one",
        rename = "cert_lifetime_secs"
    )]
    pub cert_lifetime: Option<Duration>,
    /// Treat a certificate with profile findings (not DER, or off the SHAKEN profile; see
    /// [`crate::shaken::profile_findings`]) as this CA's failure: the pool fails over to the
    /// next CA, and the finding is in the error the caller sees if none succeeds. Default
    /// false: such a certificate is handed out (a signer without one cannot sign at all),
    /// logged at warn and counted in `certbroker_ca_profile_findings_total`.
    #[serde(default)]
    pub strict_profile: bool,
    /// `[ca.star]`: order STAR certificates (RFC 8739) from this CA, when its directory
    /// offers them (`meta.auto-renewal`); a CA without gets ordinary orders. Absent:
    /// ordinary orders.
    #[serde(default)]
    pub star: Option<StarSettings>,
    /// Pre-authorization (`newAuthz`) of SPCs at this CA.
    #[serde(default)]
    pub preauthorization: super::PreauthSettings,
}

/// `[ca.star]`: short-term, automatically renewed certificates
/// ([RFC 8739](https://www.rfc-editor.org/rfc/rfc8739)). The CA issues a new certificate
/// of `lifetime_secs` before the current one expires, until `duration_secs` after the
/// order; the broker fetches each one, and places the next order before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StarSettings {
    /// Validity of each short-term certificate (the order's `auto-renewal.lifetime`;
    /// `lifetime_secs`, at least 1).
    #[serde(
        rename = "lifetime_secs",
        serialize_with = "super::secs::serialize",
        deserialize_with = "super::secs::at_least::<1, _>"
    )]
    pub lifetime: Duration,
    /// How long one STAR order runs (its `end-date` minus now; `duration_secs`, at least
    /// `lifetime_secs`).
    #[serde(
        rename = "duration_secs",
        serialize_with = "super::secs::serialize",
        deserialize_with = "super::secs::deserialize"
    )]
    pub duration: Duration,
}

/// `[ca.breaker]`: the per-CA circuit breaker and `Retry-After` handling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive retryable failures (network, timeout, 5xx, rateLimited) that open the
    /// breaker; while open the CA is skipped.
    pub failure_threshold: NonZeroU32,
    /// How long the breaker stays open before one probe request is let through
    /// (`cool_down_secs`).
    #[serde(with = "super::secs", rename = "cool_down_secs")]
    pub cool_down: Duration,
    /// Upper bound on a CA's `Retry-After`, so a bogus header cannot park a CA for days
    /// (`max_retry_after_secs`).
    #[serde(with = "super::secs", rename = "max_retry_after_secs")]
    pub max_retry_after: Duration,
}

/// `[[pool]]`: how one named pool picks among its CAs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Pool name, as the CAs' `pools` and the request's `ca_pool` say.
    pub name: String,
    /// Order in which CAs are tried.
    #[serde(default)]
    pub policy: PoolPolicy,
    /// Hedging: when the CA being tried has not finished after this long, start the next
    /// one as well; the first valid certificate wins. Absent: strictly one at a time.
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
}

/// Which CA of a pool is tried first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolPolicy {
    /// Lowest `priority` first, configuration order among equals.
    #[default]
    Priority,
    /// Lowest `priority` first; among equals, a random order weighted by `weight`.
    Weighted,
}

/// `[ca.eab]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EabSettings {
    /// Key identifier the CA gave.
    pub key_id: String,
    /// Name of the environment variable holding the base64url HMAC key.
    pub hmac_key_env: String,
}

/// `[ca.csr]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrSettings {
    /// Subject C.
    pub country: String,
    /// Subject O: the carrier's legal name.
    pub organization: String,
    /// Subject CN of end-entity certificates; `{spc}` becomes the first SPC of the
    /// TNAuthList (or its first entry). SHAKEN CAs want `SHAKEN <OCN>` (shaken-acme.md §0.7).
    pub common_name_template: String,
    /// Subject `serialNumber` (a PrintableString of 1 to 64 characters); empty: none.
    /// `{spc}` is what `{spc}` is in the CN, `{random}` 16 hex digits (64 random bits) new
    /// for every CSR. Default `{spc}-{random}`: US SHAKEN CP 1.3 §3.1 requires a
    /// serialNumber beside the CN to tell successive certificates of one entity apart, so
    /// the SPC alone (the same in every certificate of the carrier) would defeat it; the SPC
    /// prefix keeps it naming the carrier, the random part makes each DN distinct without a
    /// counter the fleet would have to share. CAs that assign their own serialNumber
    /// overwrite it.
    pub serial_number_template: String,
}

impl CsrSettings {
    /// The serialNumber for a CSR whose CN's `{spc}` is `spc`, or `None` when the template
    /// is empty. Characters of `spc` outside the PrintableString alphabet (`#` and `*` of a
    /// telephone number) are left out; the caller's subject validation enforces the length.
    pub fn serial_number(&self, spc: &str) -> Option<String> {
        if self.serial_number_template.is_empty() {
            return None;
        }
        let spc: String = spc.chars().filter(|c| is_printable(*c)).collect();
        let random = format!("{:016X}", rand::random::<u64>());
        Some(
            self.serial_number_template
                .replace("{spc}", &spc)
                .replace("{random}", &random),
        )
    }
}

/// Whether `c` is in the PrintableString alphabet (X.680 §41.4).
fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

/// Checks a serialNumber template: only `{spc}` and `{random}` placeholders, literal text
/// in the PrintableString alphabet, and at most 64 characters with a four-character SPC.
pub(super) fn check_serial_number_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Ok(());
    }
    let literal = template.replace("{spc}", "").replace("{random}", "");
    if let Some(c) = literal.chars().find(|c| !is_printable(*c)) {
        return Err(format!(
            "{c:?} is not a PrintableString character (A-Z a-z 0-9 space '()+,-./:=?); \
             placeholders are {{spc}} and {{random}}"
        ));
    }
    let expanded = template
        .replace("{spc}", "1234")
        .replace("{random}", "0123456789ABCDEF");
    if expanded.len() > 64 {
        return Err(format!(
            "expands to {} characters (\"{expanded}\"); the limit is 64",
            expanded.len()
        ));
    }
    Ok(())
}

/// `[ca.sti_pa]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StiPaSettings {
    /// API base, e.g. `https://authenticate-api.iconectiv.com`.
    pub base_url: Url,
    /// Login user id.
    pub user_id: String,
    /// Password, inline; prefer `password_env`.
    #[serde(default, skip_serializing)]
    pub password: Option<SecretString>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM bundle trusted for the STI-PA's HTTPS; absent: the CA's `trust_roots`.
    #[serde(default)]
    pub trust_roots: Option<PathBuf>,
}

// === defaults ===

impl Default for CsrSettings {
    fn default() -> Self {
        Self {
            country: "US".into(),
            organization: "certbroker".into(),
            common_name_template: "SHAKEN {spc}".into(),
            serial_number_template: "{spc}-{random}".into(),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            cool_down: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// Default `breaker.failure_threshold`.
const DEFAULT_FAILURE_THRESHOLD: NonZeroU32 = match NonZeroU32::new(3) {
    Some(n) => n,
    None => panic!("3 is not zero"),
};

fn default_weight() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// Default `request_timeout_secs` of a `[[ca]]`.
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Default `attempt_timeout_secs` of a `[[ca]]`.
fn default_attempt_timeout() -> Duration {
    Duration::from_secs(120)
}
