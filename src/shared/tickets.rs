//! `tenant_edge_ticket_keys`: the session-ticket key of each rotation period, created by the
//! first host that needs it and read by all, so a session made on one host resumes on any
//! (`tls::tickets`). Key material is encrypted at rest like private keys.

use async_trait::async_trait;

use crate::shared::store::{SharedError, SharedStore};
use crate::tls::tickets::{TicketKey, TicketKeyStore};
use crate::util::error::RemoteError;

impl SharedStore {
    /// The key material of `periods`, creating those of `create` when missing (the first
    /// insert wins); keys of periods before the first of `periods` are deleted.
    pub async fn ticket_keys(
        &self,
        periods: &[i64],
        create: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, SharedError> {
        const OP: &str = "loading the session-ticket keys";
        self.bounded(OP, async {
            // Steady state: one query. Keys are created (and old ones deleted) once a period.
            let mut keys = self.load_ticket_keys(OP, periods).await?;
            let missing: Vec<i64> = create
                .iter()
                .copied()
                .filter(|p| !keys.iter().any(|(q, _)| q == p))
                .collect();
            if missing.is_empty() {
                return Ok(keys);
            }
            for p in &missing {
                let material = TicketKey::random_material().map_err(|e| SharedError::Crypto {
                    what: "session-ticket key",
                    id: p.to_string(),
                    message: e.to_string(),
                })?;
                let (value, nonce) = self.encrypt("session-ticket key", &aad(*p), &material)?;
                self.execute(
                    OP,
                    "INSERT INTO tenant_edge_ticket_keys (period, material, key_nonce)
                     VALUES ($1, $2, $3) ON CONFLICT (period) DO NOTHING",
                    &[p, &value, &nonce],
                )
                .await?;
            }
            if let Some(oldest) = periods.iter().min() {
                self.execute(
                    OP,
                    "DELETE FROM tenant_edge_ticket_keys WHERE period < $1",
                    &[oldest],
                )
                .await?;
            }
            // Another host may have won an insert: read what is stored.
            keys = self.load_ticket_keys(OP, periods).await?;
            Ok(keys)
        })
        .await
    }

    async fn load_ticket_keys(
        &self,
        op: &'static str,
        periods: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, SharedError> {
        let rows = self
            .query(
                op,
                "SELECT period, material, key_nonce FROM tenant_edge_ticket_keys WHERE period = ANY($1)",
                &[&periods],
            )
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let period: i64 = self.column(op, row, 0)?;
            let value: Vec<u8> = self.column(op, row, 1)?;
            let nonce: Option<Vec<u8>> = self.column(op, row, 2)?;
            keys.push((
                period,
                self.decrypt("session-ticket key", &aad(period), value, nonce)?,
            ));
        }
        Ok(keys)
    }
}

/// The associated data that binds a key's ciphertext to its row.
fn aad(period: i64) -> String {
    format!("ticket-key/{period}")
}

#[async_trait]
impl TicketKeyStore for SharedStore {
    async fn period_keys(
        &self,
        periods: &[i64],
        create: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, RemoteError> {
        Ok(self.ticket_keys(periods, create).await?)
    }
}
