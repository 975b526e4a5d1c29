//! Account key rollover and deactivation, as `certbroker account` runs them.
//!
//! **Rollover** ([RFC 8555 §7.3.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5)),
//! ordered so that no crash loses the key the CA holds:
//! 1. find (or create) the account with the current key file;
//! 2. generate the new key and write it to `<key file>.new` (0600, flushed);
//! 3. keyChange. Should the answer be lost (timeout, 5xx), the new key is tried
//!    (`onlyReturnExisting`): if it names the same account, the change happened;
//! 4. rename `<key file>.new` over the key file (atomic; a running broker picks the new
//!    file up on its next attempt).
//!
//! If the process dies between 3 and 4, `<key file>.new` holds the account's key: move it
//! over the key file. No `.old` copy is kept: once the CA has switched, the old key opens
//! nothing (the CA refuses it, and its SPC tokens are dropped), so keeping it would only
//! leave one more private key lying around.
//!
//! **Deactivation** ([§7.3.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6)) is
//! irreversible. The key file is renamed to `<key file>.deactivated`, so the next use of
//! this `[[ca]]` creates a new key and a new account instead of failing forever.

use super::{
    AttemptError,
    account::{AccountSource, is_account_does_not_exist, replace_file, write_private},
};
use crate::acme::{Account, AccountKey, AccountState};

/// What a rollover did.
#[derive(Debug)]
pub struct RolledOver {
    /// The account URL (unchanged by keyChange).
    pub account_url: String,
    /// The public JWK of the key the account had.
    pub old_jwk: serde_json::Value,
    /// The public JWK of the key it has now (and the key file holds).
    pub new_jwk: serde_json::Value,
}

/// Rolls the account of `source` over to a fresh P-256 key and replaces the key file.
pub async fn roll_over(source: &AccountSource) -> Result<RolledOver, AttemptError> {
    let staged = source.sibling(".new");
    if staged.exists() {
        return Err(AttemptError::Setup(format!(
            "{} exists: an earlier rollover did not finish. If the CA holds that key, move it \
             over {}; otherwise remove it. Then run the rollover again",
            staged.display(),
            source.key_path().display()
        )));
    }
    let client = source.client().await?;
    let account = source
        .open(&client, source.load_or_create_key()?, true)
        .await?;
    let new_key = AccountKey::generate()?;
    write_private(&staged, new_key.to_pkcs8_pem().as_bytes())
        .map_err(|e| setup(source, &staged, &e))?;
    if let Err(e) = account.key_change(new_key.clone()).await {
        let switched = matches!(
            client.find_account(new_key.clone()).await,
            Ok(a) if a.url() == account.url()
        );
        if !switched {
            let _ = std::fs::remove_file(&staged);
            return Err(e.into());
        }
        tracing::warn!(error = %e, "keyChange answer lost, but the CA has the new key");
    }
    replace_file(&staged, source.key_path()).map_err(|e| {
        AttemptError::Setup(format!(
            "the CA now holds the new key, but moving {} over {} failed ({e}): move it by hand",
            staged.display(),
            source.key_path().display()
        ))
    })?;
    tracing::info!(ca = %source.name, account = %account.url(), "account key rolled over");
    Ok(RolledOver {
        account_url: account.url().to_owned(),
        old_jwk: account.key().public_jwk(),
        new_jwk: new_key.public_jwk(),
    })
}

/// Deactivates the account of the existing key file, then renames the file to
/// `<key file>.deactivated`. Returns the account URL and the deactivated key's public JWK.
pub async fn deactivate(
    source: &AccountSource,
) -> Result<(String, serde_json::Value), AttemptError> {
    let account = existing(source).await?;
    account.deactivate().await?;
    let moved = source.sibling(".deactivated");
    replace_file(source.key_path(), &moved).map_err(|e| setup(source, &moved, &e))?;
    tracing::info!(ca = %source.name, account = %account.url(), "account deactivated");
    Ok((account.url().to_owned(), account.key().public_jwk()))
}

/// The account of the existing key file and what the CA says about it; creates nothing.
pub async fn show(source: &AccountSource) -> Result<(Account, AccountState), AttemptError> {
    let account = existing(source).await?;
    let state = account.state().await?;
    Ok((account, state))
}

/// The account of the existing key file; an error when there is no file or no account.
async fn existing(source: &AccountSource) -> Result<Account, AttemptError> {
    let key = source.read_key()?.ok_or_else(|| {
        AttemptError::Setup(format!(
            "ca {:?}: no account key at {}",
            source.name,
            source.key_path().display()
        ))
    })?;
    let client = source.client().await?;
    source.open(&client, key, false).await.map_err(|e| match e {
        AttemptError::Acme(a) if is_account_does_not_exist(&a) => AttemptError::Setup(format!(
            "ca {:?}: the CA has no account for the key in {}",
            source.name,
            source.key_path().display()
        )),
        other => other,
    })
}

fn setup(
    source: &AccountSource,
    path: &std::path::Path,
    e: &dyn std::fmt::Display,
) -> AttemptError {
    AttemptError::Setup(format!("ca {:?}: {}: {e}", source.name, path.display()))
}
