//! Pending ACME challenge responses, shared by the issuer (which writes them while an order is
//! open) and the listeners (which answer the CA's validation requests).
//!
//! - HTTP-01 (RFC 8555 §8.3): token → key authorization, served on port 80.
//! - TLS-ALPN-01 (RFC 8737): name → a self-signed certificate carrying the `acmeIdentifier`
//!   extension, served only to handshakes that offer ALPN `acme-tls/1`.
//!
//! Entries live only while an order is being validated; `ChallengeGuard` removes them when the
//! order ends, however it ends. No policy here: the stores answer what they were given.
//!
//! With several hosts (`store.shared`), a response is also written to the shared store
//! ([`SharedChallenges`], implemented by `shared`) *before* the CA is told to validate, because
//! the CA's request may land on any host, and the host that wrote it announces it (NOTIFY).
//! Readers look in memory first, then in the shared store, but only for a token or name that
//! was announced: a stranger's made-up token costs no query. While the announcements cannot be
//! heard (the LISTEN connection is down), unannounced entries are looked up at a small bounded
//! rate, and a miss is remembered for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::metrics::{label_set, Metrics};
use crate::util::bucket::TokenBucket;

use crate::certs::certificate::{BundleError, CertifiedKey};
use crate::domain::Domain;
use crate::util::error::RemoteError;

/// Challenge responses kept where every host can read them (several hosts). Absent or expired
/// is `Ok(None)`; an entry lives until deleted or `ttl` after it was put, whichever is first.
#[async_trait]
pub trait SharedChallenges: Send + Sync {
    async fn put_http01(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), RemoteError>;
    async fn http01(&self, token: &str) -> Result<Option<String>, RemoteError>;
    async fn delete_http01(&self, token: &str) -> Result<(), RemoteError>;
    /// `bundle_pem`: the PEM key and self-signed challenge certificate.
    async fn put_tls_alpn01(
        &self,
        name: &Domain,
        bundle_pem: &[u8],
        ttl: Duration,
    ) -> Result<(), RemoteError>;
    async fn tls_alpn01(&self, name: &Domain) -> Result<Option<Vec<u8>>, RemoteError>;
    async fn delete_tls_alpn01(&self, name: &Domain) -> Result<(), RemoteError>;
    /// `kind:id` of every live entry (at most a few thousand).
    async fn live_keys(&self) -> Result<Vec<String>, RemoteError>;
}

label_set! {
    /// `tenant_edge_challenge_lookups_total{result}`: where a validation request's answer was
    /// looked for. `skipped`: not announced by any host, so not looked up in the shared store.
    pub enum LookupResult {
        Local => "local",
        SharedHit => "shared_hit",
        SharedMiss => "shared_miss",
        Skipped => "skipped",
    }
}

/// The challenge kinds, as they are announced (`http-01:<token>`, `tls-alpn-01:<name>`).
pub const HTTP01: &str = "http-01";
pub const TLS_ALPN01: &str = "tls-alpn-01";

/// Announcements and misses remembered at once.
const REMEMBERED: u64 = 10_000;
/// Lookups of unannounced entries while the announcements cannot be heard: at most this many
/// at once, one more per second.
const BLIND_BURST: u32 = 10;

/// Both challenge stores.
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<Domain, Arc<CertifiedKey>>>,
    shared: Option<Arc<dyn SharedChallenges>>,
    /// `kind:id` of the challenges other hosts announced (for as long as such a response
    /// lives in the shared store).
    announced: moka::sync::Cache<String, ()>,
    /// Entries looked up while deaf and not found (remembered a little while).
    missed: moka::sync::Cache<String, ()>,
    /// Whether the announcements can be heard now.
    hearing: AtomicBool,
    blind: Mutex<TokenBucket>,
    metrics: Arc<Metrics>,
}

#[cfg(test)]
impl Default for Challenges {
    fn default() -> Self {
        Challenges::new(None, Arc::new(Metrics::new().unwrap()))
    }
}

/// How long a published response stays valid in the shared store if its guard never runs
/// (the host died mid-order).
const SHARED_TTL: Duration = Duration::from_secs(600);

/// RFC 8555 tokens are base64url without padding; ACME CAs use 43 characters (32 bytes).
pub fn is_valid_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    /// Challenges of this host, shared with the other hosts through `shared` when given.
    pub fn new(shared: Option<Arc<dyn SharedChallenges>>, metrics: Arc<Metrics>) -> Challenges {
        let remembered = |ttl| {
            moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(ttl)
                .build()
        };
        Challenges {
            http01: RwLock::default(),
            tls_alpn01: RwLock::default(),
            shared,
            announced: remembered(SHARED_TTL),
            missed: remembered(Duration::from_secs(10)),
            hearing: AtomicBool::new(false),
            blind: Mutex::new(TokenBucket::full(BLIND_BURST, Instant::now())),
            metrics,
        }
    }

    /// Another host published a challenge: `payload` is `kind:id`.
    pub fn announce(&self, payload: &str) {
        let known_kind = payload
            .split_once(':')
            .is_some_and(|(kind, id)| (kind == HTTP01 || kind == TLS_ALPN01) && id.len() <= 255);
        if known_kind {
            self.missed.invalidate(payload);
            self.announced.insert(payload.to_string(), ());
        }
    }

    /// Whether the announcements can be heard (the LISTEN connection is up).
    pub fn set_hearing(&self, hearing: bool) {
        self.hearing.store(hearing, Ordering::Release);
    }

    /// The announcements can be heard again: learn the entries announced while they could
    /// not (one query). Until it answers, unannounced lookups stay rate-limited.
    pub async fn resync(&self) {
        let Some(shared) = &self.shared else { return };
        match shared.live_keys().await {
            Ok(keys) => {
                for key in keys {
                    self.announce(&key);
                }
                self.set_hearing(true);
            }
            Err(e) => log::warn!(
                "cannot list the live challenges ({e}); looking them up one by one, rate-limited"
            ),
        }
    }

    fn count(&self, result: LookupResult) {
        self.metrics
            .challenge_lookups
            .with_label_values(&[result.label()])
            .inc();
    }

    /// Whether `key` (`kind:id`) may be looked up in the shared store now.
    fn worth_asking(&self, key: &str) -> bool {
        if self.announced.contains_key(key) {
            return true;
        }
        if self.hearing.load(Ordering::Acquire) || self.missed.contains_key(key) {
            return false;
        }
        let mut blind = self.blind.lock().unwrap_or_else(|p| p.into_inner());
        blind
            .try_take(Duration::from_secs(1), BLIND_BURST, Instant::now())
            .is_ok()
    }

    /// The shared store, if `kind:id` is worth asking it about; counts the decision.
    fn shared_for(&self, kind: &str, id: &str) -> Option<(&Arc<dyn SharedChallenges>, String)> {
        let shared = self.shared.as_ref()?;
        let key = format!("{kind}:{id}");
        if self.worth_asking(&key) {
            Some((shared, key))
        } else {
            self.count(LookupResult::Skipped);
            None
        }
    }

    fn shared_result<T>(&self, key: String, found: Option<T>) -> Option<T> {
        if found.is_some() {
            self.count(LookupResult::SharedHit);
        } else {
            self.count(LookupResult::SharedMiss);
            if !self.announced.contains_key(&key) {
                self.missed.insert(key, ());
            }
        }
        found
    }

    /// The key authorization for `token`: this host's orders first, then the other hosts'
    /// announced ones.
    pub async fn find_http01(&self, token: &str) -> Option<String> {
        if let Some(found) = self.http01(token) {
            self.count(LookupResult::Local);
            return Some(found);
        }
        let (shared, key) = self.shared_for(HTTP01, token)?;
        let found = match shared.http01(token).await {
            Ok(found) => found,
            Err(e) => {
                log::warn!("HTTP-01 lookup in the shared store failed: {e}");
                None
            }
        };
        self.shared_result(key, found)
    }

    /// The TLS-ALPN-01 certificate for `name`: this host's orders first, then the other hosts'
    /// announced ones.
    pub async fn find_tls_alpn01(&self, name: &Domain) -> Option<Arc<CertifiedKey>> {
        if let Some(found) = self.tls_alpn01(name) {
            self.count(LookupResult::Local);
            return Some(found);
        }
        let (shared, key) = self.shared_for(TLS_ALPN01, name.as_str())?;
        let found = match shared.tls_alpn01(name).await {
            Ok(Some(bundle)) => CertifiedKey::from_bundle(&bundle, Some(name))
                .ok()
                .map(Arc::new),
            Ok(None) => None,
            Err(e) => {
                log::warn!("TLS-ALPN-01 lookup in the shared store failed: {e}");
                None
            }
        };
        self.shared_result(key, found)
    }

    /// Publish an HTTP-01 response here and, with several hosts, in the shared store (awaited:
    /// the CA may ask another host as soon as the order is marked ready).
    pub async fn publish_http01_everywhere(
        self: &Arc<Self>,
        token: &str,
        key_authorization: String,
    ) -> ChallengeGuard {
        if let Some(shared) = &self.shared {
            match shared
                .put_http01(token, &key_authorization, SHARED_TTL)
                .await
            {
                Ok(()) => self.hear_own(&format!("{HTTP01}:{token}")).await,
                Err(e) => log::warn!(
                    "could not share the HTTP-01 response ({e}); only this host can answer it"
                ),
            }
        }
        self.publish_http01(token, key_authorization)
    }

    /// Wait (a little) until this host hears its own announcement of `key`: the other hosts,
    /// listening on the same channel, have heard it by then too, so the CA that is told to
    /// validate next finds it wherever it connects.
    async fn hear_own(&self, key: &str) {
        if !self.hearing.load(Ordering::Acquire) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.announced.contains_key(key) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publish a TLS-ALPN-01 certificate here and, with several hosts, in the shared store.
    pub async fn publish_tls_alpn01_everywhere(
        self: &Arc<Self>,
        name: &Domain,
        bundle: &[u8],
    ) -> Result<ChallengeGuard, BundleError> {
        let cert = CertifiedKey::from_bundle(bundle, Some(name))?;
        if let Some(shared) = &self.shared {
            match shared.put_tls_alpn01(name, bundle, SHARED_TTL).await {
                Ok(()) => self.hear_own(&format!("{TLS_ALPN01}:{name}")).await,
                Err(e) => log::warn!(
                    "could not share the TLS-ALPN-01 certificate ({e}); only this host can answer it"
                ),
            }
        }
        Ok(self.publish_tls_alpn01(name, cert))
    }

    /// The key authorization for an HTTP-01 token, if an order is waiting on it.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if an order is waiting on it.
    pub fn tls_alpn01(&self, name: &Domain) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether a TLS-ALPN-01 validation of `name` is expected: this host or another one
    /// published a response for it. Memory only.
    pub fn awaits_tls_alpn01(&self, name: &Domain) -> bool {
        let local = self
            .tls_alpn01
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name);
        local || self.announced.contains_key(&format!("{TLS_ALPN01}:{name}"))
    }

    /// Publish an HTTP-01 response until the guard is dropped.
    pub fn publish_http01(
        self: &Arc<Self>,
        token: &str,
        key_authorization: String,
    ) -> ChallengeGuard {
        self.http01
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), key_authorization);
        ChallengeGuard {
            store: self.clone(),
            entry: Entry::Http01(token.to_string()),
        }
    }

    /// Publish a TLS-ALPN-01 certificate until the guard is dropped.
    pub fn publish_tls_alpn01(
        self: &Arc<Self>,
        name: &Domain,
        cert: CertifiedKey,
    ) -> ChallengeGuard {
        self.tls_alpn01
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), Arc::new(cert));
        ChallengeGuard {
            store: self.clone(),
            entry: Entry::TlsAlpn01(name.clone()),
        }
    }
}

enum Entry {
    Http01(String),
    TlsAlpn01(Domain),
}

/// Removes its challenge response when dropped.
pub struct ChallengeGuard {
    store: Arc<Challenges>,
    entry: Entry,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        if let (Some(shared), Ok(runtime)) = (
            self.store.shared.clone(),
            tokio::runtime::Handle::try_current(),
        ) {
            let entry = match &self.entry {
                Entry::Http01(token) => Entry::Http01(token.clone()),
                Entry::TlsAlpn01(name) => Entry::TlsAlpn01(name.clone()),
            };
            runtime.spawn(async move {
                let done = match &entry {
                    Entry::Http01(token) => shared.delete_http01(token).await,
                    Entry::TlsAlpn01(name) => shared.delete_tls_alpn01(name).await,
                };
                if let Err(e) = done {
                    log::debug!(
                        "challenge cleanup in the shared store failed ({e}); it expires on its own"
                    );
                }
            });
        }
        match &self.entry {
            Entry::Http01(token) => {
                self.store
                    .http01
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(token);
            }
            Entry::TlsAlpn01(name) => {
                self.store
                    .tls_alpn01
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_remove_their_entries() {
        let c = Arc::new(Challenges::default());
        let token = "abcdefghijklmnopqrstuvwxyz0123456789_-ABCDE";
        assert!(is_valid_token(token));
        {
            let _g = c.publish_http01(token, "ka".into());
            assert_eq!(c.http01(token).as_deref(), Some("ka"));
        }
        assert_eq!(c.http01(token), None);
    }

    #[test]
    fn token_validation() {
        for bad in [
            "",
            "short",
            "../../etc/passwd/aaaaaaaaaaaa",
            "abc=defghijklmnopqrs",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_token(bad), "{bad}");
        }
    }
}
