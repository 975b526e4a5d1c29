//! `certbroker account rollover|deactivate|show --config FILE --ca NAME`: the lifecycle of
//! one `[[ca]]`'s ACME account, outside the running broker (see [`crate::ca::roll_over`]).
//!
//! After a rollover or a deactivation the SPC tokens bound to the old key's fingerprint are
//! dropped from the configured shared store (Redis); with the memory store each broker
//! process caches its own tokens, keyed by fingerprint, so they are simply never used again.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::{
    acme,
    ca::{self, AccountSource},
    challenge::{self, FingerprintAlgorithm},
    config::{CaSettings, Settings, StoreBackend},
    store, telemetry,
};

#[derive(Debug, Args)]
pub(crate) struct AccountArgs {
    #[command(subcommand)]
    command: AccountCommand,
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Roll the account over to a new key (RFC 8555 keyChange) and replace the key file.
    Rollover(Target),
    /// Deactivate the account (irreversible); the key file becomes `<file>.deactivated`.
    Deactivate(DeactivateArgs),
    /// Show the account URL, status, contacts and key fingerprints, and the CAA record
    /// (RFC 8657) that binds dns-name issuance at this CA to this account; creates nothing.
    Show(ShowArgs),
}

/// Which account.
#[derive(Debug, Args)]
struct Target {
    /// The broker's TOML configuration file.
    #[arg(long, env = "CERTBROKER_CONFIG")]
    config: PathBuf,
    /// The `[[ca]]` name.
    #[arg(long = "ca", value_name = "NAME")]
    ca: String,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    target: Target,
    /// Domain to write the CAA records for (repeatable); without it the records say
    /// `<domain>`.
    #[arg(long = "domain", value_name = "DOMAIN")]
    domains: Vec<String>,
}

#[derive(Debug, Args)]
struct DeactivateArgs {
    #[command(flatten)]
    target: Target,
    /// Confirm: a deactivated account cannot be used again.
    #[arg(long)]
    yes: bool,
}

pub(crate) async fn run(args: AccountArgs) -> anyhow::Result<()> {
    match args.command {
        AccountCommand::Rollover(t) => rollover(t).await,
        AccountCommand::Deactivate(d) => deactivate(d).await,
        AccountCommand::Show(t) => show(t).await,
    }
}

async fn rollover(target: Target) -> anyhow::Result<()> {
    let (settings, ca) = load(&target)?;
    let source = AccountSource::from_settings(&ca)?;
    let done = ca::roll_over(&source)
        .await
        .with_context(|| format!("rolling over the account at ca {:?}", ca.name))?;
    let alg = ca.challenge.fingerprint;
    let old_fp = challenge::fingerprint(alg, &done.old_jwk)?;
    println!("account: {}", done.account_url);
    println!("key file: {} (replaced)", source.key_path().display());
    print_key("old", &done.old_jwk, alg, &old_fp)?;
    let new_fp = challenge::fingerprint(alg, &done.new_jwk)?;
    print_key("new", &done.new_jwk, alg, &new_fp)?;
    drop_tokens(&settings, &old_fp).await;
    Ok(())
}

async fn deactivate(args: DeactivateArgs) -> anyhow::Result<()> {
    if !args.yes {
        bail!("deactivation is irreversible: run again with --yes to deactivate the account");
    }
    let (settings, ca) = load(&args.target)?;
    let source = AccountSource::from_settings(&ca)?;
    let (url, jwk) = ca::deactivate(&source)
        .await
        .with_context(|| format!("deactivating the account at ca {:?}", ca.name))?;
    let fp = challenge::fingerprint(ca.challenge.fingerprint, &jwk)?;
    println!("account: {url} (deactivated)");
    println!(
        "key file: moved to {}; the next use of ca {:?} creates a new key and account",
        source.sibling(".deactivated").display(),
        ca.name
    );
    print_key("deactivated", &jwk, ca.challenge.fingerprint, &fp)?;
    drop_tokens(&settings, &fp).await;
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let (_, ca) = load(&args.target)?;
    let source = AccountSource::from_settings(&ca)?;
    let (account, state) = ca::show(&source).await?;
    let jwk = account.key().public_jwk();
    let fp = challenge::fingerprint(ca.challenge.fingerprint, &jwk)?;
    println!("account: {}", account.url());
    println!("status: {:?}", state.status);
    println!("contact: {}", state.contact.join(", "));
    println!("key file: {}", source.key_path().display());
    print_key("current", &jwk, ca.challenge.fingerprint, &fp)?;
    let identities = &account.client().directory().meta.caa_identities;
    for line in caa_records(identities, account.url(), &args.domains) {
        println!("{line}");
    }
    Ok(())
}

/// Validation methods named in the CAA records: dns-name certificates are validated over
/// http-01 (the broker's only method for them).
const CAA_VALIDATION_METHODS: &[&str] = &["http-01"];

/// The `caa:` lines of `account show`: one RFC 8657 CAA `issue` record per CAA identity of
/// the CA and domain, or a line saying why there is none.
fn caa_records(identities: &[String], account_url: &str, domains: &[String]) -> Vec<String> {
    if identities.is_empty() {
        return vec![
            "caa: the CA's directory names no caaIdentities, so no CAA record can bind issuance \
             to this account (RFC 8657)"
                .to_owned(),
        ];
    }
    let placeholder = ["<domain>".to_owned()];
    let domains = if domains.is_empty() {
        &placeholder[..]
    } else {
        domains
    };
    let mut lines = vec![];
    for domain in domains {
        let domain = domain.trim_end_matches('.');
        for identity in identities {
            let value = acme::caa_record_value(identity, account_url, CAA_VALIDATION_METHODS);
            lines.push(format!("caa: {domain}. IN CAA 0 issue \"{value}\""));
        }
    }
    lines
}

/// The settings and the named `[[ca]]`. Logs go to stderr as configured.
fn load(target: &Target) -> anyhow::Result<(Settings, CaSettings)> {
    let settings = Settings::load(Some(&target.config))?;
    telemetry::init(&settings.telemetry);
    let ca = settings
        .ca
        .iter()
        .find(|c| c.name == target.ca)
        .cloned()
        .with_context(|| {
            let names: Vec<&str> = settings.ca.iter().map(|c| c.name.as_str()).collect();
            format!("no [[ca]] named {:?} (configured: {names:?})", target.ca)
        })?;
    Ok((settings, ca))
}

fn print_key(
    which: &str,
    jwk: &serde_json::Value,
    alg: FingerprintAlgorithm,
    fingerprint: &str,
) -> anyhow::Result<()> {
    use base64::Engine;
    // The RFC 7638 thumbprint is the SHA-256 behind the `jwk_thumbprint` fingerprint.
    let hex: String = challenge::fingerprint(FingerprintAlgorithm::JwkThumbprint, jwk)?
        .trim_start_matches("SHA256 ")
        .replace(':', "");
    let digest = hex::decode(hex)?;
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    println!("{which} key JWK thumbprint: {thumbprint}");
    println!("{which} key SPC token fingerprint ({alg:?}): {fingerprint}");
    Ok(())
}

/// Drops the shared SPC tokens bound to `fingerprint`. A failure only warns: those tokens
/// can no longer be used (lookups key on the new fingerprint) and expire before their `exp`.
async fn drop_tokens(settings: &Settings, fingerprint: &str) {
    if settings.store.backend == StoreBackend::Memory {
        println!(
            "cached SPC tokens: store.backend is memory, so each broker keeps its own, keyed by \
             fingerprint; they switch to the new key on their next attempt"
        );
        return;
    }
    let dropped = match store::connect(&store::RedisSettings::from(&settings.store)).await {
        Ok(redis) => challenge::drop_shared_tokens(&redis, fingerprint).await,
        Err(e) => Err(e),
    };
    match dropped {
        Ok(n) => println!("cached SPC tokens for the old fingerprint dropped from the store: {n}"),
        Err(e) => eprintln!(
            "warning: cached SPC tokens for the old fingerprint were not dropped ({e}); they \
             are no longer used and expire on their own"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caa_lines_per_domain_and_identity() {
        let ids = ["ca.example".to_owned(), "ca2.example".to_owned()];
        let url = "https://ca.example/acme/acct/7";
        assert_eq!(
            caa_records(&ids[..1], url, &[]),
            [
                "caa: <domain>. IN CAA 0 issue \"ca.example; accounturi=https://ca.example/acme/acct/7; validationmethods=http-01\""
            ]
        );
        let lines = caa_records(&ids, url, &["a.example.".into(), "b.example".into()]);
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("caa: a.example. IN CAA 0 issue \"ca.example;"));
        assert!(lines[3].starts_with("caa: b.example. IN CAA 0 issue \"ca2.example;"));
        assert!(caa_records(&[], url, &[])[0].contains("no caaIdentities"));
    }
}
