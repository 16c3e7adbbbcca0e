//! The disk store: certificates as files under the data directory, written atomically.
//!
//! Layout (mode 0700 directories, 0600 key material):
//! ```text
//! certs/<name>/bundle.pem   private key + leaf + intermediates (0600)
//! certs/<name>/meta.json    issuer and dates, informational (0644)
//! ```

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::certs::store::{CertMeta, Store, StoreError, StoredCert};
use crate::domain::Domain;
use crate::util::fs::{create_private_dir, write_atomic};

/// Certificates as files under `<data_dir>/certs`. Cheap to clone (it holds only its root).
#[derive(Clone)]
pub struct DiskStore {
    root: std::sync::Arc<Path>,
}

const BUNDLE: &str = "bundle.pem";
const META: &str = "meta.json";

impl DiskStore {
    /// Use `<data_dir>/certs`, creating it (0700) when missing.
    pub fn open(data_dir: &Path) -> Result<DiskStore, StoreError> {
        let root = data_dir.join("certs");
        create_private_dir(&root)?;
        Ok(DiskStore { root: root.into() })
    }

    pub fn dir_for(&self, name: &Domain) -> PathBuf {
        // A `Domain` holds only [a-z0-9.-] and never starts with a dot, so it is a safe file name.
        self.root.join(name.as_str())
    }

    fn load_sync(&self, name: &Domain) -> Result<Option<StoredCert>, StoreError> {
        let dir = self.dir_for(name);
        let bundle_path = dir.join(BUNDLE);
        let bundle = match std::fs::read(&bundle_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read",
                    path: bundle_path,
                    source,
                })
            }
        };
        let meta = std::fs::read(dir.join(META))
            .ok()
            .and_then(|m| serde_json::from_slice::<CertMeta>(&m).ok());
        Ok(Some(StoredCert { bundle, meta }))
    }

    fn save_sync(&self, name: &Domain, cert: &StoredCert) -> Result<(), StoreError> {
        let dir = self.dir_for(name);
        create_private_dir(&dir)?;
        write_atomic(&dir.join(BUNDLE), &cert.bundle, 0o600)?;
        if let Some(meta) = &cert.meta {
            let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
            write_atomic(&dir.join(META), &json, 0o644)?;
        }
        Ok(())
    }

    fn remove_sync(&self, name: &Domain) -> Result<bool, StoreError> {
        let dir = self.dir_for(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                op: "remove",
                path: dir,
                source,
            }),
        }
    }

    fn list_sync(&self) -> Result<Vec<Domain>, StoreError> {
        let entries = std::fs::read_dir(&self.root).map_err(|source| StoreError::Io {
            op: "list",
            path: self.root.to_path_buf(),
            source,
        })?;
        let mut names: Vec<Domain> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(BUNDLE).is_file())
            .filter_map(|e| e.file_name().to_str().and_then(|n| Domain::parse(n).ok()))
            .collect();
        names.sort();
        Ok(names)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

#[async_trait]
impl Store for DiskStore {
    async fn load(&self, name: &Domain) -> Result<Option<StoredCert>, StoreError> {
        let (this, name) = (self.clone(), name.clone());
        blocking(move || this.load_sync(&name)).await
    }

    async fn save(&self, name: &Domain, cert: &StoredCert) -> Result<(), StoreError> {
        let (this, name, cert) = (self.clone(), name.clone(), cert.clone());
        blocking(move || this.save_sync(&name, &cert)).await
    }

    async fn remove(&self, name: &Domain) -> Result<bool, StoreError> {
        let (this, name) = (self.clone(), name.clone());
        blocking(move || this.remove_sync(&name)).await
    }

    async fn list(&self) -> Result<Vec<Domain>, StoreError> {
        let this = self.clone();
        blocking(move || this.list_sync()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::store::CertMeta;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn name(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[tokio::test]
    async fn absent_is_none_and_roundtrip_works() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        assert_eq!(store.load(&name("a.test")).await.unwrap(), None);
        let cert = StoredCert {
            bundle: b"bundle".to_vec(),
            meta: Some(CertMeta {
                issuer: "internal".into(),
                issued_at: 1,
                not_before: 2,
                not_after: 3,
            }),
        };
        store.save(&name("a.test"), &cert).await.unwrap();
        assert_eq!(store.load(&name("a.test")).await.unwrap(), Some(cert));
        assert_eq!(store.list().await.unwrap(), vec![name("a.test")]);
        assert!(store.remove(&name("a.test")).await.unwrap());
        assert!(!store.remove(&name("a.test")).await.unwrap());
        assert_eq!(store.load(&name("a.test")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn modes_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let cert = StoredCert {
            bundle: b"k".to_vec(),
            meta: None,
        };
        store.save(&name("a.test"), &cert).await.unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path().join("certs")), 0o700);
        assert_eq!(mode(store.dir_for(&name("a.test"))), 0o700);
        assert_eq!(mode(store.dir_for(&name("a.test")).join(BUNDLE)), 0o600);
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(store.dir_for(&name("a.test")))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    /// A reader racing a writer sees one complete version or the other, never a torn file
    /// (the counterpart of certmagic's TestFileStorageStoreLoadRace).
    #[test]
    fn concurrent_load_never_sees_a_torn_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let n = name("race.test");
        let versions: Vec<Vec<u8>> = (0..2u8).map(|v| vec![b'a' + v; 256 * 1024]).collect();
        store
            .save_sync(
                &n,
                &StoredCert {
                    bundle: versions[0].clone(),
                    meta: None,
                },
            )
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, n, versions, stop) =
                (store.clone(), n.clone(), versions.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let cert = StoredCert {
                        bundle: versions[i % 2].clone(),
                        meta: None,
                    };
                    store.save_sync(&n, &cert).unwrap();
                    i += 1;
                }
                i
            })
        };
        for _ in 0..500 {
            let got = store.load_sync(&n).unwrap().expect("present").bundle;
            assert!(versions.contains(&got), "torn read of {} bytes", got.len());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
    }
}
