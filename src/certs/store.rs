//! Certificate storage: the `Store` contract (implemented by `certs::disk`, `certs::layered` and
//! the multi-host `shared` store).
//!
//! A store keeps bytes, not policy: it does not parse certificates or decide what is valid
//! (the manager does). Contract for every implementation:
//! - absent is `Ok(None)`, never an error;
//! - a concurrent `load` sees the old or the new entry, never a mix (key and chain travel in one
//!   bundle, written atomically);
//! - `save` replaces whatever was there.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::Domain;
use crate::util::fs::FileError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage task failed: {0}")]
    Join(String),
}

impl From<FileError> for StoreError {
    fn from(e: FileError) -> StoreError {
        StoreError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Io { .. } => "io",
            StoreError::Join(_) => "internal",
        }
    }
}

/// What the store knows about a certificate besides the bundle. Informational: the bundle is
/// the source of truth, and a missing or unreadable `meta.json` never hides a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertMeta {
    /// `internal` or `acme`.
    pub issuer: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    /// Key, leaf, intermediates (PEM).
    pub bundle: Vec<u8>,
    pub meta: Option<CertMeta>,
}

/// Where certificates persist between restarts.
#[async_trait]
pub trait Store: Send + Sync {
    /// The entry for `name`, `Ok(None)` when there is none.
    async fn load(&self, name: &Domain) -> Result<Option<StoredCert>, StoreError>;
    /// Atomically replace the entry for `name`.
    async fn save(&self, name: &Domain, cert: &StoredCert) -> Result<(), StoreError>;
    /// Delete the entry; `Ok(false)` when there was none.
    async fn remove(&self, name: &Domain) -> Result<bool, StoreError>;
    /// Every name with an entry (names that do not parse as `Domain` are skipped).
    async fn list(&self) -> Result<Vec<Domain>, StoreError>;
}
