//! `certbroker issue`: one certificate straight from an ACME CA, like `lego run`, using the
//! same upstream code the broker uses.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::ids::{IdArgs, Ids};
use crate::{
    ca::{AttemptError, CertKind},
    cert::Identifiers,
    challenge::{FingerprintAlgorithm, ResponseField, TkAuthSettings},
    config::{CaSettings, CsrSettings, EabSettings, StiPaSettings},
    shaken::TkValueEncoding,
    telemetry,
};

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// ACME directory URL of the CA.
    #[arg(long)]
    directory: url::Url,
    /// PEM bundle to trust for the CA's (and STI-PA's) HTTPS instead of the system roots.
    #[arg(long)]
    trust_root: Option<PathBuf>,
    #[command(flatten)]
    ids: IdArgs,
    /// STI-PA API base URL, for tkauth-01.
    #[arg(long, requires_all = ["sti_pa_user", "sti_pa_password_env"])]
    sti_pa: Option<url::Url>,
    /// STI-PA user id.
    #[arg(long)]
    sti_pa_user: Option<String>,
    /// Name of the environment variable holding the STI-PA password.
    #[arg(long)]
    sti_pa_password_env: Option<String>,
    /// File holding an SPC token obtained out of band (instead of --sti-pa).
    #[arg(long, conflicts_with = "sti_pa")]
    token_file: Option<PathBuf>,
    /// Output directory for cert.pem (leaf), chain.pem (intermediates), fullchain.pem
    /// (leaf, then intermediates) and key.pem.
    #[arg(long)]
    out: PathBuf,
    /// ACME account key (PKCS#8 PEM); created if missing. Default: OUT/account.pem.
    #[arg(long)]
    account_key: Option<PathBuf>,
    /// Account contact, e.g. mailto:noc@example.net (repeatable).
    #[arg(long)]
    contact: Vec<String>,
    /// Subject O of the CSR.
    #[arg(long, default_value = "certbroker")]
    org: String,
    /// Field carrying the token in the challenge response.
    #[arg(long, value_enum, default_value = "atc")]
    response_field: ResponseFieldArg,
    /// How the account-key fingerprint in the SPC token is computed.
    #[arg(long, value_enum, default_value = "jwk-thumbprint")]
    fingerprint: FingerprintArg,
    /// String encoding of the TNAuthList sent to the CA and the STI-PA.
    #[arg(long, value_enum, default_value = "base64")]
    tkvalue_encoding: EncodingArg,
    /// EAB key id, when the CA requires external account binding.
    #[arg(long, requires = "eab_hmac_env")]
    eab_kid: Option<String>,
    /// Name of the environment variable holding the base64url EAB HMAC key.
    #[arg(long)]
    eab_hmac_env: Option<String>,
    /// Serve http-01 key authorizations on this address (for --dns).
    #[arg(long)]
    http01_listen: Option<std::net::SocketAddr>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Obtain a CA certificate (basicConstraints CA:TRUE, SPC token with "ca": true) for a
    /// subordinate CA that signs delegate certificates (RFC 9060).
    #[arg(long)]
    ca_certificate: bool,
    /// Agree to the CA's terms of service. Required when the CA's directory names terms
    /// (`meta.termsOfService`) and no account exists yet, as with lego and certbot.
    #[arg(long, visible_alias = "agree-tos")]
    accept_tos: bool,
    #[command(flatten)]
    star: super::star::StarArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeCertArgs {
    /// ACME directory URL of the CA that issued the certificate.
    #[arg(long)]
    directory: url::Url,
    /// PEM bundle to trust for the CA's HTTPS instead of the system roots.
    #[arg(long)]
    trust_root: Option<PathBuf>,
    /// The ACME account key that ordered the certificate (PKCS#8 PEM).
    #[arg(long)]
    account_key: PathBuf,
    /// The certificate (PEM; the first certificate of a chain is revoked).
    #[arg(long)]
    cert: PathBuf,
    /// RFC 5280 reason code (0 unspecified, 1 keyCompromise, 3 affiliationChanged,
    /// 4 superseded, 5 cessationOfOperation).
    #[arg(long, default_value_t = 0)]
    reason: u8,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ResponseFieldArg {
    Atc,
    Tkauth,
    Both,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FingerprintArg {
    JwkThumbprint,
    SpkiSha256,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EncodingArg {
    Base64,
    Base64url,
}

pub(crate) async fn run(args: IssueArgs) -> anyhow::Result<()> {
    telemetry::init(&Default::default());
    let identifiers = match args.ids.parse()? {
        Ids::TnAuthList(list) => Identifiers::TnAuthList(list),
        Ids::Dns(names) => Identifiers::dns(&names).map_err(|e| anyhow::anyhow!("--dns: {e}"))?,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let account_key = args
        .account_key
        .clone()
        .unwrap_or_else(|| args.out.join("account.pem"));
    let settings = CaSettings {
        contact: args.contact.clone(),
        eab: args.eab_kid.clone().map(|key_id| EabSettings {
            key_id,
            hmac_key_env: args.eab_hmac_env.clone().unwrap_or_default(),
        }),
        attempt_timeout: std::time::Duration::from_secs(args.timeout),
        csr: CsrSettings {
            country: "US".into(),
            organization: args.org.clone(),
            ..CsrSettings::default()
        },
        challenge: TkAuthSettings {
            response_field: match args.response_field {
                ResponseFieldArg::Atc => ResponseField::Atc,
                ResponseFieldArg::Tkauth => ResponseField::Tkauth,
                ResponseFieldArg::Both => ResponseField::Both,
            },
            fingerprint: match args.fingerprint {
                FingerprintArg::JwkThumbprint => FingerprintAlgorithm::JwkThumbprint,
                FingerprintArg::SpkiSha256 => FingerprintAlgorithm::SpkiSha256,
            },
            tkvalue_encoding: match args.tkvalue_encoding {
                EncodingArg::Base64 => TkValueEncoding::Base64,
                EncodingArg::Base64url => TkValueEncoding::Base64Url,
            },
            ..TkAuthSettings::default()
        },
        sti_pa: args.sti_pa.clone().map(|base_url| StiPaSettings {
            base_url,
            user_id: args.sti_pa_user.clone().unwrap_or_default(),
            password: None,
            password_env: args.sti_pa_password_env.clone(),
            trust_roots: None,
        }),
        token_file: args.token_file.clone(),
        http01_listen: args.http01_listen,
        accept_terms_of_service: args.accept_tos,
        star: args.star.settings()?,
        ..base_settings(&args.directory, args.trust_root.clone(), account_key)
    };
    let upstream = crate::app::build_upstream(&settings, None)?;
    let issued = match upstream
        .issue(
            &identifiers,
            None,
            CertKind::from_ca_flag(args.ca_certificate),
        )
        .await
    {
        Err(AttemptError::TermsNotAgreed(url)) => anyhow::bail!(
            "the CA's terms of service are at {url}; read them and pass --accept-tos \
             (or --agree-tos) to agree"
        ),
        other => other?,
    };

    let written =
        super::write_cert_files(&args.out, &issued.chain_der, issued.key_pkcs8.as_deref())?;
    let leaf = &issued.leaf;
    println!("serial:    {}", leaf.serial_hex);
    println!("notAfter:  {}", rfc3339(leaf.not_after));
    let issuer = issued
        .chain_der
        .get(1)
        .and_then(|der| crate::shaken::CertInfo::parse(der).ok())
        .map(|ca| {
            format!(
                "CN={}, O={}, C={}",
                ca.subject.common_name, ca.subject.organization, ca.subject.country
            )
        })
        .unwrap_or_else(|| "(not in chain)".into());
    println!("issuer:    {issuer}");
    for f in &issued.findings {
        println!("finding:   {f}");
    }
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    println!("written:   {}", names.join(", "));
    super::star::follow(&args.star, &upstream, &args.out, issued).await
}

/// RFC 3339, as `certbroker get` and `status` print times.
pub(super) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `certbroker revoke-cert`: revokes a certificate directly at the ACME CA, signed by the
/// account that ordered it.
pub(crate) async fn revoke_cert(args: RevokeCertArgs) -> anyhow::Result<()> {
    telemetry::init(&Default::default());
    let pem = std::fs::read_to_string(&args.cert)
        .with_context(|| format!("reading {}", args.cert.display()))?;
    let chain = crate::shaken::parse_pem_chain(&pem)?;
    let leaf = chain.first().context("no certificate in --cert")?;
    let settings = base_settings(
        &args.directory,
        args.trust_root.clone(),
        args.account_key.clone(),
    );
    let upstream = crate::app::build_upstream(&settings, None)?;
    upstream.revoke(leaf, args.reason).await?;
    let info = crate::shaken::CertInfo::parse(leaf)?;
    println!(
        "revoked serial {} (reason {})",
        info.serial_hex, args.reason
    );
    Ok(())
}

/// Settings for a one-off upstream named after the directory's host.
fn base_settings(
    directory: &url::Url,
    trust_root: Option<PathBuf>,
    account_key: PathBuf,
) -> CaSettings {
    CaSettings {
        name: directory.host_str().unwrap_or("ca").to_owned(),
        directory: directory.clone(),
        trust_roots: trust_root,
        pools: vec!["default".into()],
        priority: 0,
        account_key,
        contact: vec![],
        eab: None,
        request_timeout: std::time::Duration::from_secs(30),
        attempt_timeout: std::time::Duration::from_secs(120),
        csr: CsrSettings::default(),
        challenge: TkAuthSettings::default(),
        sti_pa: None,
        token_file: None,
        http01_listen: None,
        weight: std::num::NonZeroU32::MIN,
        breaker: Default::default(),
        allow_account_key_reuse: false,
        cert_lifetime: None,
        accept_terms_of_service: false,
        strict_profile: false,
        star: None,
        preauthorization: Default::default(),
    }
}
