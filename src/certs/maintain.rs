//! Certificate maintenance, a Pingora background service: renewal, pre-provisioning and instant
//! tenant changes. The time-driven loop lives here; what to do for one name lives in the manager.
//!
//! - **Renewal.** Every held certificate (memory or disk) gets a due time from its own dates:
//!   inside the CA's ACME Renewal Information window (RFC 9773) when it offers one, else when
//!   `renewal.fraction` of its lifetime is left, moved earlier by a per-name jitter of up to a
//!   tenth of that margin so a fleet issued together does not renew together. The loop sleeps
//!   until the earliest due time (at most `renewal.check_interval`), so six-day and six-minute
//!   certificates are handled alike. A renewal asks the allow-list again; a failure leaves the
//!   old certificate in service and is retried after the name's backoff.
//! - **Pre-provisioning.** Names from NOTIFY and from a periodic read of the allow-list query's
//!   table are issued before their first request, renewals first, paced to
//!   `provisioning.orders_per_3h` (Let's Encrypt: 300 new orders per account per 3 hours) and
//!   subject to the same limits as on-demand orders.
//! - **Tenant changes.** A notified name's cached decision is dropped at once
//!   (`AllowList::forget`), so a deactivated domain is refused on its next handshake or request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::allow::decision::NameList;
use crate::certs::certificate::CertifiedKey;
use crate::certs::manager::{CertManager, CertSource, Refusal, RenewOutcome};
use crate::domain::Domain;
use crate::metrics::{label_set, Metrics};
use crate::util::bucket::TokenBucket;
use crate::util::task::AbortOnDrop;
use crate::util::time::unix_now;

/// How long a background issuance may take before the loop moves on (it keeps running).
const PROVISION_WAIT: Duration = Duration::from_secs(120);
/// How often the CA's renewal window is asked again for the same certificate.
const ARI_REFRESH: i64 = 6 * 3600;

/// When certificates are renewed (`renewal:`).
#[derive(Debug, Clone)]
pub struct RenewalSettings {
    /// Renew when this fraction of the lifetime is left (default 1/3), unless the CA's renewal
    /// information (ARI) suggests a window.
    pub fraction: f64,
    /// Longest sleep between two looks at the schedule; the next due certificate wakes it sooner.
    pub check_interval: Duration,
}

/// Background issuance of allowed names before their first request (`provisioning:`).
#[derive(Debug, Clone)]
pub struct ProvisioningSettings {
    pub enabled: bool,
    /// New orders per 3 hours for pre-provisioning (Let's Encrypt: 300 per account per 3h).
    pub orders_per_3h: u32,
}

label_set! {
    /// `tenant_edge_provision_queue{kind}`.
    pub enum ProvisionKind {
        Renewal => "renewal",
        New => "new",
    }
}

label_set! {
    /// `tenant_edge_provisioned_total{outcome}`.
    pub enum ProvisionOutcome {
        Issued => "issued",
        AlreadyValid => "already_valid",
        NotAllowed => "not_allowed",
        Failed => "failed",
    }
}

/// What a feed reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This name changed.
    Name(Domain),
    /// The feed (re)connected: changes made while it was down were missed.
    Resync,
}

/// A stream of names that changed elsewhere (tenant changes over LISTEN, certificates issued on
/// another host). Called once, inside the maintenance service's runtime; the future it returns
/// sends changes until the receiver is gone and reconnects on its own.
pub type Feed =
    Box<dyn Fn(mpsc::Sender<Change>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the maintenance loop listens to and reads, besides the manager.
#[derive(Default)]
pub struct Inputs {
    /// Tenant changes: the name's cached decision is dropped at once (and, with
    /// pre-provisioning on, the name is queued).
    pub tenant_changes: Option<Feed>,
    /// Certificates issued or renewed on another host: this host's memory copy is dropped.
    pub issued_elsewhere: Option<Feed>,
    /// Every allowed name, read every `scan_interval` for pre-provisioning.
    pub scan: Option<(Arc<dyn NameList>, Duration)>,
    /// Called with each name whose decision was dropped (a notification, or the scan found it
    /// out of date), after it was dropped: the server closes the name's WebSockets if it is
    /// no longer allowed.
    pub on_change: Option<Arc<dyn Fn(Domain) + Send + Sync>>,
}

pub struct Maintenance {
    manager: Arc<CertManager>,
    inputs: Inputs,
    renewal: RenewalSettings,
    provisioning: ProvisioningSettings,
    metrics: Arc<Metrics>,
}

/// The loop's memory between ticks.
struct State {
    /// ARI-derived due time per certificate: (name, not_after) → (due, asked at).
    ari: HashMap<(Domain, i64), (Option<i64>, i64)>,
    /// Not before this Unix time (a failed or deferred renewal).
    retry_at: HashMap<Domain, i64>,
    queue: VecDeque<Domain>,
    queued: HashSet<Domain>,
    next_scan: Instant,
    next_renewal_look: Instant,
    pacing: TokenBucket,
}

impl Maintenance {
    pub fn new(
        manager: Arc<CertManager>,
        inputs: Inputs,
        renewal: RenewalSettings,
        provisioning: ProvisioningSettings,
        metrics: Arc<Metrics>,
    ) -> Maintenance {
        Maintenance {
            manager,
            inputs,
            renewal,
            provisioning,
            metrics,
        }
    }

    /// When `ck` should be renewed, from its own dates (Unix seconds).
    fn fraction_due(&self, name: &Domain, ck: &CertifiedKey) -> i64 {
        let life = (ck.not_after - ck.not_before).max(1);
        let margin = (life as f64 * self.renewal.fraction) as i64;
        // Stable per-name jitter (FNV-1a of the name) of up to a tenth of the margin.
        let hash = name
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let jitter = (hash % 1000) as i64 * (margin / 10) / 1000;
        ck.not_after - margin - jitter
    }

    async fn due_at(&self, name: &Domain, ck: &CertifiedKey, state: &mut State) -> i64 {
        let now = unix_now();
        let key = (name.clone(), ck.not_after);
        let fresh = state
            .ari
            .get(&key)
            .filter(|(_, asked)| now - asked < ARI_REFRESH)
            .map(|(due, _)| *due);
        let ari_due = match fresh {
            Some(due) => due,
            None => {
                let due = self.manager.renewal_window(ck).await.map(|(start, end)| {
                    // A point inside the suggested window, stable for this certificate.
                    let span = (end - start).max(0);
                    let pick = name.as_str().len() as i64 * 7919 % (span + 1);
                    start + pick
                });
                state.ari.insert(key, (due, now));
                due
            }
        };
        ari_due.unwrap_or_else(|| self.fraction_due(name, ck))
    }

    /// Renew what is due; return the earliest future due time.
    async fn renew_due(&self, state: &mut State) -> Option<i64> {
        let held = self.manager.held_certificates().await;
        let now = unix_now();
        let mut due_now: Vec<(i64, Domain, Arc<CertifiedKey>)> = Vec::new();
        let mut next: Option<i64> = None;
        for (name, ck) in held {
            let due = self.due_at(&name, &ck, state).await;
            let due = due.max(state.retry_at.get(&name).copied().unwrap_or(0));
            if due <= now {
                due_now.push((due, name, ck));
            } else {
                next = Some(next.map_or(due, |n: i64| n.min(due)));
            }
        }
        // The ones closest to expiry first.
        due_now.sort_by_key(|(_, _, ck)| ck.not_after);
        self.metrics
            .provision_queue
            .with_label_values(&[ProvisionKind::Renewal.label()])
            .set(due_now.len() as i64);
        let remaining = due_now.len();
        for (i, (_, name, ck)) in due_now.into_iter().enumerate() {
            let outcome = self.manager.renew(&name, &ck).await;
            let retry = match &outcome {
                RenewOutcome::Renewed | RenewOutcome::NotAllowed => None,
                RenewOutcome::Deferred(limited) => Some(
                    limited
                        .retry_in()
                        .unwrap_or(Duration::from_secs(5))
                        .as_secs()
                        .max(1) as i64,
                ),
                RenewOutcome::Failed => Some(5),
            };
            match retry {
                None => {
                    state.retry_at.remove(&name);
                }
                Some(secs) => {
                    let at = unix_now() + secs;
                    state.retry_at.insert(name.clone(), at);
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            self.metrics
                .provision_queue
                .with_label_values(&[ProvisionKind::Renewal.label()])
                .set((remaining - i - 1) as i64);
        }
        next
    }

    /// Read the whole allow-list: drop every cached decision it contradicts (a yes for a name
    /// no longer listed, a no for a name now listed: changes whose notification was missed),
    /// and, with pre-provisioning, queue the names without a certificate.
    async fn scan(&self, state: &mut State) {
        let Some((list, interval)) = &self.inputs.scan else {
            return;
        };
        state.next_scan = Instant::now() + *interval;
        let names = match list.all_names().await {
            Ok(names) => names,
            Err(e) => {
                log::warn!("pre-provisioning scan failed: {e}");
                return;
            }
        };
        let listed: HashSet<Domain> = names.iter().cloned().collect();
        let dropped = self.manager.allow_list().forget_unlisted(&listed);
        if !dropped.is_empty() {
            log::info!(
                "the allow-list scan found {} cached decisions out of date; they are asked again",
                dropped.len()
            );
        }
        if let Some(hook) = &self.inputs.on_change {
            for name in dropped {
                hook(name);
            }
        }
        if !self.provisioning.enabled {
            return;
        }
        let held: HashSet<Domain> = self
            .manager
            .held_certificates()
            .await
            .into_iter()
            .filter(|(_, ck)| ck.is_valid_at(unix_now()))
            .map(|(n, _)| n)
            .collect();
        for name in names {
            if !held.contains(&name) {
                enqueue(state, name);
            }
        }
    }

    /// Issue queued names while the pacing allows; return when the next token comes.
    async fn provision(&self, state: &mut State) -> Option<Duration> {
        let mut wait = None;
        while let Some(name) = state.queue.front().cloned() {
            if self.manager.cached(&name).is_some() {
                self.finish(state, &name, ProvisionOutcome::AlreadyValid);
                continue;
            }
            if let Err(until) = state.pacing.try_take(
                pacing_interval(&self.provisioning),
                self.provisioning.orders_per_3h,
                Instant::now(),
            ) {
                wait = Some(until);
                break;
            }
            let outcome = match self.manager.ensure(&name, PROVISION_WAIT).await {
                Ok((_, CertSource::Issued)) => ProvisionOutcome::Issued,
                Ok(_) => ProvisionOutcome::AlreadyValid,
                Err(Refusal::NotAllowed(_)) => ProvisionOutcome::NotAllowed,
                Err(e) => {
                    log::warn!("{name}: pre-provisioning failed: {e}");
                    ProvisionOutcome::Failed
                }
            };
            self.finish(state, &name, outcome);
        }
        wait
    }

    fn finish(&self, state: &mut State, name: &Domain, outcome: ProvisionOutcome) {
        state.queue.pop_front();
        state.queued.remove(name);
        self.metrics
            .provisioned
            .with_label_values(&[outcome.label()])
            .inc();
        self.metrics
            .provision_queue
            .with_label_values(&[ProvisionKind::New.label()])
            .set(state.queue.len() as i64);
    }
}

fn enqueue(state: &mut State, name: Domain) {
    if state.queued.insert(name.clone()) {
        state.queue.push_back(name);
    }
}

fn pacing_interval(p: &ProvisioningSettings) -> Duration {
    Duration::from_secs(3 * 3600) / p.orders_per_3h.max(1)
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut notified) = mpsc::channel::<Change>(4096);
        let _listener = self
            .inputs
            .tenant_changes
            .as_ref()
            .map(|feed| AbortOnDrop(tokio::spawn(feed(tx.clone()))));
        drop(tx);
        let (issued_tx, mut issued) = mpsc::channel::<Change>(4096);
        let _issued_listener = self
            .inputs
            .issued_elsewhere
            .as_ref()
            .map(|feed| AbortOnDrop(tokio::spawn(feed(issued_tx.clone()))));
        drop(issued_tx);
        let mut state = State {
            ari: HashMap::new(),
            retry_at: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            next_scan: Instant::now(),
            next_renewal_look: Instant::now(),
            pacing: TokenBucket::full(self.provisioning.orders_per_3h, Instant::now()),
        };
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Renewals are looked at when their time comes, not on every notification (a look
            // reads every stored certificate).
            if Instant::now() >= state.next_renewal_look {
                let mut wait = self.renewal.check_interval;
                if let Some(due) = self.renew_due(&mut state).await {
                    wait = wait.min(Duration::from_secs((due - unix_now()).max(1) as u64));
                }
                state.next_renewal_look = Instant::now() + wait;
            }
            let mut sleep = state
                .next_renewal_look
                .saturating_duration_since(Instant::now());
            // The scan also repairs changes missed while the LISTEN connection was down, so it
            // runs with pre-provisioning off too.
            if self.inputs.scan.is_some() {
                if Instant::now() >= state.next_scan {
                    self.scan(&mut state).await;
                }
                sleep = sleep.min(state.next_scan.saturating_duration_since(Instant::now()));
            }
            if self.provisioning.enabled {
                if let Some(wait) = self.provision(&mut state).await {
                    sleep = sleep.min(wait);
                }
            }
            let sleep = sleep.max(Duration::from_millis(200));
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(change) = notified.recv() => {
                    // Apply every pending notification, then go round the loop at once.
                    let mut changes = vec![change];
                    while let Ok(more) = notified.try_recv() {
                        changes.push(more);
                    }
                    for change in changes {
                        match change {
                            Change::Name(name) => {
                                self.manager.allow_list().forget(&name);
                                log::info!("{name}: tenant change notified; decision dropped");
                                if let Some(hook) = &self.inputs.on_change {
                                    hook(name.clone());
                                }
                                if self.provisioning.enabled {
                                    enqueue(&mut state, name);
                                }
                            }
                            // Changes made while the feed was down were missed: read the
                            // whole list now.
                            Change::Resync => state.next_scan = Instant::now(),
                        }
                    }
                }
                Some(change) = issued.recv() => {
                    // Another host issued or renewed a certificate: drop our copy, the next
                    // handshake loads the new one from the shared store.
                    if let Change::Name(name) = change {
                        self.manager.evict(&name);
                        log::info!("{name}: a certificate was issued on another host; reloading");
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}
