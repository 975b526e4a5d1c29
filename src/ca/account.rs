//! The ACME account of one `[[ca]]`: its key file, and finding or creating the account.
//!
//! The key file (`ca.account_key`, PKCS#8 PEM, mode 0600) is the account's only persisted
//! state: the account URL is found again from the key (`onlyReturnExisting`). Every
//! [`super::Upstream`] attempt compares the file's [`KeyFileStamp`] with the one it loaded,
//! so a key rolled over by `certbroker account rollover` (which replaces the file by a
//! rename) is picked up by a running broker on its next attempt, without a restart; an
//! attempt the CA refused while the file changed is run once more with the new key.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use rustls_pki_types::CertificateDer;
use tracing::info;

use super::AttemptError;
use crate::{
    acme::{Account, AccountKey, AcmeError, Client, ClientSettings, ExternalAccountKey},
    acme::{NewAccount, RetryPolicy},
    config::CaSettings,
    tls,
};

/// Everything needed to reach one CA's ACME account.
#[derive(Debug, Clone)]
pub struct AccountSource {
    /// The `[[ca]]` name, for messages.
    pub name: String,
    directory: url::Url,
    trust_roots: Option<Vec<CertificateDer<'static>>>,
    key_path: PathBuf,
    contact: Vec<String>,
    eab: Option<ExternalAccountKey>,
    accept_terms_of_service: bool,
    request_timeout: Duration,
    attempt_timeout: Duration,
    /// Where the clients report their ACME requests, once the metrics exist.
    metrics: Arc<OnceLock<crate::telemetry::Metrics>>,
}

/// Identifies one version of the key file: replacing it (a rename) or rewriting it changes
/// the stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl AccountSource {
    /// Reads what the settings name: trust roots, and the EAB key from its environment
    /// variable. Fails naming the key that is wrong.
    pub fn from_settings(s: &CaSettings) -> Result<Self, AttemptError> {
        let setup = |key: &str, e: &dyn std::fmt::Display| {
            AttemptError::Setup(format!("ca {:?}: {key}: {e}", s.name))
        };
        let trust_roots = s
            .trust_roots
            .as_deref()
            .map(tls::read_roots)
            .transpose()
            .map_err(|e| setup("trust_roots", &e))?;
        let eab = s
            .eab
            .as_ref()
            .map(|eab| {
                let key = std::env::var(&eab.hmac_key_env).map_err(|_| {
                    setup(
                        "eab.hmac_key_env",
                        &format!("{} is not set", eab.hmac_key_env),
                    )
                })?;
                ExternalAccountKey::from_base64url(eab.key_id.clone(), &key)
                    .map_err(|e| setup("eab.hmac_key_env", &e))
            })
            .transpose()?;
        Ok(Self {
            name: s.name.clone(),
            directory: s.directory.clone(),
            trust_roots,
            key_path: s.account_key.clone(),
            contact: s.contact.clone(),
            eab,
            accept_terms_of_service: s.accept_terms_of_service,
            request_timeout: s.request_timeout,
            attempt_timeout: s.attempt_timeout,
            metrics: Arc::default(),
        })
    }

    /// Clients made from now on (and made before, if they have not sent a request yet:
    /// the sink is looked up per request) count their ACME requests in `metrics`, as `ca`
    /// = this CA's name. Only the first call counts.
    pub fn set_metrics(&self, metrics: crate::telemetry::Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// The trust roots for the CA's HTTPS (`None`: the system's).
    pub fn trust_roots(&self) -> Option<&Vec<CertificateDer<'static>>> {
        self.trust_roots.as_ref()
    }

    /// The account key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// An ACME client for the CA (fetches the directory).
    pub async fn client(&self) -> Result<Client, AttemptError> {
        Ok(Client::new(ClientSettings {
            directory_url: self.directory.clone(),
            trust_roots: self.trust_roots.clone(),
            request_timeout: self.request_timeout,
            retry: RetryPolicy::new().timeout(self.attempt_timeout),
            // Bounded, and enough that a CA rejecting half its nonces still works
            // (a POST then fails with probability 0.5^21).
            max_bad_nonce_retries: 20,
            observer: Some(Arc::new(super::metrics::AcmeRequests {
                ca: self.name.clone(),
                sink: self.metrics.clone(),
            })),
        })
        .await?)
    }

    /// The account of `key` at the CA; with `create`, a new one (contact, EAB, terms
    /// agreed) when the CA knows none.
    pub async fn open(
        &self,
        client: &Client,
        key: AccountKey,
        create: bool,
    ) -> Result<Account, AttemptError> {
        match client.find_account(key.clone()).await {
            Ok(a) => Ok(a),
            Err(e) if create && is_account_does_not_exist(&e) => {
                let terms = client.directory().meta.terms_of_service.clone();
                if let Some(url) = terms.filter(|_| !self.accept_terms_of_service) {
                    return Err(AttemptError::TermsNotAgreed(url));
                }
                let req = NewAccount {
                    contact: self.contact.clone(),
                    terms_of_service_agreed: self.accept_terms_of_service,
                    external_account_binding: self.eab.clone(),
                };
                let a = client.new_account(key, &req).await?;
                info!(ca = %self.name, account = %a.url(), "ACME account created");
                Ok(a)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The key file's current stamp; `None` when it does not exist (yet).
    pub fn stamp(&self) -> Option<KeyFileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.key_path).ok()?;
        Some(KeyFileStamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Reads the key file; `None` when it does not exist.
    pub fn read_key(&self) -> Result<Option<AccountKey>, AttemptError> {
        match std::fs::read(&self.key_path) {
            Ok(pem) => Ok(Some(AccountKey::from_pkcs8_pem(&pem)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.setup(&e)),
        }
    }

    /// Reads the key file, or creates a key there (mode 0600) when there is none.
    pub fn load_or_create_key(&self) -> Result<AccountKey, AttemptError> {
        if let Some(key) = self.read_key()? {
            return Ok(key);
        }
        let key = AccountKey::generate()?;
        if let Some(dir) = self.key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.setup(&e))?;
        }
        write_private(&self.key_path, key.to_pkcs8_pem().as_bytes()).map_err(|e| self.setup(&e))?;
        info!(path = %self.key_path.display(), "created ACME account key");
        Ok(key)
    }

    /// A sibling of the key file: `<key file><suffix>`.
    pub fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.key_path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    fn setup(&self, e: &dyn std::fmt::Display) -> AttemptError {
        AttemptError::Setup(format!("account key {}: {e}", self.key_path.display()))
    }
}

/// Whether the CA said it has no account for the key.
pub(crate) fn is_account_does_not_exist(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Problem { problem, .. }
        if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
}

/// Writes a secret file readable by the owner only, and flushes it to disk.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Moves `from` over `to` atomically (a rename in one directory) and flushes the directory,
/// so a reader sees either the old file or the new one, never a torn one.
pub(crate) fn replace_file(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path) -> AccountSource {
        let settings = crate::config::Settings::from_toml(&format!(
            "[[ca]]\nname = \"a\"\ndirectory = \"https://ca.test/dir\"\naccount_key = \"{}\"",
            dir.join("sub/acct.pem").display()
        ))
        .unwrap();
        AccountSource::from_settings(&settings.ca[0]).unwrap()
    }

    #[test]
    fn creates_once_with_0600_and_stamps_change_on_replace() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        assert_eq!(src.stamp(), None);
        assert!(src.read_key().unwrap().is_none());
        let key = src.load_or_create_key().unwrap();
        let mode = std::fs::metadata(src.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(src.load_or_create_key().unwrap(), key);
        let before = src.stamp().unwrap();
        assert_eq!(src.stamp(), Some(before));

        let next = AccountKey::generate().unwrap();
        let staged = src.sibling(".new");
        write_private(&staged, next.to_pkcs8_pem().as_bytes()).unwrap();
        replace_file(&staged, src.key_path()).unwrap();
        assert_ne!(src.stamp(), Some(before));
        assert_eq!(src.read_key().unwrap(), Some(next));
        assert!(!staged.exists());
    }
}
