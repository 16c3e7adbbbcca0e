//! The ACME account: one per directory URL, created on the first order and stored atomically
//! (0600) at `<data_dir>/acme/<directory host>-<hash>/account.json`; every later start reuses
//! it. With several hosts the account is shared ([`AccountStore`], implemented by `shared`):
//! the first host to register wins and every host uses the winner's.
//!
//! An account the CA no longer knows (`accountDoesNotExist`: a CA that lost its database, an
//! account deactivated) is replaced: [`Accounts::replace_dead`] registers a new one once, and
//! with several hosts the first replacement stored wins (compare-and-swap on the shared row),
//! so every host moves to the same new account.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use tokio::sync::Mutex;

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
    /// Replace the stored account if it is still `dead_id`; return the stored one afterwards
    /// (ours, or the replacement another host stored first).
    async fn replace_account(
        &self,
        directory: &str,
        dead_id: &str,
        credentials: &[u8],
    ) -> Result<Vec<u8>, RemoteError>;
}

/// The account URL (`id`) inside serialized credentials.
pub fn credentials_id(credentials: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(credentials).ok()?;
    value.get("id")?.as_str().map(str::to_string)
}

/// Whether an ACME error says the account itself is gone (not the order or a name).
pub fn is_dead_account(e: &instant_acme::Error) -> bool {
    let instant_acme::Error::Api(problem) = e else {
        return false;
    };
    let kind = problem.r#type.as_deref().unwrap_or("");
    let detail = problem.detail.as_deref().unwrap_or("").to_ascii_lowercase();
    kind.ends_with(":accountDoesNotExist")
        || (kind.ends_with(":unauthorized") && detail.contains("account"))
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
    /// The account in use; replaced when the CA forgot it.
    account: Mutex<Option<Arc<Account>>>,
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
            account: Mutex::new(None),
            shared,
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, IssueError> {
        let client = http_client(self.trusted_root.as_deref())?;
        Ok(Account::builder_with_http(client))
    }

    /// The account, loaded from disk or created once (and then stored).
    pub async fn account(&self) -> Result<Arc<Account>, IssueError> {
        let mut current = self.account.lock().await;
        if let Some(account) = &*current {
            return Ok(account.clone());
        }
        let account = Arc::new(self.load_or_create_account().await?);
        *current = Some(account.clone());
        Ok(account)
    }

    /// The CA said the account `dead` does not exist: register a new one (unless another order
    /// already did), store it where the old one was, and return it.
    pub async fn replace_dead(&self, dead: &Account) -> Result<Arc<Account>, IssueError> {
        let mut current = self.account.lock().await;
        if let Some(account) = &*current {
            if account.id() != dead.id() {
                return Ok(account.clone());
            }
        }
        log::warn!(
            "the CA at {} no longer knows the ACME account {}; registering a new one",
            self.directory,
            dead.id()
        );
        let (mut account, mut json) = self.register().await?;
        if let Some(shared) = &self.shared {
            // Another host may have replaced it first: then theirs is used (ours stays unused).
            let stored = shared
                .replace_account(&self.directory, dead.id(), &json)
                .await;
            (account, json) = self.adopt_stored(stored, account, json).await?;
        }
        self.save_local(&json)?;
        log::info!(
            "replaced the ACME account at {}: now {}",
            self.directory,
            account.id()
        );
        let account = Arc::new(account);
        *current = Some(account.clone());
        Ok(account)
    }

    /// Whether the account this host would use still exists at the CA (a POST to the account
    /// URL), without creating one: `Ok(None)` when there is no account yet.
    pub async fn verify_existing(&self) -> Result<Option<String>, IssueError> {
        let Ok(bytes) = std::fs::read(&self.account_file) else {
            return Ok(None);
        };
        let account = self.account_from_json(&bytes).await?;
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        match account.update_contacts(&contact).await {
            Ok(()) => Ok(Some(account.id().to_string())),
            Err(e) if is_dead_account(&e) => Err(IssueError::Refused(format!(
                "the CA no longer knows the account {} ({e}); the edge registers a new one at its next order",
                account.id()
            ))),
            Err(e) => Err(classify(&self.directory, e)),
        }
    }

    /// The account the shared store answered with: `json`'s own when it was stored, the one
    /// another host stored first otherwise; when the store could not be asked, ours (this
    /// host keeps it and tries to share it next time).
    async fn adopt_stored(
        &self,
        stored: Result<Vec<u8>, RemoteError>,
        account: Account,
        json: Vec<u8>,
    ) -> Result<(Account, Vec<u8>), IssueError> {
        match stored {
            Ok(winner) if winner != json => Ok((self.account_from_json(&winner).await?, winner)),
            Ok(_) => Ok((account, json)),
            Err(e) => {
                log::warn!("could not share the new ACME account: {e}");
                Ok((account, json))
            }
        }
    }

    async fn account_from_json(&self, bytes: &[u8]) -> Result<Account, IssueError> {
        let credentials: AccountCredentials = serde_json::from_slice(bytes).map_err(|e| {
            IssueError::Refused(format!("the stored ACME account is not valid: {e}"))
        })?;
        self.builder()?
            .from_credentials(credentials)
            .await
            .map_err(|e| IssueError::Unreachable(format!("{}: {e}", self.directory)))
    }

    fn save_local(&self, json: &[u8]) -> Result<(), IssueError> {
        if let Some(dir) = self.account_file.parent() {
            create_private_dir(dir).map_err(|e| IssueError::Refused(e.to_string()))?;
        }
        write_atomic(&self.account_file, json, 0o600)
            .map_err(|e| IssueError::Refused(e.to_string()))
    }

    /// Register a new account at the CA: the account and its serialized credentials.
    async fn register(&self) -> Result<(Account, Vec<u8>), IssueError> {
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
        let json = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| IssueError::Refused(format!("cannot serialize the account: {e}")))?;
        Ok((account, json))
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
        let (mut account, mut json) = self.register().await?;
        if let Some(shared) = &self.shared {
            // Two hosts may create accounts at once: the first stored wins, the other is unused.
            let stored = shared.insert_account(&self.directory, &json).await;
            (account, json) = self.adopt_stored(stored, account, json).await?;
        }
        self.save_local(&json)?;
        log::info!(
            "created ACME account {} at {}",
            account.id(),
            self.directory
        );
        Ok(account)
    }
}
