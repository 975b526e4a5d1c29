//! `certbroker issue` in STAR mode (RFC 8739): one STAR order, and each new short-term
//! certificate written as the CA issues it, until the order's end-date or Ctrl-C (which
//! cancels the order with `--cancel-on-exit`, or after asking on a terminal).

use std::{
    io::{BufRead, IsTerminal, Write},
    path::Path,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use time::OffsetDateTime;

use crate::{
    acme,
    ca::{AttemptError, Issued, Upstream},
    cert::StarOrder,
    config::StarSettings,
};

/// STAR flags of `certbroker issue`.
#[derive(Debug, Args)]
pub(crate) struct StarArgs {
    /// Place a STAR order (RFC 8739): short-term certificates of this many seconds,
    /// renewed by the CA until --star-duration; each is written as it appears.
    #[arg(long, value_name = "SECS", requires = "star_duration")]
    star_lifetime: Option<u64>,
    /// How long the STAR order runs, in seconds (its end-date is now plus this).
    #[arg(long, value_name = "SECS", requires = "star_lifetime")]
    star_duration: Option<u64>,
    /// On Ctrl-C, cancel the STAR order without asking (default: ask on a terminal,
    /// otherwise leave it running).
    #[arg(long, requires = "star_lifetime")]
    cancel_on_exit: bool,
}

impl StarArgs {
    /// `[ca.star]` for the flags, checked as the configuration is.
    pub(crate) fn settings(&self) -> anyhow::Result<Option<StarSettings>> {
        let (Some(lifetime_secs), Some(duration_secs)) = (self.star_lifetime, self.star_duration)
        else {
            return Ok(None);
        };
        anyhow::ensure!(lifetime_secs > 0, "--star-lifetime: must be at least 1");
        anyhow::ensure!(
            duration_secs >= lifetime_secs,
            "--star-duration: must be at least --star-lifetime (one certificate)"
        );
        Ok(Some(StarSettings {
            lifetime: Duration::from_secs(lifetime_secs),
            duration: Duration::from_secs(duration_secs),
        }))
    }
}

/// After the first certificate of a STAR order was written: fetch and write each next one
/// until the end-date, or Ctrl-C. Without STAR (not asked, or the CA offers none) returns
/// at once.
pub(crate) async fn follow(
    args: &StarArgs,
    upstream: &Upstream,
    out: &Path,
    first: Issued,
) -> anyhow::Result<()> {
    if args.star_lifetime.is_none() {
        return Ok(());
    }
    let Some(star) = first.star.clone() else {
        println!(
            "star:      the CA offers no STAR (no meta.auto-renewal): an ordinary certificate"
        );
        return Ok(());
    };
    println!("star:      order {}", star.order_url);
    println!("end-date:  {}", unix(star.end_date));
    let key = first.key_pkcs8.clone();
    let mut current = first;
    let mut failures = 0u32;
    // Pinned once: a Ctrl-C while a fetch is under way is kept for the next wait.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let not_after = current.leaf.not_after.unix_timestamp();
        let Some(due) = star.successor_due(not_after) else {
            println!(
                "the STAR order ends with this certificate (end-date {}); done",
                unix(star.end_date)
            );
            return Ok(());
        };
        let wait = if failures == 0 {
            Duration::from_secs(u64::try_from(due - now()).unwrap_or(0))
        } else {
            Duration::from_millis((star.lifetime_secs * 50).clamp(250, 30_000))
                * 2u32.pow(failures.min(6))
        };
        println!("next:      {}", unix(now() + wait.as_secs() as i64));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = &mut ctrl_c => {
                r.context("waiting for Ctrl-C")?;
                return on_exit(args, upstream, &star).await;
            }
        }
        match upstream.star_current(&current.chain_der, &star).await {
            Ok(next) if next.leaf.serial_hex != current.leaf.serial_hex => {
                failures = 0;
                super::write_cert_files(out, &next.chain_der, key.as_deref())?;
                println!("serial:    {}", next.leaf.serial_hex);
                println!("notAfter:  {}", super::issue::rfc3339(next.leaf.not_after));
                current = next;
            }
            Ok(_) => {
                failures += 1;
                eprintln!("the CA still serves the same certificate; asking again soon");
            }
            Err(AttemptError::Acme(e))
                if e.problem().is_some_and(|p| {
                    p.is_acme(acme::AUTO_RENEWAL_CANCELED) || p.is_acme(acme::AUTO_RENEWAL_EXPIRED)
                }) =>
            {
                println!("the STAR order is over: {e}");
                return Ok(());
            }
            Err(e) => {
                failures += 1;
                eprintln!("fetching the next STAR certificate failed (will retry): {e}");
            }
        }
    }
}

/// Ctrl-C: cancel the order when told to (flag or answer), else leave it running.
async fn on_exit(args: &StarArgs, upstream: &Upstream, star: &StarOrder) -> anyhow::Result<()> {
    let cancel = args.cancel_on_exit || (std::io::stdin().is_terminal() && ask_cancel());
    if !cancel {
        println!(
            "the STAR order keeps running at the CA until {}: {}",
            unix(star.end_date),
            star.order_url
        );
        return Ok(());
    }
    upstream
        .cancel_star(&star.order_url)
        .await
        .context("cancelling the STAR order")?;
    println!("canceled:  {}", star.order_url);
    Ok(())
}

fn ask_cancel() -> bool {
    print!("cancel the STAR order (the CA stops issuing)? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    matches!(line.trim(), "y" | "Y" | "yes")
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn unix(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(super::issue::rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
