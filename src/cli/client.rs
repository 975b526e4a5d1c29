//! `certbroker get` and `certbroker revoke`: a gRPC client for a running broker.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use tonic_types::StatusExt;

use super::ids::{IdArgs, Ids};
use crate::pb::{
    self, certificate_broker_service_client::CertificateBrokerServiceClient,
    revoke_request::Target, tn_auth_entry::Entry,
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
    /// Write cert.pem (leaf), chain.pem (intermediates), fullchain.pem and key.pem here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Give up after this many seconds (connecting, and a CA issuing on a cache miss).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
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
    /// Broker address: HOST:PORT (http://, or https:// when TLS flags are given) or a URL.
    #[arg(long, env = "CERTBROKER_ADDR", default_value = "127.0.0.1:50051")]
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
    let timeout = Duration::from_secs(args.timeout);
    let started = std::time::Instant::now();
    let timed_out = || {
        anyhow::anyhow!(
            "no answer from {} within {}s (--timeout)",
            args.broker.addr,
            args.timeout
        )
    };
    let call = async {
        let mut client = connect(&args.broker).await?;
        let mut request = tonic::Request::new(req);
        // Sent as grpc-timeout too, so the broker stops working for a caller that left.
        request.set_timeout(timeout);
        match client.get_certificate(request).await {
            Ok(resp) => Ok(resp.into_inner()),
            // tonic enforces grpc-timeout on the client side as well.
            Err(status)
                if started.elapsed() >= timeout
                    && matches!(
                        status.code(),
                        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                    ) =>
            {
                Err(timed_out())
            }
            Err(status) => Err(status_error(status)),
        }
    };
    let resp = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| timed_out())??;
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
        let key = (!resp.private_key_pkcs8_der.is_empty()).then_some(&resp.private_key_pkcs8_der);
        let written =
            super::write_cert_files(out, &resp.certificate_chain_der, key.map(Vec::as_slice))?;
        let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        println!("written:      {}", names.join(", "));
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
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(format_ts).unwrap_or_default();
    let rows: Vec<[String; 6]> = resp
        .entries
        .iter()
        .map(|e| {
            [
                e.cache_key[..e.cache_key.len().min(16)].to_owned(),
                e.serial_hex.clone(),
                ts(&e.not_after),
                ts(&e.next_renewal),
                e.failures.to_string(),
                e.last_error.clone(),
            ]
        })
        .collect();
    let text = table(
        [
            "key",
            "serial",
            "notAfter",
            "next renewal",
            "failures",
            "last error",
        ],
        &rows,
    );
    let mut lines = text.lines();
    println!("{}", lines.next().unwrap_or_default());
    for (line, e) in lines.zip(&resp.entries) {
        println!("{line}");
        // Findings under their certificate, so the table keeps its columns.
        for f in &e.profile_findings {
            println!("    finding (ca {}): {f}", e.issuer_ca);
        }
        if let Some(star) = &e.star {
            let next = if star.last_certificate {
                "next STAR order"
            } else {
                "next certificate"
            };
            println!(
                "    STAR order {}: lifetime {}s, {next} {}, end-date {}",
                star.order_url,
                star.lifetime_secs,
                ts(&e.next_renewal),
                ts(&star.end_date)
            );
        }
    }
    Ok(())
}

/// Columns as wide as their widest cell, two spaces apart; the last column is not padded.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

async fn connect(
    broker: &BrokerArgs,
) -> anyhow::Result<CertificateBrokerServiceClient<tonic::transport::Channel>> {
    let tls = &broker.tls;
    let tls_flags = tls.ca_cert.is_some() || tls.cert.is_some();
    let addr = &endpoint_url(&broker.addr, tls_flags);
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("--addr {}", broker.addr))?;
    if addr.starts_with("https://") || tls_flags {
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
    Ok(CertificateBrokerServiceClient::new(channel))
}

/// `--addr` as a URL: `HOST:PORT` gets `https://` when TLS flags are given, else
/// `http://`; an address with a scheme is used as it is.
fn endpoint_url(addr: &str, tls: bool) -> String {
    match (addr.contains("://"), tls) {
        (true, _) => addr.to_owned(),
        (false, true) => format!("https://{addr}"),
        (false, false) => format!("http://{addr}"),
    }
}

/// The canonical gRPC name of a status code, as grpcurl and the gRPC docs write it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Renders a gRPC error with its structured details.
fn status_error(status: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{} ({})", status.message(), code_name(status.code()));
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            msg.push_str(&format!("\n  field {}: {}", v.field, v.description));
        }
    }
    // INVALID_FIELD's metadata repeats the BadRequest field printed above.
    if let Some(info) = details.error_info().filter(|i| i.reason != "INVALID_FIELD") {
        let mut meta: Vec<_> = info.metadata.iter().collect();
        meta.sort();
        for (k, v) in meta {
            msg.push_str(&format!("\n  {k}: {v}"));
        }
    }
    if let Some(retry) = details.retry_info().and_then(|r| r.retry_delay) {
        msg.push_str(&format!("\n  retry after: {}s", retry.as_secs_f64()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_without_a_scheme_gets_one() {
        assert_eq!(
            endpoint_url("127.0.0.1:50051", false),
            "http://127.0.0.1:50051"
        );
        assert_eq!(endpoint_url("broker:50051", true), "https://broker:50051");
        assert_eq!(endpoint_url("https://b:1", false), "https://b:1");
        assert_eq!(endpoint_url("http://b:1", true), "http://b:1");
    }

    #[test]
    fn table_columns_align() {
        let rows = [
            [
                "a".to_owned(),
                "0123456789abcdef0123456789abcdef".to_owned(),
                "x".to_owned(),
            ],
            ["bb".to_owned(), "01".to_owned(), "".to_owned()],
        ];
        let text = table(["key", "serial", "last"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        let col = |l: &str, n: usize| l.match_indices("  ").count() >= n;
        assert!(lines.iter().all(|l| col(l, 1)));
        assert_eq!(lines[0].find("serial"), lines[1].find("0123"));
        assert_eq!(lines[0].find("last"), lines[1].find('x'));
        assert_eq!(lines[2], "bb   01");
    }
}
