//! The allow-list: may the edge serve (and issue for) a name?
//!
//! Order: platform domains from the config (in memory, no I/O, never cached), then each
//! dynamic `DecisionSource` in turn (PostgreSQL, a Caddy-style ask URL). The first source that
//! says yes wins; a name nobody allows is refused.
//!
//! This module owns the *policy around* the sources:
//! - **Cache.** Answers of the dynamic sources are kept in memory, a yes for `allowed_ttl`, a no
//!   for `denied_ttl` (moka, per-entry expiry, bounded to `CACHE_CAPACITY` names). A flood of
//!   random names costs at most one lookup per name per `denied_ttl`. Caddy caches nothing,
//!   so an ask outage there is a TLS outage.
//! - **Coalescing.** Concurrent callers for one name share one lookup. The lookup runs in its own
//!   task: a handshake that gives up does not cancel it, and its answer is cached for the next.
//! - **Stale-if-error.** When a source cannot answer, a name allowed before (within
//!   `remembered::KEEP`, across restarts: `allow::remembered`) stays allowed (`stale_allowed`);
//!   a name never allowed is refused (`fail_closed`). Either answer is cached for `stale_ttl`
//!   only, so a brownout costs one timeout per name per `stale_ttl`, not one per handshake,
//!   and the first answer after the outage replaces it soon.
//!
//! It must not touch certificates, sockets or OpenSSL, and it never returns an error for a name:
//! a name that cannot be decided is a counted refusal. Sources own their I/O and timeouts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::allow::decision::{
    DecidedBy, Decision, DecisionError, DecisionResult, DecisionSource, Source,
};
use crate::allow::pattern::NamePattern;
use crate::allow::remembered::Remembered;
use crate::domain::Domain;
use crate::logging::{suppressed, LogBudget};
use crate::metrics::Metrics;

/// Most names whose answer is cached (yes and no together). A moka entry for a name costs a few
/// hundred bytes, so a random-name flood is bounded at a few hundred MB at worst; least
/// valuable entries are evicted first.
pub const CACHE_CAPACITY: u64 = 1_000_000;

/// How long answers of the dynamic sources are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionSettings {
    /// A yes is trusted this long before the source is asked again.
    pub allowed_ttl: Duration,
    /// A no is trusted this long: a name added to the database is served after at most this.
    pub denied_ttl: Duration,
    /// When no source could answer, the stale-if-error (or fail-closed) answer is kept this
    /// long before the sources are asked again.
    pub stale_ttl: Duration,
}

impl Default for DecisionSettings {
    /// The config file's defaults (`allow.allowed_ttl: 1h`, `allow.denied_ttl: 60s`).
    fn default() -> DecisionSettings {
        DecisionSettings {
            allowed_ttl: Duration::from_secs(3600),
            denied_ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(30),
        }
    }
}

/// A cached answer: what a source said, or (`stale`) what stale-if-error or fail-closed made
/// of a lookup no source could answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    decision: Decision,
    stale: bool,
}

impl Answer {
    fn result(self) -> DecisionResult {
        match (self.stale, self.decision) {
            (false, d) => d.result(),
            (true, Decision::Allowed(_)) => DecisionResult::StaleAllowed,
            (true, Decision::Denied) => DecisionResult::FailClosed,
        }
    }
}

/// Per-entry expiry: a cached yes lives `allowed_ttl`, a cached no `denied_ttl`, a stale answer
/// `stale_ttl`.
struct AnswerExpiry(DecisionSettings);

impl AnswerExpiry {
    fn ttl(&self, answer: &Answer) -> Duration {
        match answer {
            Answer { stale: true, .. } => self.0.stale_ttl,
            Answer {
                decision: Decision::Allowed(_),
                ..
            } => self.0.allowed_ttl,
            Answer {
                decision: Decision::Denied,
                ..
            } => self.0.denied_ttl,
        }
    }
}

impl moka::Expiry<Domain, Answer> for AnswerExpiry {
    fn expire_after_create(&self, _: &Domain, value: &Answer, _: Instant) -> Option<Duration> {
        Some(self.ttl(value))
    }

    // A replaced answer gets the TTL of its new value, not what was left of the old one.
    fn expire_after_update(
        &self,
        _: &Domain,
        value: &Answer,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }
}

/// What one lookup of the dynamic sources produced.
#[derive(Debug, Clone)]
enum Outcome {
    /// Every source answered (or one said yes): a cacheable decision.
    Answered(Decision),
    /// No source said yes and at least one failed; `source` is the first that failed.
    Failed {
        source: Source,
        error: DecisionError,
    },
}

/// A lookup in progress. `id` tells a finishing task whether it is still the registered one
/// (`forget` unregisters it so that its possibly outdated answer is not cached).
struct InFlight {
    id: u64,
    rx: watch::Receiver<Option<Outcome>>,
}

/// State shared with the lookup tasks.
struct Shared {
    sources: Vec<Arc<dyn DecisionSource>>,
    answers: moka::sync::Cache<Domain, Answer>,
    /// The source of the last yes for each name, for stale-if-error (persisted). A definitive
    /// no removes it.
    allowed_before: Arc<Remembered>,
    lookups: Mutex<HashMap<Domain, InFlight>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// Source errors and stale/fail-closed fallbacks are logged at most once a second each:
    /// during an outage every new name would log a line.
    error_log: LogBudget,
    fallback_log: LogBudget,
}

pub struct AllowList {
    platform: Vec<NamePattern>,
    shared: Arc<Shared>,
}

enum Joined {
    Cached(Answer),
    Wait {
        rx: watch::Receiver<Option<Outcome>>,
        started: bool,
    },
}

impl AllowList {
    /// An allow-list with the default TTLs (see `DecisionSettings::default`).
    pub fn new(
        platform: Vec<NamePattern>,
        sources: Vec<Arc<dyn DecisionSource>>,
        metrics: Arc<Metrics>,
    ) -> AllowList {
        AllowList::with_settings(platform, sources, DecisionSettings::default(), metrics)
    }

    /// An allow-list whose cached answers live as long as `settings` says, remembering in
    /// memory only. Nothing here does I/O or spawns: lookups start on the first `decide` for a
    /// name.
    pub fn with_settings(
        platform: Vec<NamePattern>,
        sources: Vec<Arc<dyn DecisionSource>>,
        settings: DecisionSettings,
        metrics: Arc<Metrics>,
    ) -> AllowList {
        let remembered = Arc::new(Remembered::in_memory());
        AllowList::remembering(platform, sources, settings, remembered, metrics)
    }

    /// `with_settings`, with "allowed before" kept in `allowed_before` (loaded from the data
    /// directory, flushed by the server's background service).
    pub fn remembering(
        platform: Vec<NamePattern>,
        sources: Vec<Arc<dyn DecisionSource>>,
        settings: DecisionSettings,
        allowed_before: Arc<Remembered>,
        metrics: Arc<Metrics>,
    ) -> AllowList {
        let answers = moka::sync::Cache::builder()
            .max_capacity(CACHE_CAPACITY)
            .expire_after(AnswerExpiry(settings))
            .build();
        AllowList {
            platform,
            shared: Arc::new(Shared {
                sources,
                answers,
                allowed_before,
                lookups: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                metrics,
                error_log: LogBudget::new(1),
                fallback_log: LogBudget::new(1),
            }),
        }
    }

    /// The platform-domain answer alone (no I/O): `Some(Platform)` when a config pattern matches.
    pub fn platform_match(&self, name: &Domain) -> Option<&NamePattern> {
        self.platform.iter().find(|p| p.matches(name))
    }

    /// Whether any dynamic source (database, ask URL) is configured.
    pub fn has_sources(&self) -> bool {
        !self.shared.sources.is_empty()
    }

    /// The platform patterns from the config.
    pub fn platform(&self) -> &[NamePattern] {
        &self.platform
    }

    /// Ask every dynamic source directly, bypassing the cache, and return each answer
    /// (for `allow::explain`, which must say *why* a name is refused).
    pub async fn ask_each_source(
        &self,
        name: &Domain,
    ) -> Vec<(Source, Result<bool, DecisionError>)> {
        let mut out = Vec::with_capacity(self.shared.sources.len());
        for source in &self.shared.sources {
            out.push((source.source(), source.allows(name).await));
        }
        out
    }

    /// Is `name` allowed? Platform domains first, then the cache, then one shared lookup of the
    /// dynamic sources. Never `Err` in practice: a name the sources cannot decide is allowed
    /// when it was allowed before, else refused (both counted). The signature keeps `Result`
    /// so callers need not change if a hard error is ever needed.
    ///
    /// Must be called inside a tokio runtime (a cache miss spawns the lookup task).
    pub async fn decide(&self, name: &Domain) -> Result<Decision, DecisionError> {
        if self.platform_match(name).is_some() {
            self.shared
                .count(DecidedBy::Platform, DecisionResult::Allowed);
            return Ok(Decision::Allowed(Source::Platform));
        }
        if self.shared.sources.is_empty() {
            self.shared
                .count(DecidedBy::Platform, DecisionResult::Denied);
            return Ok(Decision::Denied);
        }
        if let Some(answer) = self.shared.answers.get(name) {
            self.shared.count(DecidedBy::Cache, answer.result());
            return Ok(answer.decision);
        }
        let (mut rx, started) = match self.join_or_start(name) {
            Joined::Cached(answer) => {
                self.shared.count(DecidedBy::Cache, answer.result());
                return Ok(answer.decision);
            }
            Joined::Wait { rx, started } => (rx, started),
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone());
        match outcome {
            Some(Outcome::Answered(decision)) => {
                // The task counted the source answers once; callers that joined it were
                // answered without a query of their own, like a cache hit.
                if !started {
                    self.shared.count(DecidedBy::Cache, decision.result());
                }
                Ok(decision)
            }
            Some(Outcome::Failed { source, error }) => {
                Ok(self.shared.fall_back(name, source, &error))
            }
            None => {
                // The lookup task panicked (a bug in a source); treat it as an outage.
                let source = self
                    .shared
                    .sources
                    .first()
                    .map_or(Source::Platform, |s| s.source());
                let error = DecisionError::Unavailable {
                    what: "allow-list",
                    message: "the lookup task ended without an answer".into(),
                };
                Ok(self.shared.fall_back(name, source, &error))
            }
        }
    }

    /// Drop the cached answer for `name` (for example when the database says its companies
    /// changed). A lookup in progress still answers its waiters but its answer is not cached;
    /// the next `decide` asks the sources again. "Allowed before" is kept for stale-if-error.
    pub fn forget(&self, name: &Domain) {
        let mut lookups = self.shared.lock_lookups();
        lookups.remove(name);
        self.shared.answers.invalidate(name);
    }

    /// True when `decide(name)` would answer without any I/O: a platform domain, or a name with
    /// a cached answer (yes or no). The pre-TLS per-client gate uses it to tell never-seen names
    /// (which cost a lookup) from known ones. No I/O, no await.
    pub fn is_known(&self, name: &Domain) -> bool {
        self.platform_match(name).is_some() || self.shared.answers.contains_key(name)
    }

    /// The decision for `name` if one is known without any I/O: a platform domain, no dynamic
    /// source at all, or a cached answer (a stale one included).
    pub fn cached(&self, name: &Domain) -> Option<Decision> {
        if self.platform_match(name).is_some() {
            return Some(Decision::Allowed(Source::Platform));
        }
        if self.shared.sources.is_empty() {
            return Some(Decision::Denied);
        }
        self.shared.answers.get(name).map(|a| a.decision)
    }

    /// What is remembered as allowed before (for the background flush).
    pub fn remembered(&self) -> &Arc<Remembered> {
        &self.shared.allowed_before
    }

    /// After a full read of the database's names (`listed`): drop every cached database
    /// decision that disagrees with it (a yes for a name no longer listed, a no for a name now
    /// listed), so the next handshake asks again. Changes missed while the LISTEN connection
    /// was down are repaired this way. Returns the names whose answers were dropped.
    pub fn forget_unlisted(&self, listed: &std::collections::HashSet<Domain>) -> Vec<Domain> {
        let stale: Vec<Domain> = self
            .shared
            .answers
            .iter()
            .filter(|(name, answer)| match answer.decision {
                Decision::Allowed(Source::Database) => !listed.contains(name.as_ref()),
                Decision::Denied => listed.contains(name.as_ref()),
                Decision::Allowed(_) => false,
            })
            .map(|(name, _)| (*name).clone())
            .collect();
        for name in &stale {
            self.forget(name);
        }
        stale
    }

    /// Join the lookup in progress for `name`, or start one.
    fn join_or_start(&self, name: &Domain) -> Joined {
        let mut lookups = self.shared.lock_lookups();
        if let Some(in_flight) = lookups.get(name) {
            return Joined::Wait {
                rx: in_flight.rx.clone(),
                started: false,
            };
        }
        // A lookup that finished between our cache check and the lock has cached its answer
        // (it caches before it unregisters, under this lock): do not query twice.
        if let Some(answer) = self.shared.answers.get(name) {
            return Joined::Cached(answer);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        lookups.insert(name.clone(), InFlight { id, rx: rx.clone() });
        drop(lookups);
        let shared = self.shared.clone();
        let name = name.clone();
        tokio::spawn(async move {
            // Unregisters even if a source panics, so the name is not stuck on a dead lookup.
            let guard = Unregister {
                shared: shared.clone(),
                name: name.clone(),
                id,
            };
            let outcome = shared.ask_sources(&name).await;
            shared.finish(&name, id, &outcome);
            drop(guard);
            let _ = tx.send(Some(outcome));
        });
        Joined::Wait { rx, started: true }
    }
}

impl Shared {
    fn lock_lookups(&self) -> MutexGuard<'_, HashMap<Domain, InFlight>> {
        self.lookups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, by: DecidedBy, result: DecisionResult) {
        self.metrics
            .decisions
            .with_label_values(&[by.label(), result.label()])
            .inc();
    }

    /// Ask every source in order; the first yes wins. A failing source does not stop the
    /// others (the ask URL may still say yes), but a no from the rest is then not definitive.
    async fn ask_sources(&self, name: &Domain) -> Outcome {
        let mut failed: Option<(Source, DecisionError)> = None;
        for source in &self.sources {
            let kind = source.source();
            match source.allows(name).await {
                Ok(true) => {
                    self.count(kind.into(), DecisionResult::Allowed);
                    return Outcome::Answered(Decision::Allowed(kind));
                }
                Ok(false) => self.count(kind.into(), DecisionResult::Denied),
                Err(e) => {
                    self.count(kind.into(), DecisionResult::Error);
                    if let Some(dropped) = self.error_log.take() {
                        log::error!(
                            "allow-list: {e} (asked about {name}){}",
                            suppressed(dropped)
                        );
                    }
                    if failed.is_none() {
                        failed = Some((kind, e));
                    }
                }
            }
        }
        match failed {
            Some((source, error)) => Outcome::Failed { source, error },
            None => Outcome::Answered(Decision::Denied),
        }
    }

    /// Record a lookup's outcome: cache it (unless `forget` unregistered the lookup meanwhile)
    /// and keep "allowed before" up to date. A failed lookup caches its stale-if-error or
    /// fail-closed answer for `stale_ttl`.
    fn finish(&self, name: &Domain, id: u64, outcome: &Outcome) {
        let mut lookups = self.lock_lookups();
        let current = lookups.get(name).is_some_and(|f| f.id == id);
        let answer = match outcome {
            Outcome::Answered(decision) => {
                match decision {
                    Decision::Allowed(source) => self.allowed_before.remember(name, *source),
                    // A definitive no (company deactivated, domain removed) ends stale-if-error.
                    Decision::Denied => self.allowed_before.revoke(name),
                }
                Answer {
                    decision: *decision,
                    stale: false,
                }
            }
            Outcome::Failed { .. } => Answer {
                decision: self
                    .allowed_before
                    .get(name)
                    .map_or(Decision::Denied, Decision::Allowed),
                stale: true,
            },
        };
        if current {
            self.answers.insert(name.clone(), answer);
            lookups.remove(name);
        }
    }

    /// Stale-if-error / fail closed, for a name the sources could not decide.
    fn fall_back(&self, name: &Domain, failed: Source, error: &DecisionError) -> Decision {
        match self.allowed_before.get(name) {
            Some(before) => {
                self.count(before.into(), DecisionResult::StaleAllowed);
                if let Some(dropped) = self.fallback_log.take() {
                    log::warn!(
                        "{name}: still allowed because {} allowed it before, although {error}{}",
                        before.label(),
                        suppressed(dropped)
                    );
                }
                Decision::Allowed(before)
            }
            None => {
                self.count(failed.into(), DecisionResult::FailClosed);
                if let Some(dropped) = self.fallback_log.take() {
                    log::warn!(
                        "{name}: refused (fail closed): never allowed before and {error}{}",
                        suppressed(dropped)
                    );
                }
                Decision::Denied
            }
        }
    }
}

/// Removes a lookup's registration when its task ends, whatever way it ends.
struct Unregister {
    shared: Arc<Shared>,
    name: Domain,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut lookups = self.shared.lock_lookups();
        if lookups.get(&self.name).is_some_and(|f| f.id == self.id) {
            lookups.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests;
