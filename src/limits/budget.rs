//! The per-registered-domain order budget's data: the key (the registered domain by the public
//! suffix list), the sliding 7-day window, and `budget.json` (its file format and how a bad
//! file is read). `limits::issuance` owns the counting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::Domain;

/// Length of the budget window: Let's Encrypt counts certificates per registered domain over a
/// sliding 7 days.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

const BUDGET_FILE_VERSION: u32 = 1;

/// The registered domain of `name` by the public suffix list, the key of the weekly budget:
/// `example.co.uk` for `a.b.example.co.uk`, `tenant.test` for `shop.tenant.test` (unknown TLDs
/// count as one-label suffixes). A name that is itself a public suffix (or a single label) is
/// its own key.
pub fn registered_domain(name: &Domain) -> &str {
    psl::domain_str(name.as_str()).unwrap_or(name.as_str())
}

/// `budget.json`, version 1. Timestamps are unix seconds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    version: u32,
    /// Informational: the window the timestamps were kept for.
    window_secs: u64,
    orders: BTreeMap<String, Vec<i64>>,
}

impl BudgetFile {
    /// The file for the orders counted per registered domain.
    pub fn of(budget: &HashMap<String, VecDeque<i64>>) -> BudgetFile {
        BudgetFile {
            version: BUDGET_FILE_VERSION,
            window_secs: BUDGET_WINDOW.as_secs(),
            orders: budget
                .iter()
                .map(|(k, q)| (k.clone(), q.iter().copied().collect()))
                .collect(),
        }
    }
}

/// Drop timestamps that left the window (and absurd future ones from a corrupt clock/file).
pub fn prune(q: &mut VecDeque<i64>, wall: i64) {
    let window = BUDGET_WINDOW.as_secs() as i64;
    let oldest_kept = wall.saturating_sub(window);
    while q.front().is_some_and(|&t| t <= oldest_kept) {
        q.pop_front();
    }
    let newest_kept = wall.saturating_add(window);
    q.retain(|&t| t <= newest_kept);
}

/// Read `budget.json`; anything wrong is logged and yields an empty (or partial) budget.
pub fn read_budget(path: &Path, wall: i64) -> HashMap<String, VecDeque<i64>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            log::error!(
                "could not read the issuance budget {}: {e}; starting with an empty budget",
                path.display()
            );
            return HashMap::new();
        }
    };
    let file: BudgetFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            log::error!(
                "the issuance budget {} is corrupt ({e}); starting with an empty budget, \
                 the file is replaced at the next order",
                path.display()
            );
            return HashMap::new();
        }
    };
    if file.version != BUDGET_FILE_VERSION {
        log::error!(
            "the issuance budget {} has version {}, expected {BUDGET_FILE_VERSION}; starting \
             with an empty budget",
            path.display(),
            file.version
        );
        return HashMap::new();
    }
    file.orders
        .into_iter()
        .filter_map(|(key, mut times)| {
            times.sort_unstable();
            let mut q: VecDeque<i64> = times.into();
            prune(&mut q, wall);
            (!q.is_empty()).then_some((key, q))
        })
        .collect()
}
