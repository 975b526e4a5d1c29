//! `certbroker get` and `certbroker revoke`: a gRPC client for a running broker.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use tonic_types::StatusExt;

use super::ids::{IdArgs, Ids};
use crate::pb::{
    self, certificate_broker_client::CertificateBrokerClient, revoke_request::Target,
    tn_auth_entry::Entry,
};

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    ids: IdArgs,
    /// Upstream pool; default: the broker's default pool.
    #[arg(long)]
    pool: Option<String>,
    /// Least validity the certificate must have left, in seconds.
    #[arg(long)]
    min_remaining: Option<u64>,
    /// Skip the cache and issue anew.
    #[arg(long)]
    force_renew: bool,
    /// Ask for a CA certificate (basicConstraints CA:TRUE) to sign delegate certificates
    /// (RFC 9060); needs `ca_certificates = true` in the caller's policy.
    #[arg(long)]
    ca_certificate: bool,
    /// Your own CSR (PEM or DER); the answer then carries no key.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Write cert.pem (chain) and key.pem here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Leaf serial number (hex).
    #[arg(
        long,
        conflicts_with = "fingerprint",
        required_unless_present = "fingerprint"
    )]
    serial: Option<String>,
    /// SHA-256 fingerprint of the leaf (hex).
    #[arg(long)]
    fingerprint: Option<String>,
    /// RFC 5280 reason.
    #[arg(long, value_enum, default_value = "unspecified")]
    reason: ReasonArg,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Where the broker is and how to reach it.
#[derive(Debug, Clone, Args)]
pub(crate) struct BrokerArgs {
    /// Broker address.
    #[arg(
        long,
        env = "CERTBROKER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Client TLS for a broker with `[server.tls]` (use an `https://` address).
#[derive(Debug, Clone, Args)]
pub(crate) struct TlsArgs {
    /// PEM bundle that signed the broker's server certificate.
    #[arg(long, env = "CERTBROKER_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; the broker's `[[policy]]` matches its names.
    #[arg(long, env = "CERTBROKER_CLIENT_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "CERTBROKER_CLIENT_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Name to expect in the server certificate; default: the address's host.
    #[arg(long)]
    server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReasonArg {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

pub(crate) async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut req = pb::GetCertificateRequest {
        ca_pool: args.pool.unwrap_or_default(),
        force_renew: args.force_renew,
        ca_certificate: args.ca_certificate,
        min_remaining_validity: args.min_remaining.map(|s| prost_types::Duration {
            seconds: s as i64,
            nanos: 0,
        }),
        ..Default::default()
    };
    match args.ids.parse()? {
        Ids::Dns(names) => req.dns_names = names,
        Ids::TnAuthList(list) => {
            req.tn_auth_list = list
                .entries()
                .iter()
                .map(|e| pb::TnAuthEntry {
                    entry: Some(match e {
                        crate::shaken::TnEntry::Spc(s) => Entry::Spc(s.clone()),
                        crate::shaken::TnEntry::One(t) => Entry::Tn(t.clone()),
                        crate::shaken::TnEntry::Range { start, count } => {
                            Entry::Range(pb::TelephoneNumberRange {
                                start: start.clone(),
                                count: *count,
                            })
                        }
                    }),
                })
                .collect();
        }
    }
    if let Some(path) = &args.csr {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        req.csr_der = if bytes.starts_with(b"-----") {
            pem_body(&bytes).with_context(|| format!("{}: not a PEM CSR", path.display()))?
        } else {
            bytes
        };
    }
    let mut client = connect(&args.broker).await?;
    let resp = client
        .get_certificate(req)
        .await
        .map_err(status_error)?
        .into_inner();
    let status = pb::CacheStatus::try_from(resp.cache_status)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    println!("serial:       {}", resp.serial_hex);
    println!("fingerprint:  {}", resp.sha256_fingerprint_hex);
    if let Some(t) = &resp.not_after {
        println!("notAfter:     {}", format_ts(t));
    }
    println!("issuer_ca:    {}", resp.issuer_ca);
    println!("cache_status: {status}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("cert.pem"), &resp.certificate_chain_pem)?;
        if !resp.private_key_pkcs8_der.is_empty() {
            let pem = super::pem("PRIVATE KEY", &resp.private_key_pkcs8_der);
            crate::ca::write_private(&out.join("key.pem"), pem.as_bytes())?;
        }
        println!("written:      {}", out.display());
    }
    Ok(())
}

pub(crate) async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let target = match (args.serial, args.fingerprint) {
        (Some(s), _) => Target::SerialHex(s),
        (None, Some(f)) => Target::Sha256FingerprintHex(f),
        (None, None) => anyhow::bail!("give --serial or --fingerprint"),
    };
    let reason = match args.reason {
        ReasonArg::Unspecified => pb::RevocationReason::Unspecified,
        ReasonArg::KeyCompromise => pb::RevocationReason::KeyCompromise,
        ReasonArg::AffiliationChanged => pb::RevocationReason::AffiliationChanged,
        ReasonArg::Superseded => pb::RevocationReason::Superseded,
        ReasonArg::CessationOfOperation => pb::RevocationReason::CessationOfOperation,
    };
    let mut client = connect(&args.broker).await?;
    let resp = client
        .revoke(pb::RevokeRequest {
            target: Some(target),
            reason: reason as i32,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("revoked serial {} at {}", resp.serial_hex, resp.issuer_ca);
    Ok(())
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.broker).await?;
    let resp = client
        .list_renewals(pb::ListRenewalsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{:<16}  {:<24}  {:<20}  {:<20}  {:>8}  last error",
        "key", "serial", "notAfter", "next renewal", "failures"
    );
    for e in resp.entries {
        let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(format_ts).unwrap_or_default();
        println!(
            "{:<16}  {:<24}  {:<20}  {:<20}  {:>8}  {}",
            &e.cache_key[..e.cache_key.len().min(16)],
            e.serial_hex,
            ts(&e.not_after),
            ts(&e.next_renewal),
            e.failures,
            e.last_error
        );
        // Findings under their certificate, so the table keeps its columns.
        for f in &e.profile_findings {
            println!("    finding (ca {}): {f}", e.issuer_ca);
        }
    }
    Ok(())
}

async fn connect(
    broker: &BrokerArgs,
) -> anyhow::Result<CertificateBrokerClient<tonic::transport::Channel>> {
    let (addr, tls) = (&broker.addr, &broker.tls);
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("--addr {addr}"))?;
    if addr.starts_with("https://") || tls.ca_cert.is_some() || tls.cert.is_some() {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca_cert {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(config).context("client TLS")?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(CertificateBrokerClient::new(channel))
}

/// Renders a gRPC error with its structured details.
fn status_error(status: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            msg.push_str(&format!("\n  field {}: {}", v.field, v.description));
        }
    }
    if let Some(info) = details.error_info() {
        let mut meta: Vec<_> = info.metadata.iter().collect();
        meta.sort();
        for (k, v) in meta {
            msg.push_str(&format!("\n  {k}: {v}"));
        }
    }
    if let Some(retry) = details.retry_info().and_then(|r| r.retry_delay) {
        msg.push_str(&format!("\n  retry after: {retry:?}"));
    }
    anyhow::anyhow!(msg)
}

fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn format_ts(t: &prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.seconds.to_string())
}
