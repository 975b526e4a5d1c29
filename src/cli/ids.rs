//! Identifier flags shared by `issue` and `get`: `--spc`, `--tn`, `--tn-range`, `--dns`.

use anyhow::{Context, bail};
use clap::Args;

use crate::shaken::{TnAuthList, TnEntry};

/// What to certify. TNAuthList entries keep the order given.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdArgs {
    /// Service Provider Code (repeatable).
    #[arg(long = "spc", value_name = "SPC")]
    pub(crate) spc: Vec<String>,
    /// One telephone number (repeatable).
    #[arg(long = "tn", value_name = "TN")]
    pub(crate) tn: Vec<String>,
    /// A range of telephone numbers as START:COUNT (repeatable).
    #[arg(long = "tn-range", value_name = "START:COUNT")]
    pub(crate) tn_range: Vec<String>,
    /// A DNS name (repeatable); not combinable with the TNAuthList flags.
    #[arg(long = "dns", value_name = "NAME")]
    pub(crate) dns: Vec<String>,
}

/// Parsed identifier flags.
#[derive(Debug, Clone)]
pub(crate) enum Ids {
    TnAuthList(TnAuthList),
    Dns(Vec<String>),
}

impl IdArgs {
    pub(crate) fn parse(&self) -> anyhow::Result<Ids> {
        let tn_given = !(self.spc.is_empty() && self.tn.is_empty() && self.tn_range.is_empty());
        match (tn_given, self.dns.is_empty()) {
            (false, true) => bail!("give at least one of --spc, --tn, --tn-range or --dns"),
            (true, false) => bail!("--dns cannot be combined with --spc/--tn/--tn-range"),
            (false, false) => Ok(Ids::Dns(self.dns.clone())),
            (true, true) => {
                let mut entries = vec![];
                for s in &self.spc {
                    entries.push(TnEntry::spc(s).with_context(|| format!("--spc {s}"))?);
                }
                for t in &self.tn {
                    entries.push(TnEntry::one(t).with_context(|| format!("--tn {t}"))?);
                }
                for r in &self.tn_range {
                    let (start, count) = r
                        .split_once(':')
                        .with_context(|| format!("--tn-range {r}: expected START:COUNT"))?;
                    let count: u32 = count
                        .parse()
                        .with_context(|| format!("--tn-range {r}: COUNT is not a number"))?;
                    entries.push(
                        TnEntry::range(start, count).with_context(|| format!("--tn-range {r}"))?,
                    );
                }
                Ok(Ids::TnAuthList(TnAuthList::new(entries)?))
            }
        }
    }
}
