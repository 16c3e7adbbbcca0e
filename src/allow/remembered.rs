//! "Allowed before": the names a dynamic source (database, ask URL) allowed, by which source and
//! when. Stale-if-error rests on it: when no source can answer, a name remembered here is still
//! allowed, a name that is not is refused.
//!
//! It must survive restarts, or a restart during a database outage (a crash loop, a graceful
//! upgrade, `kamal accessory reboot` while the database fails over) refuses every tenant whose
//! certificate is on disk. So it is kept in memory, written to `<data_dir>/allow/remembered.json`
//! (atomically, 0600, at most [`CAPACITY`] names, entries older than [`KEEP`] dropped) and, with
//! several hosts, to the shared store, from which a host with an empty data directory learns it.
//!
//! A definitive no (a company deactivated, a domain removed) revokes a name here and there.
//! Writes happen in [`Remembered::flush`], called by a background service; nothing on the
//! handshake path does I/O.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::allow::decision::Source;
use crate::domain::Domain;
use crate::util::error::RemoteError;
use crate::util::fs::{create_private_dir, write_atomic, FileError};
use crate::util::time::unix_now;

/// Most names remembered (memory and file).
pub const CAPACITY: u64 = 1_000_000;
/// A name not allowed again for this long is forgotten.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// A name allowed again is written out again only when its entry is older than this (an active
/// tenant is not rewritten on every lookup).
const REFRESH: Duration = Duration::from_secs(3600);
/// Pending changes kept between two flushes; beyond that the next flush rewrites everything
/// it has (the file is always complete; the shared store may miss a few revocations, which the
/// next definitive no repeats).
const PENDING_CAPACITY: usize = 100_000;

/// One remembered name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub source: Source,
    /// When a source last said yes (unix seconds).
    pub at: i64,
}

/// Where several hosts keep what they remember (the shared store).
#[async_trait]
pub trait RememberedStore: Send + Sync {
    /// Every name remembered since `since` (unix seconds).
    async fn load_remembered(&self, since: i64) -> Result<Vec<(Domain, Entry)>, RemoteError>;
    /// Record `upserts` (newer `at` wins) and forget `revoked`.
    async fn save_remembered(
        &self,
        upserts: &[(Domain, Entry)],
        revoked: &[Domain],
    ) -> Result<(), RemoteError>;
}

#[derive(Default)]
struct Pending {
    upserted: HashSet<Domain>,
    revoked: HashSet<Domain>,
    /// Something changed since the file was written.
    dirty: bool,
}

pub struct Remembered {
    names: moka::sync::Cache<Domain, Entry>,
    pending: Mutex<Pending>,
    file: Option<PathBuf>,
}

/// The file: `{"version": 1, "names": [["shop.example", "database", 1764600000], ...]}`.
#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    names: Vec<(String, String, i64)>,
}

impl Remembered {
    /// Memory only (tests, the CLI).
    pub fn in_memory() -> Remembered {
        Remembered {
            names: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(KEEP)
                .build(),
            pending: Mutex::default(),
            file: None,
        }
    }

    /// What `<dir>/allow/remembered.json` holds (an absent file is empty; an unreadable or
    /// corrupt one is reported in the log and replaced at the next flush: the worst it costs is
    /// stale-if-error for names not looked up since).
    pub fn load(dir: &Path) -> Remembered {
        let mut r = Remembered::in_memory();
        let path = dir.join("allow").join("remembered.json");
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(file) => {
                    let oldest = unix_now() - KEEP.as_secs() as i64;
                    let mut skipped = 0usize;
                    for (name, source, at) in file.names {
                        match (Domain::parse(&name), Source::from_label(&source)) {
                            (Ok(name), Some(source)) if at >= oldest => {
                                r.names.insert(name, Entry { source, at });
                            }
                            (Ok(_), Some(_)) => {}
                            _ => skipped += 1,
                        }
                    }
                    if skipped > 0 {
                        log::warn!(
                            "{}: skipped {skipped} entries that are not a name and a source",
                            path.display()
                        );
                    }
                }
                Err(e) => log::warn!(
                    "{} is not a list of allowed names ({e}); starting without it",
                    path.display()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot read {} ({e}); starting without it", path.display()),
        }
        r.file = Some(path);
        r
    }

    /// The source that allowed `name` before, if one did within [`KEEP`].
    pub fn get(&self, name: &Domain) -> Option<Source> {
        self.names.get(name).map(|e| e.source)
    }

    /// A source said yes to `name` now.
    pub fn remember(&self, name: &Domain, source: Source) {
        let now = unix_now();
        let fresh = self
            .names
            .get(name)
            .is_some_and(|e| e.source == source && now - e.at < REFRESH.as_secs() as i64);
        if fresh {
            return;
        }
        self.names.insert(name.clone(), Entry { source, at: now });
        let mut p = self.lock();
        p.dirty = true;
        p.revoked.remove(name);
        if p.upserted.len() < PENDING_CAPACITY {
            p.upserted.insert(name.clone());
        }
    }

    /// A source definitively refused `name`: it is no longer allowed before.
    pub fn revoke(&self, name: &Domain) {
        if !self.names.contains_key(name) {
            return;
        }
        self.names.invalidate(name);
        let mut p = self.lock();
        p.dirty = true;
        p.upserted.remove(name);
        if p.revoked.len() < PENDING_CAPACITY {
            p.revoked.insert(name.clone());
        }
    }

    /// Add what another host remembers (a newer entry wins).
    pub fn merge(&self, entries: Vec<(Domain, Entry)>) {
        let oldest = unix_now() - KEEP.as_secs() as i64;
        let mut added = false;
        for (name, entry) in entries {
            if entry.at < oldest || self.names.get(&name).is_some_and(|e| e.at >= entry.at) {
                continue;
            }
            self.names.insert(name, entry);
            added = true;
        }
        if added {
            self.lock().dirty = true;
        }
    }

    /// Names remembered right now.
    pub fn len(&self) -> u64 {
        self.names.run_pending_tasks();
        self.names.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write what changed: the whole file (atomically), and the changes to `shared`. Nothing
    /// is lost on an error: the changes are kept for the next flush.
    pub async fn flush(&self, shared: Option<&dyn RememberedStore>) -> Result<(), FlushError> {
        let taken = std::mem::take(&mut *self.lock());
        if !taken.dirty {
            return Ok(());
        }
        let file_result = match &self.file {
            Some(path) => self.write_file(path),
            None => Ok(()),
        };
        let shared_result = match shared {
            Some(store) if !(taken.upserted.is_empty() && taken.revoked.is_empty()) => {
                let upserts: Vec<(Domain, Entry)> = taken
                    .upserted
                    .iter()
                    .filter_map(|n| self.names.get(n).map(|e| (n.clone(), e)))
                    .collect();
                let revoked: Vec<Domain> = taken.revoked.iter().cloned().collect();
                store.save_remembered(&upserts, &revoked).await
            }
            _ => Ok(()),
        };
        if file_result.is_err() || shared_result.is_err() {
            // Put the changes back (merged with any made meanwhile) for the next try.
            let mut p = self.lock();
            p.dirty = true;
            if shared_result.is_err() {
                for n in taken.upserted {
                    if p.upserted.len() < PENDING_CAPACITY && !p.revoked.contains(&n) {
                        p.upserted.insert(n);
                    }
                }
                for n in taken.revoked {
                    if p.revoked.len() < PENDING_CAPACITY && !p.upserted.contains(&n) {
                        p.revoked.insert(n);
                    }
                }
            }
        }
        file_result.map_err(FlushError::File)?;
        shared_result.map_err(FlushError::Shared)
    }

    fn write_file(&self, path: &Path) -> Result<(), FileError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let mut names: Vec<(String, String, i64)> = self
            .names
            .iter()
            .map(|(name, e)| {
                (
                    name.as_str().to_string(),
                    e.source.label().to_string(),
                    e.at,
                )
            })
            .collect();
        names.sort();
        let file = File { version: 1, names };
        let bytes = serde_json::to_vec(&file).unwrap_or_default();
        write_atomic(path, &bytes, 0o600)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot write the allowed names: {0}")]
    File(FileError),
    #[error("cannot save the allowed names in the shared store: {0}")]
    Shared(RemoteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[tokio::test]
    async fn remembered_names_survive_a_reload_and_revocations_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let r = Remembered::load(dir.path());
            r.remember(&d("shop.example"), Source::Database);
            r.remember(&d("gone.example"), Source::Ask);
            r.flush(None).await.unwrap();
            r.revoke(&d("gone.example"));
            r.flush(None).await.unwrap();
        }
        let path = dir.path().join("allow/remembered.json");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Remembered::load(dir.path());
        assert_eq!(again.get(&d("shop.example")), Some(Source::Database));
        assert_eq!(again.get(&d("gone.example")), None);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_empty_list_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("allow")).unwrap();
        let path = dir.path().join("allow/remembered.json");
        std::fs::write(&path, b"{not json").unwrap();
        let r = Remembered::load(dir.path());
        assert!(r.is_empty());
        r.remember(&d("shop.example"), Source::Database);
        r.flush(None).await.unwrap();
        assert_eq!(
            Remembered::load(dir.path()).get(&d("shop.example")),
            Some(Source::Database)
        );
    }

    #[test]
    fn entries_older_than_the_keep_period_are_not_loaded_or_merged() {
        let r = Remembered::in_memory();
        let old = unix_now() - KEEP.as_secs() as i64 - 10;
        r.merge(vec![(
            d("old.example"),
            Entry {
                source: Source::Database,
                at: old,
            },
        )]);
        assert_eq!(r.get(&d("old.example")), None);
    }
}
