//! `certbroker devca`: the embedded STI-PA + STI-CA, standalone.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Args;
use secrecy::ExposeSecret;

use crate::{
    config::{CaSettings, CsrSettings, StiPaSettings},
    devca::{DevCa, DevCaHandle, DevCaSettings, DevRenewalInfo},
    telemetry,
};

#[derive(Debug, Args)]
pub(crate) struct DevcaArgs {
    /// Address for the HTTPS endpoints (ACME and STI-PA). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for the trust root and CA state; default: a new temporary directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Also write a complete broker configuration for this devca to FILE.
    #[arg(long, value_name = "FILE")]
    write_config: Option<PathBuf>,
    /// Offer ACME Renewal Information (RFC 9773): the directory gets `renewalInfo`, which
    /// suggests renewing between 50 % and 60 % of each certificate's lifetime.
    #[arg(long)]
    ari: bool,
}

pub(crate) async fn run(args: DevcaArgs) -> anyhow::Result<()> {
    telemetry::init(&Default::default());
    let state_dir = args.state_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("certbroker-devca-{}", std::process::id()))
    });
    let handle = DevCa::start(DevCaSettings {
        listen: args.listen.ip(),
        port: args.listen.port(),
        state_dir: Some(state_dir.clone()),
        renewal_info: args.ari.then(DevRenewalInfo::default),
        ..DevCaSettings::default()
    })
    .await
    .context("starting devca")?;
    let (user, password) = handle.sti_pa_credentials();
    // The password goes to a file only the owner can read, never to the terminal or logs.
    let password_file = state_dir.join("sti-pa-password");
    crate::ca::write_private(&password_file, password.expose_secret().as_bytes())
        .with_context(|| format!("writing {}", password_file.display()))?;
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
        http01_listen: None,
        weight: 1,
        breaker: Default::default(),
        allow_account_key_reuse: false,
        cert_lifetime_secs: None,
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
        pa = handle.sti_pa_url(),
        user = handle.sti_pa_credentials().0,
        password = password.expose_secret(),
    )
}
