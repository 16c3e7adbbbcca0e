//! The account-level order budget (`limits.issuance.orders_per_3h`): every order the edge
//! places with its ACME account (on demand, renewals, pre-provisioning), failed ones included,
//! counted over a sliding window (default Let's Encrypt's 300 new orders per account per 3
//! hours). New names may not use the last `renewal_reserve` orders, which stay for renewals:
//! a flood of new names can never make the certificates already served lapse.
//!
//! The count persists across restarts (`<data_dir>/limits/orders.json`) and, with several
//! hosts, lives in the shared store (`shared::orders`) so that the hosts share one budget, as
//! they share one account.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::util::error::RemoteError;
use crate::util::fs::{create_private_dir, write_atomic, FileError};
use crate::util::time::unix_now;

/// The account budget's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountBudget {
    /// Orders in any `window`. Default 300.
    pub limit: u32,
    /// Of those, the last ones only renewals may use. Default 60 (a fifth).
    pub renewal_reserve: u32,
    /// Default 3 hours.
    pub window: Duration,
}

impl Default for AccountBudget {
    fn default() -> Self {
        AccountBudget {
            limit: 300,
            renewal_reserve: 60,
            window: Duration::from_secs(3 * 3600),
        }
    }
}

impl AccountBudget {
    /// How many orders of this kind may be placed while `used` are counted.
    pub fn allows(&self, used: u32, renewal: bool) -> bool {
        let ceiling = if renewal {
            self.limit
        } else {
            self.limit.saturating_sub(self.renewal_reserve)
        };
        used < ceiling
    }
}

/// The budget is spent for this kind of order until `retry_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub used: u32,
    pub retry_in: Duration,
}

/// What an order log answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted; the id (shared store) identifies the order to mark it failed later.
    Counted(Option<i64>),
    /// The account budget refuses.
    Account(Spent),
    /// The registered domain's weekly budget refuses (a log that keeps one: the shared store).
    Domain(Spent),
}

/// Where orders are counted.
#[async_trait]
pub trait OrderLog: Send + Sync {
    /// Count one order for `registered` (the registered domain) if `budget` allows it, and,
    /// for a new name, if fewer than `weekly` certificates were issued for `registered` in the
    /// last 7 days (a log that can tell across hosts; this host's file leaves that to
    /// `Limits`). `Err`: the log could not be asked.
    async fn record(
        &self,
        registered: &str,
        renewal: bool,
        budget: &AccountBudget,
        weekly: Option<u32>,
    ) -> Result<Recorded, RemoteError>;

    /// The order counted as `id` issued nothing: it no longer counts against its domain's
    /// weekly budget (it still counts against the account's).
    async fn mark_failed(&self, _id: i64) -> Result<(), RemoteError> {
        Ok(())
    }
}

/// `orders.json`: the unix times of the orders in the window.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersFile {
    version: u32,
    orders: Vec<i64>,
}

const ORDERS_FILE_VERSION: u32 = 1;

/// This host's count, in memory and in `<data_dir>/limits/orders.json`.
pub struct LocalOrderLog {
    path: Option<PathBuf>,
    orders: Arc<Mutex<VecDeque<i64>>>,
    /// Held while writing the file, with the snapshot taken under it: a later write never
    /// carries an older snapshot.
    write_lock: Arc<Mutex<()>>,
}

impl LocalOrderLog {
    /// The log of `data_dir`, with what a previous run recorded (a bad file is logged and
    /// treated as empty; it is replaced by the next order).
    pub fn load(data_dir: &Path) -> Result<Arc<LocalOrderLog>, FileError> {
        let dir = data_dir.join("limits");
        create_private_dir(&dir)?;
        let path = dir.join("orders.json");
        let orders = read(&path);
        Ok(Arc::new(LocalOrderLog {
            path: Some(path),
            orders: Arc::new(Mutex::new(orders)),
            write_lock: Arc::default(),
        }))
    }

    /// A log kept in memory only (tests, CLI commands).
    pub fn in_memory() -> Arc<LocalOrderLog> {
        Arc::new(LocalOrderLog {
            path: None,
            orders: Arc::default(),
            write_lock: Arc::default(),
        })
    }

    /// Orders counted in the last `window`.
    #[cfg(test)]
    fn used(&self, window: Duration) -> u32 {
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut orders, unix_now(), window);
        u32::try_from(orders.len()).unwrap_or(u32::MAX)
    }

    fn record_at(
        &self,
        now: i64,
        renewal: bool,
        budget: &AccountBudget,
    ) -> Result<Vec<i64>, Spent> {
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut orders, now, budget.window);
        let used = u32::try_from(orders.len()).unwrap_or(u32::MAX);
        if !budget.allows(used, renewal) {
            // The count drops below the ceiling when enough of the oldest orders leave the
            // window.
            let ceiling = if renewal {
                budget.limit
            } else {
                budget.limit.saturating_sub(budget.renewal_reserve)
            };
            let freeing = (used + 1).saturating_sub(ceiling) as usize;
            let at = orders
                .get(freeing.saturating_sub(1))
                .copied()
                .unwrap_or(now)
                .saturating_add(budget.window.as_secs() as i64);
            return Err(Spent {
                used,
                retry_in: Duration::from_secs(at.saturating_sub(now).max(1) as u64),
            });
        }
        orders.push_back(now);
        Ok(orders.iter().copied().collect())
    }
}

#[async_trait]
impl OrderLog for LocalOrderLog {
    async fn record(
        &self,
        _registered: &str,
        renewal: bool,
        budget: &AccountBudget,
        _weekly: Option<u32>,
    ) -> Result<Recorded, RemoteError> {
        if let Err(spent) = self.record_at(unix_now(), renewal, budget) {
            return Ok(Recorded::Account(spent));
        }
        if let Some(path) = self.path.clone() {
            let (orders, write_lock) = (self.orders.clone(), self.write_lock.clone());
            let written = tokio::task::spawn_blocking(move || {
                let _writing = write_lock.lock().unwrap_or_else(|p| p.into_inner());
                let snapshot: Vec<i64> = orders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .copied()
                    .collect();
                let file = OrdersFile {
                    version: ORDERS_FILE_VERSION,
                    orders: snapshot,
                };
                let json = serde_json::to_vec(&file).unwrap_or_default();
                write_atomic(&path, &json, 0o600)
            })
            .await
            .map_err(|e| e.to_string());
            match written {
                Ok(Ok(())) => {}
                // Counted in memory; only a restart before the next write would forget it.
                Ok(Err(e)) => log::error!("could not save the account order budget: {e}"),
                Err(e) => log::error!("could not save the account order budget: {e}"),
            }
        }
        Ok(Recorded::Counted(None))
    }
}

fn prune(orders: &mut VecDeque<i64>, now: i64, window: Duration) {
    let oldest_kept = now.saturating_sub(window.as_secs() as i64);
    while orders.front().is_some_and(|&t| t <= oldest_kept) {
        orders.pop_front();
    }
    // A clock that went back, or a corrupt file: nothing from the future counts.
    orders.retain(|&t| t <= now.saturating_add(60));
}

fn read(path: &Path) -> VecDeque<i64> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return VecDeque::new(),
        Err(e) => {
            log::error!(
                "could not read {}: {e}; the account order count starts at 0",
                path.display()
            );
            return VecDeque::new();
        }
    };
    match serde_json::from_slice::<OrdersFile>(&bytes) {
        Ok(f) if f.version == ORDERS_FILE_VERSION => {
            let mut orders: Vec<i64> = f.orders;
            orders.sort_unstable();
            orders.into()
        }
        Ok(f) => {
            log::error!(
                "{} has version {}, expected {ORDERS_FILE_VERSION}; the account order count starts at 0",
                path.display(),
                f.version
            );
            VecDeque::new()
        }
        Err(e) => {
            log::error!(
                "{} is corrupt ({e}); the account order count starts at 0 and the file is replaced at the next order",
                path.display()
            );
            VecDeque::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u32, reserve: u32) -> AccountBudget {
        AccountBudget {
            limit,
            renewal_reserve: reserve,
            window: Duration::from_secs(100),
        }
    }

    #[test]
    fn new_names_stop_at_the_reserve_and_renewals_at_the_limit() {
        let log = LocalOrderLog::in_memory();
        let b = budget(5, 2);
        for i in 0..3 {
            assert!(log.record_at(1000 + i, false, &b).is_ok());
        }
        let spent = log.record_at(1003, false, &b).unwrap_err();
        assert_eq!(spent.used, 3);
        assert_eq!(
            spent.retry_in,
            Duration::from_secs(97),
            "when the first order leaves"
        );
        assert!(log.record_at(1003, true, &b).is_ok());
        assert!(log.record_at(1004, true, &b).is_ok());
        assert!(
            log.record_at(1005, true, &b).is_err(),
            "the limit holds for renewals too"
        );
        // The window slides.
        assert!(
            log.record_at(1101, false, &b).is_err(),
            "5 - 1 orders still count"
        );
        assert!(log.record_at(1103, false, &b).is_ok());
    }

    #[tokio::test]
    async fn the_count_survives_a_restart_and_a_bad_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let b = AccountBudget {
            limit: 2,
            renewal_reserve: 0,
            window: Duration::from_secs(3600),
        };
        {
            let log = LocalOrderLog::load(dir.path()).unwrap();
            let ok = Recorded::Counted(None);
            assert_eq!(log.record("a.test", false, &b, None).await.unwrap(), ok);
            assert_eq!(log.record("b.test", false, &b, None).await.unwrap(), ok);
            assert!(matches!(
                log.record("c.test", false, &b, None).await.unwrap(),
                Recorded::Account(_)
            ));
        }
        let again = LocalOrderLog::load(dir.path()).unwrap();
        assert_eq!(again.used(b.window), 2);
        assert!(matches!(
            again.record("c.test", false, &b, None).await.unwrap(),
            Recorded::Account(_)
        ));
        let path = dir.path().join("limits/orders.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(LocalOrderLog::load(dir.path()).unwrap().used(b.window), 0);
    }
}
