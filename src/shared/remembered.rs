//! `tenant_edge_allowed`: the names a dynamic source allowed, shared by the hosts so that a
//! host restarted (or started) during an outage of that source still serves them
//! (`allow::remembered`).

use async_trait::async_trait;

use crate::allow::decision::Source;
use crate::allow::remembered::{Entry, RememberedStore};
use crate::domain::Domain;
use crate::shared::store::{SharedError, SharedStore};
use crate::util::error::RemoteError;

impl SharedStore {
    /// Every name allowed since `since` (unix seconds). Rows that are not a name and a source
    /// are skipped.
    pub async fn allowed_names(&self, since: i64) -> Result<Vec<(Domain, Entry)>, SharedError> {
        const OP: &str = "loading the allowed names";
        self.bounded(OP, async {
            let rows = self
                .query(
                    OP,
                    "SELECT name, source, extract(epoch FROM at)::bigint FROM tenant_edge_allowed
                     WHERE at > to_timestamp($1::bigint)",
                    &[&since],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let name: String = self.column(OP, row, 0)?;
                let source: String = self.column(OP, row, 1)?;
                let at: i64 = self.column(OP, row, 2)?;
                if let (Ok(name), Some(source)) =
                    (Domain::parse(&name), Source::from_label(&source))
                {
                    out.push((name, Entry { source, at }));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Record `upserts` (a newer `at` wins) and delete `revoked`, in one round trip each.
    pub async fn save_allowed(
        &self,
        upserts: &[(Domain, Entry)],
        revoked: &[Domain],
    ) -> Result<(), SharedError> {
        const OP: &str = "saving the allowed names";
        self.bounded(OP, async {
            if !upserts.is_empty() {
                let names: Vec<&str> = upserts.iter().map(|(n, _)| n.as_str()).collect();
                let sources: Vec<&str> = upserts.iter().map(|(_, e)| e.source.label()).collect();
                let ats: Vec<i64> = upserts.iter().map(|(_, e)| e.at).collect();
                self.execute(
                    OP,
                    "INSERT INTO tenant_edge_allowed (name, source, at)
                     SELECT n, s, to_timestamp(a) FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(n, s, a)
                     ON CONFLICT (name) DO UPDATE SET source = excluded.source, at = excluded.at
                     WHERE tenant_edge_allowed.at < excluded.at",
                    &[&names, &sources, &ats],
                )
                .await?;
            }
            if !revoked.is_empty() {
                let names: Vec<&str> = revoked.iter().map(|n| n.as_str()).collect();
                self.execute(
                    OP,
                    "DELETE FROM tenant_edge_allowed WHERE name = ANY($1::text[])",
                    &[&names],
                )
                .await?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RememberedStore for SharedStore {
    async fn load_remembered(&self, since: i64) -> Result<Vec<(Domain, Entry)>, RemoteError> {
        Ok(self.allowed_names(since).await?)
    }

    async fn save_remembered(
        &self,
        upserts: &[(Domain, Entry)],
        revoked: &[Domain],
    ) -> Result<(), RemoteError> {
        Ok(self.save_allowed(upserts, revoked).await?)
    }
}
