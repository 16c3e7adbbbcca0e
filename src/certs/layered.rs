//! Several hosts: a remote store (the shared PostgreSQL one) in front of this host's disk copy.

use std::sync::Arc;

use async_trait::async_trait;

use crate::certs::disk::DiskStore;
use crate::certs::store::{Store, StoreError, StoredCert};
use crate::domain::Domain;

/// Several hosts: the shared store (`remote`) is authoritative, the disk store is this host's
/// copy. A load asks PostgreSQL first and refreshes the disk copy; when PostgreSQL cannot
/// answer, the disk copy is served (a host keeps serving while the database is down). A name
/// only on disk (a host that ran alone before) is copied up. Saves go to both.
pub struct LayeredStore {
    local: DiskStore,
    shared: Arc<dyn Store>,
}

impl LayeredStore {
    pub fn new(local: DiskStore, shared: Arc<dyn Store>) -> LayeredStore {
        LayeredStore { local, shared }
    }
}

#[async_trait]
impl Store for LayeredStore {
    async fn load(&self, name: &Domain) -> Result<Option<StoredCert>, StoreError> {
        match self.shared.load(name).await {
            Ok(Some(cert)) => {
                if self.local.load(name).await.ok().flatten().as_ref() != Some(&cert) {
                    if let Err(e) = self.local.save(name, &cert).await {
                        log::warn!("{name}: could not refresh the disk copy: {e}");
                    }
                }
                Ok(Some(cert))
            }
            Ok(None) => {
                let local = self.local.load(name).await?;
                if let Some(cert) = &local {
                    if let Err(e) = self.shared.save(name, cert).await {
                        log::warn!(
                            "{name}: could not copy the disk certificate to the shared store: {e}"
                        );
                    }
                }
                Ok(local)
            }
            Err(e) => {
                log::warn!("{name}: the shared store is unavailable ({e}); using the disk copy");
                self.local.load(name).await
            }
        }
    }

    async fn save(&self, name: &Domain, cert: &StoredCert) -> Result<(), StoreError> {
        self.local.save(name, cert).await?;
        self.shared.save(name, cert).await
    }

    async fn remove(&self, name: &Domain) -> Result<bool, StoreError> {
        let local = self.local.remove(name).await?;
        let shared = self.shared.remove(name).await?;
        Ok(local || shared)
    }

    async fn list(&self) -> Result<Vec<Domain>, StoreError> {
        let mut names = self.local.list().await?;
        match self.shared.list().await {
            Ok(more) => names.extend(more),
            Err(e) => {
                log::warn!("the shared store is unavailable ({e}); listing the disk copy only")
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}
