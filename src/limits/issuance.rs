//! Issuance limits: may a *new* order be placed right now?
//!
//! This module owns the abuse limits on orders, checked once per order by the certificate
//! manager's fill task, just before it calls the issuer:
//! 1. a per-name failure backoff (1m, 2m, 4m … capped at 1h, reset by a success);
//! 2. a per-registered-domain budget (public suffix list) in a sliding 7-day window, kept under
//!    Let's Encrypt's 50 certificates per registered domain per week and persisted in
//!    `<data_dir>/limits/budget.json` so that a restart does not reset it (`limits::budget`);
//! 3. a cap on concurrent orders, held by the returned [`OrderPermit`] until it is dropped;
//! 4. a global token bucket (one order every `interval`, `burst` at once), which renewals skip.
//!
//! The checks run in that order so that a refusal never consumes another limit's capacity: a
//! name in backoff takes no concurrency slot, an order refused for concurrency burns no token.
//!
//! What it must not do: it never applies to serving, loading or caching certificates that are
//! already stored (Caddy's old limiter throttled those too, one reason it was removed in Caddy
//! 2.9); it never blocks or does I/O on the caller's thread, except when no tokio runtime exists
//! (CLI commands), where the budget file is written inline; it counts no metrics (the caller
//! counts `tenant_edge_issuances_limited_total{limit=Limited::kind()}`); it knows nothing of
//! ACME, Pingora or the allow-list.
//!
//! The budget is per process (per data directory). With several hosts sharing one PostgreSQL,
//! each host keeps its own budget; divide `budget_per_week` by the number of hosts.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::domain::Domain;
use crate::limits::budget::{prune, read_budget, registered_domain, BudgetFile, BUDGET_WINDOW};
use crate::limits::orders::{AccountBudget, LocalOrderLog, OrderLog, Recorded};
use crate::metrics::label_set;
use crate::util::bucket::TokenBucket;
use crate::util::fs::{create_private_dir, write_atomic, FileError};
use crate::util::time::ShortDuration;

mod settings;
pub use settings::LimitSettings;

/// Why a new order may not start now. `kind()` is the `limit` label of
/// `tenant_edge_issuances_limited_total`; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error(
        "the global order rate limit is reached (burst {burst}, one order every {interval}); \
         next slot in {retry_in}",
        interval = ShortDuration(*interval),
        retry_in = ShortDuration(*retry_in)
    )]
    Rate {
        burst: u32,
        interval: Duration,
        retry_in: Duration,
    },
    #[error(
        "{max} orders are already running (max_concurrent); the next can start when one finishes"
    )]
    Concurrency { max: usize },
    #[error(
        "{name}: the last {failures} order(s) failed; next attempt in {retry_in} \
         (backoff doubles up to backoff_max, a success resets it)",
        retry_in = ShortDuration(*retry_in)
    )]
    Backoff {
        name: Domain,
        failures: u32,
        retry_in: Duration,
    },
    #[error(
        "{registered} has used {used} of {limit} orders this week (budget_per_week); \
         next slot in {retry_in}",
        retry_in = ShortDuration(*retry_in)
    )]
    Budget {
        registered: String,
        used: u32,
        limit: u32,
        retry_in: Duration,
    },
    #[error(
        "the ACME account has placed {used} orders in the last {window} (orders_per_3h {limit}, \
         the last {reserve} kept for renewals); next slot in {retry_in}",
        window = ShortDuration(*window),
        retry_in = ShortDuration(*retry_in)
    )]
    Account {
        used: u32,
        limit: u32,
        reserve: u32,
        window: Duration,
        retry_in: Duration,
    },
}

label_set! {
    /// `tenant_edge_issuances_limited_total{limit}`: which limit held an order back (`client`:
    /// the pre-TLS gate, before any order).
    pub enum LimitKind {
        Rate => "rate",
        Concurrency => "concurrency",
        Backoff => "backoff",
        Budget => "budget",
        Account => "account",
        Client => "client",
    }
}

impl Limited {
    /// Fixed metric label: `rate`, `concurrency`, `backoff` or `budget`.
    pub fn kind(&self) -> &'static str {
        self.limit().label()
    }

    /// Which limit this is.
    pub fn limit(&self) -> LimitKind {
        match self {
            Limited::Rate { .. } => LimitKind::Rate,
            Limited::Concurrency { .. } => LimitKind::Concurrency,
            Limited::Backoff { .. } => LimitKind::Backoff,
            Limited::Budget { .. } => LimitKind::Budget,
            Limited::Account { .. } => LimitKind::Account,
        }
    }

    /// When trying again may succeed; `None` for concurrency (when a running order finishes).
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            Limited::Rate { retry_in, .. }
            | Limited::Backoff { retry_in, .. }
            | Limited::Budget { retry_in, .. }
            | Limited::Account { retry_in, .. } => Some(*retry_in),
            Limited::Concurrency { .. } => None,
        }
    }
}

/// Time sources, injectable for tests: monotonic for the bucket and the backoff, wall-clock
/// (unix seconds) for the budget, which must survive restarts.
trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn unix_now(&self) -> i64;
}

struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_now(&self) -> i64 {
        crate::util::time::unix_now()
    }
}

/// The issuance limits of one edge. Cheap to clone (shared state); the manager and the renewal
/// loop hold clones of the same value.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LimitSettings,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    /// Failure streaks by name; absent means "no recent failure".
    backoff: moka::sync::Cache<Domain, Streak>,
    persist: Option<Persist>,
    /// Where the account budget counts orders (this host's file, or the shared store).
    orders: Arc<dyn OrderLog>,
    /// This host's file: where orders are counted when the shared store cannot be asked.
    local_orders: Arc<LocalOrderLog>,
    /// `orders` is the shared store (which also keeps the domains' weekly budgets).
    shared_orders: bool,
}

struct State {
    rate: TokenBucket,
    /// Unix seconds of the orders counted per registered domain, oldest first, all inside the
    /// window (pruned on access and before each write). Empty queues are removed.
    budget: HashMap<String, VecDeque<i64>>,
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    failures: u32,
    until: Instant,
}

/// Background writes of `budget.json`: at most one writer at a time; writes requested while one
/// runs are folded into one more write by the same writer.
struct Persist {
    path: PathBuf,
    flags: Mutex<PersistFlags>,
    /// Held across snapshot + write, so that a later write never carries an older snapshot.
    write_lock: Mutex<()>,
}

#[derive(Default)]
struct PersistFlags {
    dirty: bool,
    writing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limits {
    /// Limits whose budget persists in `<data_dir>/limits/budget.json`, loading what a previous
    /// run recorded. An unreadable or corrupt file is logged and treated as empty (it is
    /// replaced by the next write); only failing to create the directory is an error.
    pub fn load(data_dir: &Path, settings: LimitSettings) -> Result<Limits, FileError> {
        Self::load_with_clock(data_dir, settings, Arc::new(SystemClock))
    }

    fn load_with_clock(
        data_dir: &Path,
        settings: LimitSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Limits, FileError> {
        let dir = data_dir.join("limits");
        create_private_dir(&dir)?;
        let orders = LocalOrderLog::load(data_dir)?;
        Ok(Self::build(
            settings,
            Some(dir.join("budget.json")),
            clock,
            orders,
        ))
    }

    /// Limits that keep their budgets in memory only (tests, `certs issue` from the CLI).
    pub fn in_memory(settings: LimitSettings) -> Limits {
        Self::build(
            settings,
            None,
            Arc::new(SystemClock),
            LocalOrderLog::in_memory(),
        )
    }

    /// The same limits counting the account budget in `orders` (the shared store, with
    /// several hosts).
    pub fn with_order_log(self, orders: Arc<dyn OrderLog>) -> Limits {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.orders = orders;
                inner.shared_orders = true;
                Limits {
                    inner: Arc::new(inner),
                }
            }
            // Already shared: keep counting where it did.
            Err(inner) => Limits { inner },
        }
    }

    fn build(
        settings: LimitSettings,
        path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        local_orders: Arc<LocalOrderLog>,
    ) -> Limits {
        let now = clock.now();
        let wall = clock.unix_now();
        let budget = match &path {
            Some(p) => read_budget(p, wall),
            None => HashMap::new(),
        };
        let backoff = moka::sync::Cache::builder()
            .max_capacity(settings.backoff_capacity.max(1))
            .time_to_live(
                settings
                    .backoff_max
                    .saturating_mul(2)
                    .max(Duration::from_secs(1)),
            )
            .build();
        Limits {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    rate: TokenBucket::full(settings.burst, now),
                    budget,
                }),
                settings,
                clock,
                in_flight: AtomicUsize::new(0),
                backoff,
                persist: path.map(|path| Persist {
                    path,
                    flags: Mutex::new(PersistFlags::default()),
                    write_lock: Mutex::new(()),
                }),
                orders: local_orders.clone(),
                local_orders,
                shared_orders: false,
            }),
        }
    }

    /// Count an order that holds `permit` against the account budget and, with the shared
    /// store, against its registered domain's weekly budget across hosts. `Err`: a budget is
    /// spent; drop the permit with [`OrderPermit::abandon`] (nothing was ordered). When the
    /// shared log cannot be asked, the order is counted against this host's own file (the same
    /// budget, for this host alone), so an outage of the store never leaves orders uncounted.
    pub async fn charge_account(
        &self,
        permit: &mut OrderPermit,
        renewal: bool,
    ) -> Result<(), Limited> {
        let inner = &self.inner;
        let weekly = inner
            .settings
            .budget_per_week
            .filter(|_| inner.shared_orders);
        let budget = match (inner.settings.account, weekly) {
            (Some(budget), _) => budget,
            // No account budget, but the shared domain budget still counts.
            (None, Some(_)) => AccountBudget {
                limit: u32::MAX,
                renewal_reserve: 0,
                window: AccountBudget::default().window,
            },
            (None, None) => return Ok(()),
        };
        let registered = registered_domain(&permit.name);
        let recorded = match inner
            .orders
            .record(registered, renewal, &budget, weekly)
            .await
        {
            Ok(recorded) => recorded,
            Err(e) => {
                log::warn!(
                    "the shared order budget could not be counted ({e}); counting this order on this host"
                );
                // The local log never fails to answer (a failed write is logged).
                inner
                    .local_orders
                    .record(registered, renewal, &budget, None)
                    .await
                    .unwrap_or(Recorded::Counted(None))
            }
        };
        match recorded {
            Recorded::Counted(id) => {
                permit.shared_order = id;
                Ok(())
            }
            Recorded::Account(spent) => Err(Limited::Account {
                used: spent.used,
                limit: budget.limit,
                reserve: budget.renewal_reserve,
                window: budget.window,
                retry_in: spent.retry_in,
            }),
            Recorded::Domain(spent) => Err(Limited::Budget {
                registered: registered.to_string(),
                used: spent.used,
                limit: weekly.unwrap_or(spent.used),
                retry_in: spent.retry_in,
            }),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.inner.settings
    }

    /// May a new order for `name` start now? Checks, in order: backoff, budget, concurrency,
    /// rate. On success the order is counted in the budget and holds a concurrency slot until
    /// the permit is dropped; report its outcome with [`OrderPermit::succeeded`] or
    /// [`OrderPermit::failed`]. Synchronous and non-blocking (the budget file is written by a
    /// `spawn_blocking` task).
    pub fn try_acquire(&self, name: &Domain) -> Result<OrderPermit, Limited> {
        self.acquire(name, false)
    }

    /// Like [`Limits::try_acquire`] for the renewal of a certificate we already hold: it skips
    /// the global rate limit (renewals are paced by the renewal loop and must not starve behind
    /// a burst of new names) and the weekly per-domain budget (Let's Encrypt exempts renewals
    /// from it; a flood of new names under one domain must not stop its renewals), but obeys
    /// the backoff and the concurrency cap.
    pub fn try_acquire_renewal(&self, name: &Domain) -> Result<OrderPermit, Limited> {
        self.acquire(name, true)
    }

    fn acquire(&self, name: &Domain, renewal: bool) -> Result<OrderPermit, Limited> {
        let inner = &self.inner;
        let s = &inner.settings;
        let now = inner.clock.now();
        let wall = inner.clock.unix_now();

        if let Some(streak) = inner.backoff.get(name) {
            if streak.until > now {
                return Err(Limited::Backoff {
                    name: name.clone(),
                    failures: streak.failures,
                    retry_in: streak.until - now,
                });
            }
        }

        let registered = registered_domain(name);
        let mut state = lock(&inner.state);
        if let Some(limit) = s.budget_per_week.filter(|_| !renewal) {
            if let Some(q) = state.budget.get_mut(registered) {
                prune(q, wall);
                if q.len() >= limit as usize {
                    let oldest = q.front().copied().unwrap_or(wall);
                    let free_at = oldest.saturating_add(BUDGET_WINDOW.as_secs() as i64);
                    return Err(Limited::Budget {
                        registered: registered.to_string(),
                        used: u32::try_from(q.len()).unwrap_or(u32::MAX),
                        limit,
                        retry_in: Duration::from_secs(free_at.saturating_sub(wall).max(1) as u64),
                    });
                }
            }
        }

        let max = s.max_concurrent.max(1);
        if inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Limited::Concurrency { max });
        }

        if !renewal {
            if let Err(retry_in) = state.rate.try_take(s.interval, s.burst.max(1), now) {
                inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Limited::Rate {
                    burst: s.burst,
                    interval: s.interval,
                    retry_in,
                });
            }
        }

        let counted = if s.budget_per_week.is_some() && !renewal {
            state
                .budget
                .entry(registered.to_string())
                .or_default()
                .push_back(wall);
            true
        } else {
            false
        };
        drop(state);
        if counted {
            self.persist_soon();
        }
        Ok(OrderPermit {
            limits: self.clone(),
            name: name.clone(),
            counted_at: counted.then_some(wall),
            shared_order: None,
            reported: false,
        })
    }

    /// Orders holding a concurrency slot now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// `(used, limit)` of the weekly budget of `name`'s registered domain; `limit` is `None`
    /// when the budget is disabled. For `certs` and `allow` output.
    pub fn budget_used(&self, name: &Domain) -> (u32, Option<u32>) {
        let wall = self.inner.clock.unix_now();
        let mut state = lock(&self.inner.state);
        let used = match state.budget.get_mut(registered_domain(name)) {
            Some(q) => {
                prune(q, wall);
                u32::try_from(q.len()).unwrap_or(u32::MAX)
            }
            None => 0,
        };
        (used, self.inner.settings.budget_per_week)
    }

    /// Write the budget file now, on this thread (shutdown, CLI). A no-op without a data dir.
    pub fn flush(&self) -> Result<(), FileError> {
        match &self.inner.persist {
            Some(p) => self.write_budget(p),
            None => Ok(()),
        }
    }

    /// Schedule a write of the budget file without blocking the caller: a `spawn_blocking`
    /// task when a tokio runtime is running, else inline (CLI commands have no runtime).
    fn persist_soon(&self) {
        let Some(p) = &self.inner.persist else {
            return;
        };
        {
            let mut flags = lock(&p.flags);
            flags.dirty = true;
            if flags.writing {
                return;
            }
            flags.writing = true;
        }
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || this.write_while_dirty());
            }
            Err(_) => this.write_while_dirty(),
        }
    }

    fn write_while_dirty(&self) {
        let Some(p) = &self.inner.persist else {
            return;
        };
        loop {
            {
                let mut flags = lock(&p.flags);
                if !flags.dirty {
                    flags.writing = false;
                    return;
                }
                flags.dirty = false;
            }
            if let Err(e) = self.write_budget(p) {
                // The budget still holds in memory; only a restart before the next successful
                // write would forget these orders.
                log::error!("could not save the issuance budget: {e}");
            }
        }
    }

    fn write_budget(&self, p: &Persist) -> Result<(), FileError> {
        let _writer = lock(&p.write_lock);
        let wall = self.inner.clock.unix_now();
        let file = {
            let mut state = lock(&self.inner.state);
            state.budget.retain(|_, q| {
                prune(q, wall);
                !q.is_empty()
            });
            BudgetFile::of(&state.budget)
        };
        let json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        write_atomic(&p.path, &json, 0o600)
    }

    fn report(&self, name: &Domain, counted_at: Option<i64>, outcome: Outcome) {
        let inner = &self.inner;
        match outcome {
            Outcome::Succeeded => inner.backoff.invalidate(name),
            Outcome::Abandoned => {}
            Outcome::Failed | Outcome::Unknown => {
                let s = &inner.settings;
                if !s.backoff_initial.is_zero() {
                    let failures = inner
                        .backoff
                        .get(name)
                        .map_or(1, |st| st.failures.saturating_add(1));
                    let delay = backoff_delay(s.backoff_initial, s.backoff_max, failures);
                    let now = inner.clock.now();
                    inner.backoff.insert(
                        name.clone(),
                        Streak {
                            failures,
                            until: now.checked_add(delay).unwrap_or(now),
                        },
                    );
                }
            }
        }
        // A failed order issued nothing, so it does not count against Let's Encrypt's
        // certificates-per-domain limit: give the budget back (failed validations have their
        // own CA limit, which the backoff keeps us under). An unknown outcome stays counted.
        if let (Outcome::Failed | Outcome::Abandoned, Some(at)) = (outcome, counted_at) {
            let registered = registered_domain(name);
            let mut state = lock(&inner.state);
            if let Some(q) = state.budget.get_mut(registered) {
                if let Some(i) = q.iter().rposition(|&t| t == at) {
                    q.remove(i);
                }
                if q.is_empty() {
                    state.budget.remove(registered);
                }
            }
            drop(state);
            self.persist_soon();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Unknown,
    Abandoned,
}

/// `initial × 2^(failures-1)`, capped at `max`.
fn backoff_delay(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    initial
        .checked_mul(1u32 << doublings)
        .unwrap_or(max)
        .min(max)
}

/// Permission to run one order, from [`Limits::try_acquire`]. Holds a concurrency slot until
/// dropped. Report the outcome once with [`OrderPermit::succeeded`] (resets the name's
/// backoff) or [`OrderPermit::failed`] (the CA issued nothing: the backoff grows and the budget
/// slot is given back). Dropped without either (a panic, a cancelled task), the order counts
/// as failed for the backoff but stays counted in the budget, since it may have been issued.
#[must_use = "the order's concurrency slot is released when the permit is dropped"]
pub struct OrderPermit {
    limits: Limits,
    name: Domain,
    /// Unix time the budget entry was recorded at (to give it back on failure).
    counted_at: Option<i64>,
    /// The order's row in the shared store, marked failed if nothing is issued.
    shared_order: Option<i64>,
    reported: bool,
}

impl OrderPermit {
    pub fn name(&self) -> &Domain {
        &self.name
    }

    /// The order produced a certificate: reset the name's backoff; the budget stays counted.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.limits
            .report(&self.name, self.counted_at, Outcome::Succeeded);
    }

    /// Nothing was ordered after all (the account budget refused): no backoff, the budget slot
    /// back, the concurrency slot released.
    pub fn abandon(mut self) {
        self.reported = true;
        self.limits
            .report(&self.name, self.counted_at, Outcome::Abandoned);
    }

    /// The order failed and nothing was issued: extend the name's backoff and give its budget
    /// slot back.
    pub fn failed(mut self) {
        self.reported = true;
        self.limits
            .report(&self.name, self.counted_at, Outcome::Failed);
        if let (Some(id), Ok(runtime)) = (self.shared_order, tokio::runtime::Handle::try_current())
        {
            let orders = self.limits.inner.orders.clone();
            runtime.spawn(async move {
                if let Err(e) = orders.mark_failed(id).await {
                    log::warn!("could not give a failed order's domain budget slot back: {e}");
                }
            });
        }
    }
}

impl Drop for OrderPermit {
    fn drop(&mut self) {
        if !self.reported {
            self.limits
                .report(&self.name, self.counted_at, Outcome::Unknown);
        }
        self.limits.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for OrderPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderPermit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
