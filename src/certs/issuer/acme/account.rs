//! The ACME account: one per directory URL, created on the first order and stored atomically
//! (0600) at `<data_dir>/acme/<directory host>-<hash>/account.json`; every later start reuses
//! it. With several hosts the account is shared ([`AccountStore`], implemented by `shared`):
//! the first host to register wins and every host uses the winner's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use tokio::sync::OnceCell;

use crate::certs::issuer::acme::client::{classify, http_client};
use crate::certs::issuer::acme::settings::{AcmeSettings, EabSettings};
use crate::certs::issuer::IssueError;
use crate::util::error::RemoteError;
use crate::util::fs::{create_private_dir, write_atomic};

/// ACME account credentials shared by several hosts, keyed by directory URL.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// The credentials stored for `directory`, `Ok(None)` when none.
    async fn load_account(&self, directory: &str) -> Result<Option<Vec<u8>>, RemoteError>;
    /// Store `credentials` unless an account for `directory` exists; return the stored one
    /// (ours or the winner's).
    async fn insert_account(
        &self,
        directory: &str,
        credentials: &[u8],
    ) -> Result<Vec<u8>, RemoteError>;
}

/// Where the account for `directory` lives: one directory per CA, named so an operator can tell
/// them apart (`acme-v02.api.letsencrypt.org-1a2b3c4d`).
pub fn account_dir(data_dir: &Path, directory: &str) -> PathBuf {
    let host: String = directory
        .split("://")
        .nth(1)
        .unwrap_or(directory)
        .split(['/', '?'])
        .next()
        .unwrap_or("ca")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a: stable across builds (std's hasher is not), enough to separate two paths on one host.
    let hash = directory.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    data_dir
        .join("acme")
        .join(format!("{host}-{:08x}", hash as u32))
}

/// The account of one directory, loaded or created once per process.
pub struct Accounts {
    directory: String,
    contact: Vec<String>,
    eab: Option<EabSettings>,
    trusted_root: Option<PathBuf>,
    account_file: PathBuf,
    account: OnceCell<Account>,
    /// The store shared by several hosts (one ACME account for all of them).
    shared: Option<Arc<dyn AccountStore>>,
}

impl Accounts {
    pub fn new(
        settings: &AcmeSettings,
        data_dir: &Path,
        shared: Option<Arc<dyn AccountStore>>,
    ) -> Accounts {
        Accounts {
            directory: settings.directory.clone(),
            contact: settings.contact.clone(),
            eab: settings.eab.clone(),
            trusted_root: settings.trusted_root.clone(),
            account_file: account_dir(data_dir, &settings.directory).join("account.json"),
            account: OnceCell::new(),
            shared,
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, IssueError> {
        let client = http_client(self.trusted_root.as_deref())?;
        Ok(Account::builder_with_http(client))
    }

    /// The account, loaded from disk or created once (and then stored).
    pub async fn account(&self) -> Result<&Account, IssueError> {
        self.account
            .get_or_try_init(|| self.load_or_create_account())
            .await
    }

    async fn load_or_create_account(&self) -> Result<Account, IssueError> {
        // Several hosts use one account: the shared copy wins over this host's file.
        if let Some(shared) = &self.shared {
            match shared.load_account(&self.directory).await {
                Ok(Some(bytes)) => {
                    if let Some(dir) = self.account_file.parent() {
                        let _ = create_private_dir(dir);
                    }
                    if let Err(e) = write_atomic(&self.account_file, &bytes, 0o600) {
                        log::warn!("could not keep a local copy of the shared ACME account: {e}");
                    }
                }
                Ok(None) => {
                    // A host that ran alone before brings its account along.
                    if let Ok(local) = std::fs::read(&self.account_file) {
                        if let Err(e) = shared.insert_account(&self.directory, &local).await {
                            log::warn!("could not share the ACME account: {e}");
                        }
                    }
                }
                Err(e) => log::warn!("the shared store has no answer about the ACME account ({e}); using this host's"),
            }
        }
        if let Ok(bytes) = std::fs::read(&self.account_file) {
            let credentials: AccountCredentials = serde_json::from_slice(&bytes).map_err(|e| {
                IssueError::Refused(format!(
                    "{} is not a valid ACME account file ({e}); move it away to create a new account",
                    self.account_file.display()
                ))
            })?;
            return self
                .builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| IssueError::Unreachable(format!("{}: {e}", self.directory)));
        }
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let eab = self
            .eab
            .as_ref()
            .map(|e| ExternalAccountKey::new(e.key_id.clone(), &e.hmac_key));
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| classify(&self.directory, e))?;
        let mut json = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| IssueError::Refused(format!("cannot serialize the account: {e}")))?;
        let mut account = account;
        if let Some(shared) = &self.shared {
            // Two hosts may create accounts at once: the first stored wins, the other is unused.
            match shared.insert_account(&self.directory, &json).await {
                Ok(winner) if winner != json => {
                    let credentials: AccountCredentials =
                        serde_json::from_slice(&winner).map_err(|e| {
                            IssueError::Refused(format!(
                                "the shared ACME account is not valid: {e}"
                            ))
                        })?;
                    account = self
                        .builder()?
                        .from_credentials(credentials)
                        .await
                        .map_err(|e| IssueError::Unreachable(format!("{}: {e}", self.directory)))?;
                    json = winner;
                }
                Ok(_) => {}
                Err(e) => log::warn!("could not share the new ACME account: {e}"),
            }
        }
        if let Some(dir) = self.account_file.parent() {
            create_private_dir(dir).map_err(|e| IssueError::Refused(e.to_string()))?;
        }
        write_atomic(&self.account_file, &json, 0o600)
            .map_err(|e| IssueError::Refused(e.to_string()))?;
        log::info!(
            "created ACME account {} at {}",
            account.id(),
            self.directory
        );
        Ok(account)
    }
}
