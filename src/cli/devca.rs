//! `certbroker devca`: the embedded STI-PA + STI-CA, standalone.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    config::{CaSettings, CsrSettings, StiPaSettings},
    devca::{
        Behaviour, DevCa, DevCaHandle, DevCaSettings, DevProfile, DevRenewalInfo, DevStar,
        InjectedError, Step,
    },
    telemetry,
};

#[derive(Debug, Args)]
pub(crate) struct DevcaArgs {
    /// Address for the HTTPS endpoints (ACME and STI-PA). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for the trust roots, CA keys and STI-PA password; default: a new
    /// temporary directory. Reusing it keeps the roots and password across restarts.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// With --state-dir: listen on the port an earlier run recorded there (the first run
    /// records the one it got), so URLs in a written configuration stay valid.
    #[arg(long, requires = "state_dir")]
    keep_port: bool,
    /// Also write a complete broker configuration for this devca to FILE.
    #[arg(long, value_name = "FILE")]
    write_config: Option<PathBuf>,
    /// Offer ACME Renewal Information (RFC 9773): the directory gets `renewalInfo`, which
    /// suggests renewing between 50 % and 60 % of each certificate's lifetime.
    #[arg(long)]
    ari: bool,
    /// Port that http-01 validation of `dns` identifiers fetches the key authorization
    /// from; every name resolves to 127.0.0.1. RFC 8555 §8.3 says 80.
    #[arg(long, default_value_t = 80)]
    http01_port: u16,
    /// Certificate profile: US SHAKEN CP 1.3 (policy …1.1.3, subject serialNumber always
    /// present) or 1.4 (policy …1.1.4, serialNumber only when the CSR has one, CRLDPs with a
    /// cRLIssuer).
    #[arg(long, value_enum, default_value_t = ProfileArg::Cp1_3)]
    profile: ProfileArg,
    /// Accept TNAuthList orders with TNs, ranges or several SPCs, as an ACME-based SCA
    /// would; by default only one SPC (ATIS-1000080 v005), others are `rejectedIdentifier`.
    #[arg(long)]
    allow_tn_lists: bool,
    /// Lifetime of issued certificates (e.g. 90s, 10m, 24h), to rehearse renewals.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    cert_lifetime: Duration,
    /// Offer no STAR (RFC 8739): no `meta.auto-renewal`, newOrder with `auto-renewal` is
    /// `malformed`.
    #[arg(long)]
    no_star: bool,
    /// STAR: the shortest `lifetime` a STAR order may ask for (`meta.auto-renewal`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    star_min_lifetime: Duration,
    /// STAR: the longest duration (end-date minus start-date) of a STAR order.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "8760h")]
    star_max_duration: Duration,
    /// STAR: refuse `allow-certificate-get` (unauthenticated GET of star-certificate URLs).
    #[arg(long)]
    star_no_certificate_get: bool,
    /// Offer no `newAuthz` (pre-authorization, RFC 8555 §7.4.1).
    #[arg(long)]
    no_new_authz: bool,
    /// The directory's `meta.caaIdentities` (RFC 8657); repeatable.
    #[arg(long, value_name = "DOMAIN", default_value = crate::devca::DEFAULT_CAA_IDENTITY)]
    caa_identity: Vec<String>,
    #[command(flatten)]
    faults: FaultArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProfileArg {
    /// US SHAKEN CP 1.3.
    #[value(name = "cp1.3")]
    Cp1_3,
    /// US SHAKEN CP 1.4.
    #[value(name = "cp1.4")]
    Cp1_4,
}

/// Fault injection: how the devca misbehaves, to rehearse a CA outage against a fleet. ACME
/// steps: directory, nonce, account, new-order, order, authz, challenge, finalize,
/// certificate (also `download`), revoke, renewal-info, or `all`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Fault injection")]
pub(crate) struct FaultArgs {
    /// Delay every answer of an ACME step: STEP=DURATION (e.g. new-order=2s,
    /// finalize=500ms, all=100ms). Repeatable; delays of `all` and of a step add up.
    #[arg(long, value_name = "STEP=DURATION", value_parser = parse_step_latency)]
    latency: Vec<StepLatency>,
    /// Answer this share (percent, 0-100) of ACME requests with an error problem document
    /// (see --error-status, --error-type, --error-steps, --retry-after).
    #[arg(long, value_name = "PERCENT", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    error_rate: u8,
    /// HTTP status of injected errors.
    #[arg(long, value_name = "STATUS", default_value_t = 503,
          value_parser = clap::value_parser!(u16).range(400..=599))]
    error_status: u16,
    /// Problem type of injected errors: an ACME error name (serverInternal, rateLimited,
    /// badNonce, unauthorized, ...; sent as urn:ietf:params:acme:error:NAME) or a full URN.
    #[arg(long, value_name = "TYPE", default_value = "serverInternal", value_parser = parse_problem_type)]
    error_type: String,
    /// The ACME steps injected errors hit (comma-separated); default: every step.
    #[arg(long, value_name = "STEPS", value_delimiter = ',', value_parser = parse_steps)]
    error_steps: Vec<Steps>,
    /// Send `Retry-After: SECONDS` with injected errors.
    #[arg(long, value_name = "SECONDS")]
    retry_after: Option<u64>,
    /// Answer this share (percent, 0-100) of otherwise valid signed ACME requests with
    /// badNonce (clients should retry with the fresh nonce).
    #[arg(long, value_name = "PERCENT", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    bad_nonce_rate: u8,
    /// Never answer requests of these ACME steps (comma-separated, repeatable): a CA that
    /// accepts the connection and hangs.
    #[arg(long, value_name = "STEPS", value_delimiter = ',', value_parser = parse_steps)]
    hang: Vec<Steps>,
    /// Delay every STI-PA API answer (login, token) by DURATION: a slow STI-PA.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    sti_pa_latency: Option<Duration>,
}

impl FaultArgs {
    /// Sets the knobs; returns one line per active fault, for the start-up banner.
    fn apply(&self, b: &Behaviour) -> Vec<String> {
        let mut active = vec![];
        for StepLatency(Steps(steps), delay) in &self.latency {
            for step in steps {
                let total = b.delay_for(Some(*step)) + *delay;
                b.set_step_delay(*step, total);
            }
            active.push(format!("latency {} +{delay:?}", names(steps)));
        }
        if self.error_rate > 0 {
            let steps: Vec<Step> = self.error_steps.iter().flat_map(|s| s.0.clone()).collect();
            let e = InjectedError {
                percent: self.error_rate,
                status: self.error_status,
                problem_type: self.error_type.clone(),
                retry_after: self.retry_after,
                steps: steps.clone(),
            };
            active.push(format!(
                "errors: {}% of {} answered {} {}{}",
                e.percent,
                if steps.is_empty() {
                    "all steps".to_owned()
                } else {
                    names(&steps)
                },
                e.status,
                e.type_urn(),
                e.retry_after
                    .map(|s| format!(", Retry-After {s}"))
                    .unwrap_or_default()
            ));
            b.set_injected_error(Some(e));
        }
        if self.bad_nonce_rate > 0 {
            b.set_nonce_reject_percent(self.bad_nonce_rate);
            active.push(format!(
                "badNonce: {}% of signed requests",
                self.bad_nonce_rate
            ));
        }
        let hung: Vec<Step> = self.hang.iter().flat_map(|s| s.0.clone()).collect();
        if !hung.is_empty() {
            for step in &hung {
                b.set_hang(*step, true);
            }
            active.push(format!("hang: {}", names(&hung)));
        }
        if let Some(d) = self.sti_pa_latency {
            b.set_sti_pa_delay(d);
            active.push(format!("STI-PA latency +{d:?}"));
        }
        active
    }
}

fn names(steps: &[Step]) -> String {
    steps.iter().map(|s| s.name()).collect::<Vec<_>>().join(",")
}

/// `250ms`, `2s`, `1.5s`, `10m`, `24h`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 250ms, 2s, 10m, 24h)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

/// The steps one flag value names: one step, or `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Steps(Vec<Step>);

/// `STEP=DURATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepLatency(Steps, Duration);

fn parse_steps(s: &str) -> Result<Steps, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        Ok(Steps(Step::ALL.to_vec()))
    } else {
        Ok(Steps(vec![s.trim().parse()?]))
    }
}

fn parse_step_latency(s: &str) -> Result<StepLatency, String> {
    let (step, delay) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected STEP=DURATION, e.g. new-order=2s"))?;
    Ok(StepLatency(parse_steps(step)?, parse_duration(delay)?))
}

fn parse_problem_type(s: &str) -> Result<String, String> {
    let name_ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    if name_ok || (s.starts_with("urn:") && !s.contains(char::is_whitespace)) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: an ACME error name (e.g. serverInternal) or a URN"
        ))
    }
}

pub(crate) async fn run(args: DevcaArgs) -> anyhow::Result<()> {
    telemetry::init(&Default::default());
    let state_dir = args.state_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("certbroker-devca-{}", std::process::id()))
    });
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    // The password goes to a file only the owner can read, never to the terminal or logs;
    // a later run in the same state directory keeps it.
    let password_file = state_dir.join("sti-pa-password");
    let defaults = DevCaSettings::default();
    let sti_pa_password = match std::fs::read_to_string(&password_file) {
        Ok(saved) if !saved.trim().is_empty() => SecretString::from(saved.trim().to_owned()),
        _ => defaults.sti_pa_password.clone(),
    };
    let port_file = state_dir.join("port");
    let port = match std::fs::read_to_string(&port_file) {
        Ok(p) if args.keep_port && args.listen.port() == 0 => p
            .trim()
            .parse()
            .with_context(|| format!("{}: not a port", port_file.display()))?,
        _ => args.listen.port(),
    };
    let handle = DevCa::start(DevCaSettings {
        listen: args.listen.ip(),
        port,
        state_dir: Some(state_dir.clone()),
        renewal_info: args.ari.then(DevRenewalInfo::default),
        cert_lifetime: args.cert_lifetime,
        http01_port: args.http01_port,
        sti_pa_password,
        profile: match args.profile {
            ProfileArg::Cp1_3 => DevProfile::UsCp13,
            ProfileArg::Cp1_4 => DevProfile::UsCp14,
        },
        allow_tn_lists: args.allow_tn_lists,
        star: (!args.no_star).then_some(DevStar {
            min_lifetime: args.star_min_lifetime,
            max_duration: args.star_max_duration,
            allow_certificate_get: !args.star_no_certificate_get,
        }),
        new_authz: !args.no_new_authz,
        caa_identities: args.caa_identity.clone(),
        ..defaults
    })
    .await
    .context("starting devca")?;
    let faults = args.faults.apply(handle.behaviour());
    let (user, password) = handle.sti_pa_credentials();
    crate::ca::write_private(&password_file, password.expose_secret().as_bytes())
        .with_context(|| format!("writing {}", password_file.display()))?;
    if args.keep_port {
        let port = handle.directory_url().port().unwrap_or_default();
        std::fs::write(&port_file, format!("{port}\n"))
            .with_context(|| format!("writing {}", port_file.display()))?;
    }
    println!(
        "devca running\n\
         ACME directory: {dir}\n\
         STI-PA API:     {pa}  (user {user:?}, password in {pw})\n\
         trust root:     {root}\n\
         counters:       {stats}  (JSON; every event is also logged, target \"devca\")\n\
         faults:         {faults}\n\
         \n\
         try:\n  \
           export STI_PA_PASSWORD=$(cat {pw})\n  \
           certbroker issue --directory {dir} --trust-root {root} --spc 1234 \\\n    \
             --sti-pa {pa} --sti-pa-user {user} --sti-pa-password-env STI_PA_PASSWORD --out ./out\n",
        dir = handle.directory_url(),
        pa = handle.sti_pa_url(),
        pw = password_file.display(),
        root = handle.trust_root_path().display(),
        stats = handle.stats_url(),
        faults = if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join("; ")
        },
    );
    if let Some(file) = &args.write_config {
        std::fs::write(file, broker_config_toml(&handle, &state_dir))
            .with_context(|| format!("writing {}", file.display()))?;
        println!("broker configuration written to {}", file.display());
    }
    println!("press Ctrl-C to stop");
    super::shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// The `[[ca]]` entry for a running devca: what `serve --dev` configures, and what
/// certbroker-bench's brokers use. Its ACME account key goes to `state_dir`.
pub fn ca_settings_for(handle: &DevCaHandle, state_dir: &Path) -> CaSettings {
    let (user, password) = handle.sti_pa_credentials();
    CaSettings {
        name: "devca".into(),
        directory: handle.directory_url(),
        trust_roots: Some(handle.trust_root_path().to_path_buf()),
        pools: vec!["default".into()],
        priority: 0,
        account_key: state_dir.join("devca-account.pem"),
        contact: vec![],
        eab: None,
        request_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(120),
        csr: CsrSettings {
            country: "US".into(),
            organization: "certbroker dev".into(),
            ..CsrSettings::default()
        },
        challenge: Default::default(),
        sti_pa: Some(StiPaSettings {
            base_url: handle.sti_pa_url(),
            user_id: user,
            password: Some(password),
            password_env: None,
            trust_roots: None,
        }),
        token_file: None,
        // Where the devca's http-01 validation looks for the key authorization.
        http01_listen: Some(SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            handle.http01_port(),
        ))),
        weight: std::num::NonZeroU32::MIN,
        breaker: Default::default(),
        allow_account_key_reuse: false,
        cert_lifetime: None,
        // The embedded CA is the user's own; dev mode needs no ceremony.
        accept_terms_of_service: true,
        strict_profile: false,
        star: None,
        preauthorization: Default::default(),
    }
}

/// A complete broker configuration for a running devca, as TOML.
fn broker_config_toml(handle: &DevCaHandle, state_dir: &Path) -> String {
    let ca = ca_settings_for(handle, state_dir);
    let (_, password) = handle.sti_pa_credentials();
    format!(
        r#"# certbroker configuration for the devca at {dir}
# Written by `certbroker devca --write-config`. Run: certbroker serve --config THIS_FILE

[server]
listen = "127.0.0.1:50051"

[store]
backend = "memory"

[[ca]]
name = "devca"
directory = "{dir}"
trust_roots = "{roots}"
account_key = "{key}"
pools = ["default"]
priority = 0
# dns identifiers: the devca validates http-01 by fetching from this address.
http01_listen = "{http01}"
accept_terms_of_service = true

[ca.csr]
country = "US"
organization = "certbroker dev"

[ca.challenge]
response_field = "atc"
fingerprint = "jwk_thumbprint"
tkvalue_encoding = "base64"

[ca.sti_pa]
base_url = "{pa}"
user_id = "{user}"
# A development credential of this devca run; real deployments use password_env.
password = "{password}"
"#,
        dir = ca.directory,
        roots = ca.trust_roots.unwrap_or_default().display(),
        key = ca.account_key.display(),
        http01 = ca.http01_listen.map(|a| a.to_string()).unwrap_or_default(),
        pa = handle.sti_pa_url(),
        user = handle.sti_pa_credentials().0,
        password = password.expose_secret(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn step_latency_and_problem_types() {
        assert_eq!(
            parse_step_latency("new-order=2s"),
            Ok(StepLatency(
                Steps(vec![Step::NewOrder]),
                Duration::from_secs(2)
            ))
        );
        assert_eq!(
            parse_step_latency("all=1s").unwrap().0,
            Steps(Step::ALL.to_vec())
        );
        assert!(parse_step_latency("new-order").is_err());
        assert!(parse_step_latency("bogus=1s").is_err());
        assert!(parse_problem_type("serverInternal").is_ok());
        assert!(parse_problem_type("urn:example:outage").is_ok());
        assert!(parse_problem_type("server internal").is_err());
    }

    /// The written configuration parses, and the broker's http-01 responder listens where
    /// the devca validates.
    #[tokio::test]
    async fn written_config_matches_the_devca() {
        let dir = tempfile::tempdir().unwrap();
        let handle = DevCa::start(DevCaSettings {
            state_dir: Some(dir.path().join("devca")),
            http01_port: 5002,
            ..DevCaSettings::default()
        })
        .await
        .unwrap();
        let toml = broker_config_toml(&handle, dir.path());
        let settings = crate::config::Settings::from_toml(&toml).unwrap();
        assert_eq!(settings.ca.len(), 1);
        assert_eq!(settings.ca[0].directory, handle.directory_url());
        assert_eq!(
            settings.ca[0].http01_listen,
            Some("127.0.0.1:5002".parse().unwrap())
        );
        handle.shutdown().await;
    }
}
