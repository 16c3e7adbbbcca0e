//! `tenant_edge_challenges`: HTTP-01 key authorizations and TLS-ALPN-01 certificates, written
//! before the CA is told to validate (its request may reach any host) and expiring on the
//! database clock.

use std::time::Duration;

use async_trait::async_trait;

use crate::certs::challenge::SharedChallenges;
use crate::domain::Domain;
use crate::shared::store::{SharedError, SharedStore};
use crate::util::error::RemoteError;

use crate::certs::challenge::{HTTP01, TLS_ALPN01};

/// The NOTIFY channel on which a host announces a challenge it published (`kind:id`), so that
/// the others look in the shared store for that one and no other.
pub const CHALLENGES_CHANNEL: &str = "tenant_edge_challenges";

impl SharedStore {
    /// Publish the HTTP-01 response for `token` for `ttl` (measured on the database clock).
    /// Also clears out expired challenges.
    pub async fn put_http01(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), SharedError> {
        const OP: &str = "publishing an HTTP-01 challenge";
        self.bounded(
            OP,
            self.put_challenge(OP, HTTP01, token, key_authorization.as_bytes(), ttl),
        )
        .await
    }

    /// The key authorization for `token`; `Ok(None)` when absent or expired.
    pub async fn http01(&self, token: &str) -> Result<Option<String>, SharedError> {
        const OP: &str = "reading an HTTP-01 challenge";
        self.bounded(OP, async {
            match self.challenge(OP, HTTP01, token).await? {
                Some(value) => {
                    String::from_utf8(value)
                        .map(Some)
                        .map_err(|_| SharedError::Corrupt {
                            what: "HTTP-01 challenge",
                            id: token.to_string(),
                            message: "the key authorization is not UTF-8".into(),
                        })
                }
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn delete_http01(&self, token: &str) -> Result<(), SharedError> {
        const OP: &str = "deleting an HTTP-01 challenge";
        self.bounded(OP, self.delete_challenge(OP, HTTP01, token))
            .await
    }

    /// Publish the TLS-ALPN-01 challenge certificate (PEM key + certificate) for `name`.
    pub async fn put_tls_alpn01(
        &self,
        name: &Domain,
        bundle_pem: &[u8],
        ttl: Duration,
    ) -> Result<(), SharedError> {
        const OP: &str = "publishing a TLS-ALPN-01 challenge";
        self.bounded(
            OP,
            self.put_challenge(OP, TLS_ALPN01, name.as_str(), bundle_pem, ttl),
        )
        .await
    }

    /// The TLS-ALPN-01 challenge certificate for `name`; `Ok(None)` when absent or expired.
    pub async fn tls_alpn01(&self, name: &Domain) -> Result<Option<Vec<u8>>, SharedError> {
        const OP: &str = "reading a TLS-ALPN-01 challenge";
        self.bounded(OP, self.challenge(OP, TLS_ALPN01, name.as_str()))
            .await
    }

    pub async fn delete_tls_alpn01(&self, name: &Domain) -> Result<(), SharedError> {
        const OP: &str = "deleting a TLS-ALPN-01 challenge";
        self.bounded(OP, self.delete_challenge(OP, TLS_ALPN01, name.as_str()))
            .await
    }

    pub(super) async fn put_challenge(
        &self,
        op: &'static str,
        kind: &str,
        id: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), SharedError> {
        self.execute(
            op,
            "WITH purge AS (
                 DELETE FROM tenant_edge_challenges
                 WHERE expires_at < now() AND NOT (kind = $1 AND id = $2)
             )
             INSERT INTO tenant_edge_challenges (kind, id, value, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8))
             ON CONFLICT (kind, id) DO UPDATE
                 SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            &[&kind, &id, &value, &ttl.as_secs_f64()],
        )
        .await?;
        // Announced after it is stored: a host that hears it finds it.
        self.execute(
            op,
            "SELECT pg_notify($1, $2)",
            &[&CHALLENGES_CHANNEL, &format!("{kind}:{id}")],
        )
        .await
        .map(drop)
    }

    pub(super) async fn challenge(
        &self,
        op: &'static str,
        kind: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, SharedError> {
        let row = self
            .query_opt(
                op,
                "SELECT value FROM tenant_edge_challenges
                 WHERE kind = $1 AND id = $2 AND expires_at > now()",
                &[&kind, &id],
            )
            .await?;
        row.map(|row| self.column(op, &row, 0)).transpose()
    }

    /// `kind:id` of every challenge response stored and not expired (what a host that could
    /// not hear the announcements for a while may have missed).
    pub async fn live_challenges(&self) -> Result<Vec<String>, SharedError> {
        const OP: &str = "listing the live challenges";
        self.bounded(OP, async {
            let rows = self
                .query(
                    OP,
                    "SELECT kind || ':' || id FROM tenant_edge_challenges
                     WHERE expires_at > now() LIMIT 10000",
                    &[],
                )
                .await?;
            rows.iter().map(|row| self.column(OP, row, 0)).collect()
        })
        .await
    }

    pub(super) async fn delete_challenge(
        &self,
        op: &'static str,
        kind: &str,
        id: &str,
    ) -> Result<(), SharedError> {
        self.execute(
            op,
            "DELETE FROM tenant_edge_challenges WHERE kind = $1 AND id = $2",
            &[&kind, &id],
        )
        .await
        .map(drop)
    }
}

#[async_trait]
impl SharedChallenges for SharedStore {
    async fn put_http01(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), RemoteError> {
        Ok(SharedStore::put_http01(self, token, key_authorization, ttl).await?)
    }

    async fn http01(&self, token: &str) -> Result<Option<String>, RemoteError> {
        Ok(SharedStore::http01(self, token).await?)
    }

    async fn delete_http01(&self, token: &str) -> Result<(), RemoteError> {
        Ok(SharedStore::delete_http01(self, token).await?)
    }

    async fn put_tls_alpn01(
        &self,
        name: &Domain,
        bundle_pem: &[u8],
        ttl: Duration,
    ) -> Result<(), RemoteError> {
        Ok(SharedStore::put_tls_alpn01(self, name, bundle_pem, ttl).await?)
    }

    async fn tls_alpn01(&self, name: &Domain) -> Result<Option<Vec<u8>>, RemoteError> {
        Ok(SharedStore::tls_alpn01(self, name).await?)
    }

    async fn delete_tls_alpn01(&self, name: &Domain) -> Result<(), RemoteError> {
        Ok(SharedStore::delete_tls_alpn01(self, name).await?)
    }

    async fn live_keys(&self) -> Result<Vec<String>, RemoteError> {
        Ok(self.live_challenges().await?)
    }
}
