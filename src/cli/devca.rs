//! `certbroker devca`: the embedded STI-PA + STI-CA, standalone.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    config::{CaSettings, CsrSettings, StiPaSettings},
    devca::{DevCa, DevCaHandle, DevCaSettings, DevProfile, DevRenewalInfo},
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
        http01_port: args.http01_port,
        sti_pa_password,
        profile: match args.profile {
            ProfileArg::Cp1_3 => DevProfile::UsCp13,
            ProfileArg::Cp1_4 => DevProfile::UsCp14,
        },
        allow_tn_lists: args.allow_tn_lists,
        ..defaults
    })
    .await
    .context("starting devca")?;
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
         \n\
         try:\n  \
           export STI_PA_PASSWORD=$(cat {pw})\n  \
           certbroker issue --directory {dir} --trust-root {root} --spc 1234 \\\n    \
             --sti-pa {pa} --sti-pa-user {user} --sti-pa-password-env STI_PA_PASSWORD --out ./out\n",
        dir = handle.directory_url(),
        pa = handle.sti_pa_url(),
        pw = password_file.display(),
        root = handle.trust_root_path().display(),
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

/// The `[[ca]]` entry for a running devca.
pub(crate) fn ca_settings_for(handle: &DevCaHandle, state_dir: &Path) -> CaSettings {
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
        request_timeout_secs: 30,
        attempt_timeout_secs: 120,
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
        weight: 1,
        breaker: Default::default(),
        allow_account_key_reuse: false,
        cert_lifetime_secs: None,
        // The embedded CA is the user's own; dev mode needs no ceremony.
        accept_terms_of_service: true,
        strict_profile: false,
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
