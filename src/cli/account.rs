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
    /// Show the account URL, status, contacts and key fingerprints; creates nothing.
    Show(Target),
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

async fn show(target: Target) -> anyhow::Result<()> {
    let (_, ca) = load(&target)?;
    let source = AccountSource::from_settings(&ca)?;
    let (account, state) = ca::show(&source).await?;
    let jwk = account.key().public_jwk();
    let fp = challenge::fingerprint(ca.challenge.fingerprint, &jwk)?;
    println!("account: {}", account.url());
    println!("status: {:?}", state.status);
    println!("contact: {}", state.contact.join(", "));
    println!("key file: {}", source.key_path().display());
    print_key("current", &jwk, ca.challenge.fingerprint, &fp)
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
