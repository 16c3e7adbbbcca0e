//! `tenant_edge_locks`: issuance locks as lease rows (see the module docs of `shared` for why
//! not advisory locks), and the NOTIFY that announces a new certificate.

use std::time::Duration;

use async_trait::async_trait;

use crate::certs::lock::IssuanceLocks;
use crate::domain::Domain;
use crate::shared::store::{SharedError, SharedStore};
use crate::util::error::RemoteError;

/// The NOTIFY channel on which [`SharedStore::notify_issued`] announces a certificate that was
/// issued or renewed; the payload is the name.
pub const CERTS_CHANNEL: &str = "tenant_edge_certs";

impl SharedStore {
    /// Take the lock for `name` if free or if its lease expired (its holder died). `holder`
    /// identifies this process (see [`holder_id`]). `Ok(true)`: ours until `lease` from now on
    /// the database clock; extend it before then. Not re-entrant: a second `try_lock` by the
    /// same holder while the lease runs returns `Ok(false)`.
    pub async fn try_lock(
        &self,
        name: &Domain,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, SharedError> {
        const OP: &str = "taking an issuance lock";
        self.bounded(OP, async {
            let row = self
                .query_opt(
                    OP,
                    "INSERT INTO tenant_edge_locks AS l (name, holder, expires_at)
                     VALUES ($1, $2, now() + make_interval(secs => $3::float8))
                     ON CONFLICT (name) DO UPDATE
                         SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                         WHERE l.expires_at < now()
                     RETURNING holder",
                    &[&name.as_str(), &holder, &lease.as_secs_f64()],
                )
                .await?;
            Ok(row.is_some())
        })
        .await
    }

    /// Extend our lease to `lease` from now; `Ok(false)` when we lost it (it expired and
    /// someone else took it, or it was deleted). An expired lease nobody took is still ours.
    pub async fn extend_lock(
        &self,
        name: &Domain,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, SharedError> {
        const OP: &str = "extending an issuance lock";
        self.bounded(OP, async {
            let n = self
                .execute(
                    OP,
                    "UPDATE tenant_edge_locks
                     SET expires_at = now() + make_interval(secs => $3::float8)
                     WHERE name = $1 AND holder = $2",
                    &[&name.as_str(), &holder, &lease.as_secs_f64()],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }

    /// Release our lock (no-op if not ours).
    pub async fn unlock(&self, name: &Domain, holder: &str) -> Result<(), SharedError> {
        const OP: &str = "releasing an issuance lock";
        self.bounded(OP, async {
            self.execute(
                OP,
                "DELETE FROM tenant_edge_locks WHERE name = $1 AND holder = $2",
                &[&name.as_str(), &holder],
            )
            .await
            .map(drop)
        })
        .await
    }

    /// Tell the other hosts a certificate was issued or renewed: NOTIFY [`CERTS_CHANNEL`] with
    /// the name as payload (delivered when this statement commits, i.e. at once).
    pub async fn notify_issued(&self, name: &Domain) -> Result<(), SharedError> {
        const OP: &str = "announcing a certificate";
        self.bounded(OP, async {
            self.execute(
                OP,
                "SELECT pg_notify($1, $2)",
                &[&CERTS_CHANNEL, &name.as_str()],
            )
            .await
            .map(drop)
        })
        .await
    }
}

#[async_trait]
impl IssuanceLocks for SharedStore {
    async fn try_lock(
        &self,
        name: &Domain,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, RemoteError> {
        Ok(SharedStore::try_lock(self, name, holder, lease).await?)
    }

    async fn extend_lock(
        &self,
        name: &Domain,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, RemoteError> {
        Ok(SharedStore::extend_lock(self, name, holder, lease).await?)
    }

    async fn unlock(&self, name: &Domain, holder: &str) -> Result<(), RemoteError> {
        Ok(SharedStore::unlock(self, name, holder).await?)
    }

    async fn notify_issued(&self, name: &Domain) -> Result<(), RemoteError> {
        Ok(SharedStore::notify_issued(self, name).await?)
    }
}
