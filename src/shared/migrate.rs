//! The shared store's schema: versioned migrations (`migrations/`), applied once each under an
//! advisory transaction lock so that hosts starting together do not collide.

use std::time::Duration;

use crate::shared::store::{SharedError, SharedStore};

/// The `pg_advisory_xact_lock` key that serializes migrations ("tenant_e" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_5f65;

/// Every schema version, in order. Append; never edit a version that has shipped.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_shared_store.sql")),
    (
        2,
        include_str!("../../migrations/0002_orders_and_ticket_keys.sql"),
    ),
    (3, include_str!("../../migrations/0003_allowed_names.sql")),
];

impl SharedStore {
    /// Create or upgrade the tables; returns the versions applied now (empty when up to date).
    /// Runs in one transaction holding `pg_advisory_xact_lock(MIGRATION_LOCK)`, so hosts starting
    /// at once wait for each other and each version is applied once. Bounded by the timeout.
    pub async fn migrate(&self) -> Result<Vec<i32>, SharedError> {
        const OP: &str = "migrating the shared store schema";
        self.bounded(OP, async {
            let (mut conn, _slot) = self.checkout(OP).await?;
            let result = async {
                let tx = conn.client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await?;
                // Created under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide.
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS tenant_edge_schema_migrations (
                         version integer PRIMARY KEY,
                         applied_at timestamptz NOT NULL DEFAULT now()
                     )",
                )
                .await?;
                let applied = tx
                    .query("SELECT version FROM tenant_edge_schema_migrations", &[])
                    .await?
                    .iter()
                    .map(|row| row.try_get::<_, i32>(0))
                    .collect::<Result<Vec<i32>, _>>()?;
                let mut now = Vec::new();
                for (version, sql) in MIGRATIONS {
                    if applied.contains(version) {
                        continue;
                    }
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO tenant_edge_schema_migrations (version, applied_at) VALUES ($1, now())",
                        &[version],
                    )
                    .await?;
                    now.push(*version);
                }
                tx.commit().await?;
                Ok((applied, now))
            }
            .await;
            let (before, now) = self.finish(OP, conn, result)?;
            let known = MIGRATIONS.iter().map(|(v, _)| *v).max().unwrap_or(0);
            if let Some(newer) = before.iter().filter(|v| **v > known).max() {
                log::warn!(
                    "the shared store schema on {} is at version {newer}, newer than this binary's {known}; a newer tenant-edge migrated it",
                    self.target
                );
            }
            if !now.is_empty() {
                log::info!(
                    "shared store schema on {}: applied versions {now:?}",
                    self.target
                );
            }
            Ok(now)
        })
        .await
    }
}

/// Apply the shared store's migrations, retrying while the database is unreachable (a host
/// must start, and serve from disk, even when the database is down).
pub async fn migrate_with_retry(store: &SharedStore) {
    let mut wait = Duration::from_secs(1);
    loop {
        match store.migrate().await {
            Ok(applied) => {
                if !applied.is_empty() {
                    log::info!("shared store migrated to version(s) {applied:?}");
                }
                match store.encrypt_plaintext_rows().await {
                    Ok(0) => {}
                    Ok(n) => log::info!("encrypted {n} row(s) written before the key was set"),
                    Err(e) => log::warn!("could not encrypt the rows written before the key: {e}"),
                }
                return;
            }
            Err(e) => {
                log::warn!("shared store migration failed ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// The encrypted columns: table, the row's key column (the associated data), the value
/// column, and what the value is (for messages).
const ENCRYPTED: &[(&str, &str, &str, &str)] = &[
    ("tenant_edge_certificates", "name", "bundle", "certificate"),
    (
        "tenant_edge_acme_accounts",
        "directory",
        "credentials",
        "ACME account",
    ),
];

impl SharedStore {
    /// With a key configured: encrypt every row still stored in plaintext (written before the
    /// key was set). Returns how many rows were encrypted. Each row is rewritten only if it is
    /// still in plaintext, so concurrent runs and writers are safe.
    pub async fn encrypt_plaintext_rows(&self) -> Result<u64, SharedError> {
        const OP: &str = "encrypting rows written before the key";
        if self.key.is_none() {
            return Ok(0);
        }
        let mut done = 0;
        for (table, id_col, value_col, what) in ENCRYPTED {
            let rows = self
                .bounded(OP, async {
                    self.query(
                        OP,
                        &format!(
                            "SELECT {id_col}, {value_col} FROM {table} WHERE key_nonce IS NULL LIMIT 100000"
                        ),
                        &[],
                    )
                    .await
                })
                .await?;
            for row in &rows {
                let id: String = self.column(OP, row, 0)?;
                let plain: Vec<u8> = self.column(OP, row, 1)?;
                let (value, nonce) = self.encrypt(what, &id, &plain)?;
                done += self
                    .bounded(OP, async {
                        self.execute(
                            OP,
                            &format!(
                                "UPDATE {table} SET {value_col} = $2, key_nonce = $3
                                 WHERE {id_col} = $1 AND key_nonce IS NULL"
                            ),
                            &[&id, &value, &nonce],
                        )
                        .await
                    })
                    .await?;
            }
        }
        // Session-ticket keys are short-lived: plaintext ones are dropped, not encrypted
        // (the hosts create new ones).
        done += self
            .bounded(OP, async {
                self.execute(
                    OP,
                    "DELETE FROM tenant_edge_ticket_keys WHERE key_nonce IS NULL",
                    &[],
                )
                .await
            })
            .await?;
        Ok(done)
    }
}
