//! Certificate storage: the `Store` trait and the disk store.
//!
//! A store keeps bytes, not policy: it does not parse certificates or decide what is valid
//! (the manager does). Contract for every implementation:
//! - absent is `Ok(None)`, never an error;
//! - a concurrent `load` sees the old or the new entry, never a mix (key and chain travel in one
//!   bundle, written atomically);
//! - `save` replaces whatever was there.
//!
//! Disk layout under the data directory (mode 0700 directories, 0600 key material):
//! ```text
//! certs/<name>/bundle.pem   private key + leaf + intermediates (0600)
//! certs/<name>/meta.json    issuer and dates, informational (0644)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::Domain;

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

/// Several hosts: the shared PostgreSQL store is authoritative, the disk store is this host's
/// copy. A load asks PostgreSQL first and refreshes the disk copy; when PostgreSQL cannot
/// answer, the disk copy is served (a host keeps serving while the database is down). A name
/// only on disk (a host that ran alone before) is copied up. Saves go to both.
pub struct LayeredStore {
    local: DiskStore,
    shared: Arc<crate::shared::SharedStore>,
}

impl LayeredStore {
    pub fn new(local: DiskStore, shared: Arc<crate::shared::SharedStore>) -> LayeredStore {
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

/// Create `dir` and its parents; the leaf directory gets mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| StoreError::Io {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Write `bytes` to `path` so that a reader sees the old file or the new one, never a torn one:
/// a temporary file in the same directory, created with `mode`, written, fsynced, renamed over
/// `path`, then the directory fsynced so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{file_name}.tmp.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io {
            op,
            path: p,
            source,
        }
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("rename", path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
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
