//! The certificate manager: the one place that answers "which certificate for this name?".
//!
//! Lookup order for one handshake (ARCHITECTURE.md, "One TLS handshake"):
//! 1. the name is already a parsed `Domain` (the TLS callback rejected bad SNI);
//! 2. the allow-list decides (platform domains, then dynamic sources);
//! 3. the in-memory cache of parsed certificates (moka, sync: no I/O, no lock across await);
//! 4. on a miss, one *fill task* per name loads the store and, when nothing usable is there,
//!    issues, saves and caches the certificate.
//!
//! The fill task is spawned, not driven by the handshake: a handshake waits for it at most
//! `tls.issue_timeout`, and a client that gives up does not cancel the issuance, so the next
//! handshake finds the certificate. (`moka`'s `try_get_with` coalesces too, but its init future
//! is cancelled with its callers, which would abandon an ACME order halfway.) Concurrent
//! handshakes for one name all wait on the same task: exactly one issuance.
//!
//! A stored bundle that does not parse, whose key does not match, or that does not name the
//! domain is logged, counted (`tenant_edge_store_corrupt_files_total`) and treated as absent:
//! it is replaced by the next issuance and never served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::allow::decision::{Decision, DecisionError};
use crate::allow::list::AllowList;
use crate::certs::certificate::CertifiedKey;
use crate::certs::issuer::{IssueError, IssueOutcome, Issuer, KeyType};
use crate::certs::lock::SharedLock;
use crate::certs::store::{CertMeta, Store, StoredCert};
use crate::domain::{Domain, DomainError};
use crate::limits::issuance::{LimitKind, Limited, Limits, OrderPermit};
use crate::metrics::{label_set, Metrics};
use crate::util::task::AbortOnDrop;
use crate::util::time::unix_now;

label_set! {
    /// Where the certificate for a handshake came from (`tls_handshakes_total{source}`).
    pub enum CertSource {
        Memory => "memory",
        Disk => "disk",
        Issued => "issued",
        /// A TLS-ALPN-01 challenge certificate, for a CA's validation handshake.
        AcmeChallenge => "acme_challenge",
    }
}

label_set! {
    /// `Refusal::kind()`: `tls_handshakes_total{outcome}` of a handshake that got no
    /// certificate.
    pub enum RefusalKind {
        NoSni => "no_sni",
        BadName => "bad_name",
        NotAllowed => "not_allowed",
        Decision => "decision_error",
        IssueFailed => "issue_failed",
        IssueTimeout => "issue_timeout",
        Store => "store_error",
        BadIssue => "bad_issue",
        NoChallenge => "no_challenge",
        Limited => "limited",
    }
}

label_set! {
    /// `tenant_edge_renewals_total{outcome}`.
    pub enum RenewalOutcome {
        Renewed => "renewed",
        Failed => "failed",
        SkippedNotAllowed => "skipped_not_allowed",
    }
}

/// Why a handshake gets no certificate. `kind()` is the metric label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("the client sent no SNI and no tls.default_name is set")]
    NoSni,
    #[error("the SNI is not a valid DNS name: {0}")]
    BadName(DomainError),
    #[error("{0} is not on the allow-list")]
    NotAllowed(Domain),
    #[error("the allow-list could not decide: {0}")]
    Decision(DecisionError),
    #[error("issuance failed: {0}")]
    IssueFailed(IssueError),
    #[error("issuance is still running after {0:?}; the next handshake will find the certificate")]
    IssueTimeout(Duration),
    #[error("the certificate store failed: {0}")]
    Store(String),
    #[error("an issued certificate is unusable: {0}")]
    BadIssue(String),
    #[error("a TLS-ALPN-01 validation for {0}, but no order is waiting for one")]
    NoChallenge(Domain),
    #[error("no new order now: {0}")]
    Limited(Limited),
}

impl Refusal {
    /// The metric label of this refusal.
    pub fn kind(&self) -> &'static str {
        let kind = match self {
            Refusal::NoSni => RefusalKind::NoSni,
            Refusal::BadName(_) => RefusalKind::BadName,
            Refusal::NotAllowed(_) => RefusalKind::NotAllowed,
            Refusal::Decision(_) => RefusalKind::Decision,
            Refusal::IssueFailed(_) => RefusalKind::IssueFailed,
            Refusal::IssueTimeout(_) => RefusalKind::IssueTimeout,
            Refusal::Store(_) => RefusalKind::Store,
            Refusal::BadIssue(_) => RefusalKind::BadIssue,
            Refusal::NoChallenge(_) => RefusalKind::NoChallenge,
            Refusal::Limited(_) => RefusalKind::Limited,
        };
        kind.label()
    }
}

type Outcome = Result<(Arc<CertifiedKey>, CertSource), Refusal>;

/// What a background renewal did.
#[derive(Debug)]
pub enum RenewOutcome {
    Renewed,
    /// The CA (or issuer) failed; the current certificate stays in service.
    Failed,
    /// A limit (backoff, concurrency, budget) said "not now".
    Deferred(Limited),
    /// The allow-list says no: not renewed, dropped from memory.
    NotAllowed,
}

/// `tls:`: how handshakes get their certificates.
#[derive(Debug, Clone)]
pub struct HandshakeSettings {
    /// Name served to clients that send no SNI.
    pub default_name: Option<Domain>,
    pub key_type: KeyType,
    /// How long a handshake waits for a certificate being issued (the issuance goes on).
    pub issue_timeout: Duration,
    /// Parsed certificates kept in memory.
    pub cache_capacity: u64,
    /// How often the session-ticket key changes (`tls::tickets`).
    pub ticket_key_rotation: Duration,
}

pub struct ManagerSettings {
    pub default_name: Option<Domain>,
    pub issue_timeout: Duration,
    pub cache_capacity: u64,
    /// `Some` when several hosts share a store.
    pub shared: Option<SharedLock>,
}

pub struct CertManager {
    allow: Arc<AllowList>,
    store: Arc<dyn Store>,
    issuer: Arc<dyn Issuer>,
    cache: moka::sync::Cache<Domain, Arc<CertifiedKey>>,
    /// Fill tasks in progress, by name. Entries are removed by the task that owns them.
    fills: Mutex<HashMap<Domain, watch::Receiver<Option<Outcome>>>>,
    settings: ManagerSettings,
    shared: Option<SharedLock>,
    /// Abuse limits on new orders (never on serving or loading stored certificates).
    limits: Limits,
    /// What the issuer last answered for a name whose order failed (for later log lines).
    last_errors: moka::sync::Cache<Domain, Arc<str>>,
    metrics: Arc<Metrics>,
}

impl CertManager {
    pub fn new(
        allow: Arc<AllowList>,
        store: Arc<dyn Store>,
        issuer: Arc<dyn Issuer>,
        mut settings: ManagerSettings,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Arc<CertManager> {
        let shared = settings.shared.take();
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .build();
        Arc::new(CertManager {
            allow,
            store,
            issuer,
            cache,
            fills: Mutex::new(HashMap::new()),
            settings,
            shared,
            limits,
            last_errors: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(6 * 3600))
                .build(),
            metrics,
        })
    }

    /// The name a handshake is for: the SNI, or `tls.default_name` when the client sent none.
    pub fn handshake_name(&self, sni: Option<&str>) -> Result<Domain, Refusal> {
        match sni {
            Some(s) => Domain::parse(s).map_err(Refusal::BadName),
            None => self.settings.default_name.clone().ok_or(Refusal::NoSni),
        }
    }

    /// The certificate to present for `name`, issuing one when needed.
    pub async fn certificate(self: &Arc<Self>, name: &Domain) -> Outcome {
        match self.allow.decide(name).await {
            Ok(Decision::Allowed(_)) => {}
            Ok(Decision::Denied) => return Err(Refusal::NotAllowed(name.clone())),
            Err(e) => return Err(Refusal::Decision(e)),
        }
        if let Some(ck) = self.cached(name) {
            return Ok((ck, CertSource::Memory));
        }
        self.fill(name, self.settings.issue_timeout).await
    }

    /// Like `certificate`, but willing to wait `wait` for an issuance (background
    /// pre-provisioning, operator commands). Joins a fill a handshake may have started.
    pub async fn ensure(self: &Arc<Self>, name: &Domain, wait: Duration) -> Outcome {
        match self.allow.decide(name).await {
            Ok(Decision::Allowed(_)) => {}
            Ok(Decision::Denied) => return Err(Refusal::NotAllowed(name.clone())),
            Err(e) => return Err(Refusal::Decision(e)),
        }
        if let Some(ck) = self.cached(name) {
            return Ok((ck, CertSource::Memory));
        }
        self.fill(name, wait).await
    }

    /// Renew `old` (the certificate currently served for `name`) if the name is still allowed.
    /// A name that is no longer allowed is dropped from memory (its files stay until expiry,
    /// so reactivation needs no new order). A failed renewal leaves `old` in service.
    pub async fn renew(&self, name: &Domain, old: &Arc<CertifiedKey>) -> RenewOutcome {
        match self.allow.decide(name).await {
            Ok(Decision::Allowed(_)) => {}
            _ => {
                self.cache.invalidate(name);
                self.metrics
                    .renewals
                    .with_label_values(&[RenewalOutcome::SkippedNotAllowed.label()])
                    .inc();
                log::info!("{name}: no longer allowed; not renewed, no longer served");
                return RenewOutcome::NotAllowed;
            }
        }
        match self.obtain(name, Some(old)).await {
            Ok((ck, _)) => {
                self.cache.insert(name.clone(), ck);
                self.metrics
                    .renewals
                    .with_label_values(&[RenewalOutcome::Renewed.label()])
                    .inc();
                RenewOutcome::Renewed
            }
            Err(Refusal::Limited(limited)) => RenewOutcome::Deferred(limited),
            Err(e) => {
                self.metrics
                    .renewals
                    .with_label_values(&[RenewalOutcome::Failed.label()])
                    .inc();
                log::warn!(
                    "{name}: renewal failed ({e}); the current certificate is served until it expires at {}",
                    old.not_after
                );
                RenewOutcome::Failed
            }
        }
    }

    /// Every certificate held, in memory or on disk (disk entries parsed, not cached). Bundles
    /// that do not parse are skipped (they are reported when a handshake loads them).
    pub async fn held_certificates(&self) -> Vec<(Domain, Arc<CertifiedKey>)> {
        let mut out: Vec<(Domain, Arc<CertifiedKey>)> =
            self.cache.iter().map(|(k, v)| ((*k).clone(), v)).collect();
        let names = match self.store.list().await {
            Ok(names) => names,
            Err(e) => {
                log::warn!("cannot list stored certificates: {e}");
                return out;
            }
        };
        for name in names {
            if self.cache.contains_key(&name) {
                continue;
            }
            if let Ok(Some(stored)) = self.store.load(&name).await {
                if let Ok(ck) = CertifiedKey::from_bundle(&stored.bundle, Some(&name)) {
                    out.push((name, Arc::new(ck)));
                }
            }
        }
        out
    }

    /// The issuer's renewal window for `ck` (ACME Renewal Information), if it offers one.
    pub async fn renewal_window(&self, ck: &CertifiedKey) -> Option<(i64, i64)> {
        self.issuer.renewal_window(ck).await
    }

    /// Forget the in-memory certificate for `name` (another host renewed it; the next
    /// handshake loads the new one from the store).
    pub fn evict(&self, name: &Domain) {
        self.cache.invalidate(name);
    }

    pub fn allow_list(&self) -> &Arc<AllowList> {
        &self.allow
    }

    /// The allow-list's answer for `name` if it has one without any I/O: `Some(true)` for a
    /// platform domain or a cached yes, `Some(false)` for a cached no, `None` otherwise.
    pub fn cached_decision(&self, name: &Domain) -> Option<bool> {
        self.allow.cached(name).map(Decision::is_allowed)
    }

    /// The memory cache alone: a certificate that is valid now, or `None`.
    pub fn cached(&self, name: &Domain) -> Option<Arc<CertifiedKey>> {
        self.cache.get(name).filter(|ck| ck.is_valid_at(unix_now()))
    }

    /// Is `name` allowed right now? Used per request, because resumed TLS sessions skip the
    /// certificate callback.
    pub async fn is_allowed(&self, name: &Domain) -> bool {
        matches!(self.allow.decide(name).await, Ok(d) if d.is_allowed())
    }

    /// Join (or start) the fill task for `name` and wait for it, at most `wait`.
    async fn fill(self: &Arc<Self>, name: &Domain, wait: Duration) -> Outcome {
        let mut rx = {
            let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
            match fills.get(name) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    fills.insert(name.clone(), rx.clone());
                    let this = self.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let outcome = this.load_or_issue(&name).await;
                        if let Ok((ck, _)) = &outcome {
                            this.cache.insert(name.clone(), ck.clone());
                        }
                        // Cache first, then unregister: a handshake arriving in between either
                        // hits the cache or joins this task's channel.
                        this.fills
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&name);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let answer = async {
            match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => None,
            }
        };
        match tokio::time::timeout(wait, answer).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Err(Refusal::Store(
                "the fill task ended without an answer".into(),
            )),
            Err(_) => Err(Refusal::IssueTimeout(wait)),
        }
    }

    /// Double-check the store, then issue. Runs in the fill task.
    async fn load_or_issue(&self, name: &Domain) -> Outcome {
        if let Some(ck) = self.load_usable(name, None).await? {
            return Ok((ck, CertSource::Disk));
        }
        self.obtain(name, None).await
    }

    /// The stored certificate for `name` if it is valid now (and, with `newer_than`, expires
    /// later than that one). Corrupt bundles are counted and treated as absent.
    async fn load_usable(
        &self,
        name: &Domain,
        newer_than: Option<&Arc<CertifiedKey>>,
    ) -> Result<Option<Arc<CertifiedKey>>, Refusal> {
        match self.store.load(name).await {
            Ok(Some(stored)) => match CertifiedKey::from_bundle(&stored.bundle, Some(name)) {
                Ok(ck) if ck.is_valid_at(unix_now()) => {
                    if newer_than.is_some_and(|old| ck.not_after <= old.not_after) {
                        return Ok(None);
                    }
                    Ok(Some(Arc::new(ck)))
                }
                Ok(_) => {
                    log::info!("{name}: the stored certificate has expired; issuing a new one");
                    Ok(None)
                }
                Err(e) => {
                    self.metrics
                        .store_corrupt
                        .with_label_values(&[e.kind()])
                        .inc();
                    log::warn!("{name}: ignoring the stored certificate ({e}); issuing a new one");
                    Ok(None)
                }
            },
            Ok(None) => Ok(None),
            Err(e) => {
                // The store is unreadable (permissions, I/O): issuing would only fail to save.
                log::error!("{name}: {e}");
                Err(Refusal::Store(e.to_string()))
            }
        }
    }

    /// Issue (or renew `old`), under the cross-host issuance lock when hosts share a store:
    /// take the lock, look in the store again (another host may have just finished), order,
    /// release. While another host holds the lock, wait for its certificate instead.
    async fn obtain(&self, name: &Domain, old: Option<&Arc<CertifiedKey>>) -> Outcome {
        let Some(shared) = &self.shared else {
            return self.issue(name, old).await;
        };
        let give_up = Instant::now() + shared.lease * 3;
        loop {
            match shared
                .locks
                .try_lock(name, &shared.holder, shared.lease)
                .await
            {
                Ok(true) => break,
                Ok(false) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(ck) = self.load_usable(name, old).await? {
                        return Ok((ck, CertSource::Disk));
                    }
                    if Instant::now() > give_up {
                        return Err(Refusal::Store(format!(
                            "another host has held the issuance lock for {name} too long"
                        )));
                    }
                }
                Err(e) => {
                    // Never order without the lock: another host may be ordering the same name.
                    // Wait for the store to come back (a certificate another host stored may be
                    // there by then).
                    if Instant::now() > give_up {
                        return Err(Refusal::Store(format!(
                            "the issuance lock for {name} is unavailable ({e}); not ordering without it"
                        )));
                    }
                    log::warn!("{name}: the issuance lock is unavailable ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let held = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let keepalive = {
            let (store, holder, lease, name) = (
                shared.locks.clone(),
                shared.holder.clone(),
                shared.lease,
                name.clone(),
            );
            let held = held.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if !matches!(store.extend_lock(&name, &holder, lease).await, Ok(true)) {
                        held.store(false, std::sync::atomic::Ordering::Release);
                        log::warn!("{name}: lost the issuance lock while ordering");
                        return;
                    }
                }
            }))
        };
        // Before storing: the lease must still be ours (checked again now, not only by the
        // keepalive), or another host may have ordered too and stored its certificate.
        let lease_held = || async {
            held.load(std::sync::atomic::Ordering::Acquire)
                && matches!(
                    shared
                        .locks
                        .extend_lock(name, &shared.holder, shared.lease)
                        .await,
                    Ok(true)
                )
        };
        let result = match self.load_usable(name, old).await {
            Ok(Some(ck)) => Ok((ck, CertSource::Disk)),
            Ok(None) => {
                let issued = self.issue_checked(name, old, Some(&lease_held)).await;
                if issued.is_ok() {
                    if let Err(e) = shared.locks.notify_issued(name).await {
                        log::warn!("{name}: could not notify the other hosts: {e}");
                    }
                }
                issued
            }
            Err(e) => Err(e),
        };
        drop(keepalive);
        if let Err(e) = shared.locks.unlock(name, &shared.holder).await {
            log::warn!(
                "{name}: could not release the issuance lock ({e}); it expires with its lease"
            );
        }
        result
    }

    /// Permission for one order of `name` from the limits. The global rate and the concurrency
    /// cap are "not yet": wait for a slot, up to the handshake's own patience (the fill task
    /// outlives the handshake anyway). Backoff, the weekly budget and the account budget are
    /// "not now": refuse at once. Every refusal is counted and logged.
    async fn permit(&self, name: &Domain, renewal: bool) -> Result<OrderPermit, Refusal> {
        let patient_until = Instant::now() + self.settings.issue_timeout;
        // Time spent waiting for each limit, observed once the wait is over (a handshake that
        // is slow because of a limit shows why in `issuance_limit_wait_seconds`).
        let mut waited = [
            (LimitKind::Rate, Duration::ZERO),
            (LimitKind::Concurrency, Duration::ZERO),
        ];
        let attempt = loop {
            let attempt = if renewal {
                self.limits.try_acquire_renewal(name)
            } else {
                self.limits.try_acquire(name)
            };
            let wait = match &attempt {
                Err(Limited::Rate { retry_in, .. }) => Some((LimitKind::Rate, *retry_in)),
                Err(Limited::Concurrency { .. }) => {
                    Some((LimitKind::Concurrency, Duration::from_millis(100)))
                }
                _ => None,
            };
            match wait {
                Some((kind, wait)) if Instant::now() + wait < patient_until => {
                    let started = Instant::now();
                    tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
                    if let Some((_, total)) = waited.iter_mut().find(|(k, _)| *k == kind) {
                        *total += started.elapsed();
                    }
                }
                _ => break attempt,
            }
        };
        for (limit, waited) in waited {
            if !waited.is_zero() {
                self.metrics
                    .limit_wait
                    .with_label_values(&[limit.label()])
                    .observe(waited.as_secs_f64());
            }
        }
        let charged = match attempt {
            Ok(mut permit) => match self.limits.charge_account(&mut permit, renewal).await {
                Ok(()) => Ok(permit),
                Err(limited) => {
                    permit.abandon();
                    Err(limited)
                }
            },
            Err(limited) => Err(limited),
        };
        charged.map_err(|limited| {
            self.metrics
                .issuances_limited
                .with_label_values(&[limited.kind()])
                .inc();
            match self.last_errors.get(name) {
                Some(last) => log::warn!("{name}: {limited}; the last order failed with: {last}"),
                None => log::warn!("{name}: {limited}"),
            }
            Refusal::Limited(limited)
        })
    }

    /// Place a new order (or, with `old`, a renewal replacing it) within the limits; save and
    /// return the certificate.
    async fn issue(&self, name: &Domain, old: Option<&Arc<CertifiedKey>>) -> Outcome {
        self.issue_checked(name, old, None::<&fn() -> std::future::Ready<bool>>)
            .await
    }

    /// Order a certificate for `name` and store it, unless `may_store` (when given) says the
    /// right to store it was lost meanwhile.
    async fn issue_checked<F, Fut>(
        &self,
        name: &Domain,
        old: Option<&Arc<CertifiedKey>>,
        may_store: Option<&F>,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let kind = self.issuer.kind().label();
        let permit = self.permit(name, old.is_some()).await?;
        let started = Instant::now();
        let issued = match old {
            Some(old) => self.issuer.renew(name, old).await,
            None => self.issuer.issue(name).await,
        };
        self.metrics
            .issuance_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let issued = match issued {
            Ok(i) => i,
            Err(e) => {
                permit.failed();
                self.metrics
                    .issuances
                    .with_label_values(&[kind, IssueOutcome::Failure.label()])
                    .inc();
                log::warn!("{name}: issuance by {kind} failed: {e}");
                self.last_errors
                    .insert(name.clone(), Arc::from(e.to_string()));
                return Err(Refusal::IssueFailed(e));
            }
        };
        let ck = match CertifiedKey::from_bundle(&issued.bundle, Some(name)) {
            Ok(ck) => ck,
            Err(e) => {
                permit.failed();
                self.metrics
                    .issuances
                    .with_label_values(&[kind, IssueOutcome::Failure.label()])
                    .inc();
                log::error!("{name}: {kind} returned an unusable certificate: {e}");
                self.last_errors
                    .insert(name.clone(), Arc::from(e.to_string()));
                return Err(Refusal::BadIssue(e.to_string()));
            }
        };
        if let Some(may_store) = may_store {
            if !may_store().await {
                permit.succeeded();
                log::warn!(
                    "{name}: the issuance lock was lost while ordering; the new certificate is not stored (another host may hold one)"
                );
                return Err(Refusal::Store(format!(
                    "lost the issuance lock for {name} while ordering"
                )));
            }
        }
        permit.succeeded();
        self.last_errors.invalidate(name);
        self.metrics
            .issuances
            .with_label_values(&[kind, IssueOutcome::Success.label()])
            .inc();
        log::info!("{name}: issued by {kind}, valid until {}", ck.not_after);
        let stored = StoredCert {
            bundle: issued.bundle,
            meta: Some(CertMeta {
                issuer: kind.to_string(),
                issued_at: unix_now(),
                not_before: ck.not_before,
                not_after: ck.not_after,
            }),
        };
        if let Err(e) = self.store.save(name, &stored).await {
            // Serve it anyway: the client should not pay for a full disk. It is re-issued after
            // a restart, and the error is in the log.
            log::error!("{name}: could not save the new certificate: {e}");
        }
        Ok((Arc::new(ck), CertSource::Issued))
    }

    /// Refresh the gauges that describe the cache (called before each scrape).
    pub fn update_gauges(&self) {
        self.cache.run_pending_tasks();
        self.metrics
            .certificates_cached
            .set(self.cache.entry_count() as i64);
        let soonest = self
            .cache
            .iter()
            .map(|(_, ck)| ck.not_after)
            .min()
            .unwrap_or(0);
        self.metrics.soonest_expiry.set(soonest as f64);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

#[cfg(test)]
mod tests;
