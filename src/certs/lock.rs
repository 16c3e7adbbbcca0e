//! The cross-host issuance lock: exactly one order per name across hosts that share a store.
//! `shared` implements it with lease rows in PostgreSQL; the manager takes it around an order
//! (double-checked locking: take the lock, look in the store again, then order).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Domain;
use crate::util::error::RemoteError;

/// Leases on names, visible to every host, and the announcement of a new certificate.
///
/// Contract: `try_lock` succeeds for one holder at a time per name, and again for anyone once
/// the lease has run out (its holder died or stalled); a holder extends its lease while its
/// order runs and releases it when done. Times are the backend's, not the host's.
#[async_trait]
pub trait IssuanceLocks: Send + Sync {
    /// Take the lock for `name` if free or expired; `Ok(true)` when `holder` has it now, for
    /// `lease`.
    async fn try_lock(
        &self,
        name: &Domain,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, RemoteError>;
    /// Extend `holder`'s lease to `lease` from now; `Ok(false)` when the lock was lost.
    async fn extend_lock(
        &self,
        name: &Domain,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, RemoteError>;
    /// Release `holder`'s lock (a no-op if it is not held by `holder`).
    async fn unlock(&self, name: &Domain, holder: &str) -> Result<(), RemoteError>;
    /// Tell the other hosts that a certificate for `name` was issued or renewed.
    async fn notify_issued(&self, name: &Domain) -> Result<(), RemoteError>;
}

/// Cross-host coordination when several hosts share a store (`store.shared`).
pub struct SharedLock {
    pub locks: Arc<dyn IssuanceLocks>,
    /// This process, as written in the lock table (`host/pid/random`).
    pub holder: String,
    /// How long a lock outlives a holder that died.
    pub lease: Duration,
}
