//! `tenant_edge_acme_accounts`: one ACME account per directory URL for all hosts (the first
//! host to register wins), encrypted at rest with a key.

use async_trait::async_trait;
use tokio_postgres::Row;

use crate::certs::issuer::acme::account::{credentials_id, AccountStore};
use crate::shared::store::{SharedError, SharedStore};
use crate::util::error::RemoteError;

impl SharedStore {
    /// The credentials stored for the ACME directory `directory`, `Ok(None)` when none.
    pub async fn load_account(&self, directory: &str) -> Result<Option<Vec<u8>>, SharedError> {
        const OP: &str = "loading the ACME account";
        self.bounded(OP, async {
            let row = self
                .query_opt(
                    OP,
                    "SELECT credentials, key_nonce FROM tenant_edge_acme_accounts WHERE directory = $1",
                    &[&directory],
                )
                .await?;
            match row {
                Some(row) => self.account_from_row(OP, directory, &row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// Store `credentials` unless an account for `directory` exists; return the stored one
    /// (ours or the winner's). Hosts racing to register each call this with their own new
    /// account: the first insert wins and every host goes on with the winner's account.
    pub async fn insert_account(
        &self,
        directory: &str,
        credentials: &[u8],
    ) -> Result<Vec<u8>, SharedError> {
        const OP: &str = "storing the ACME account";
        self.bounded(OP, async {
            let (value, nonce) = self.encrypt("ACME account", directory, credentials)?;
            // Two statements on purpose: the INSERT waits for a concurrent uncommitted insert
            // and then does nothing, but a SELECT in the same statement would use a snapshot
            // from before that commit and see no row. A new statement sees the winner.
            let inserted = self
                .query_opt(
                    OP,
                    "INSERT INTO tenant_edge_acme_accounts (directory, credentials, key_nonce, created_at)
                     VALUES ($1, $2, $3, now())
                     ON CONFLICT (directory) DO NOTHING
                     RETURNING directory",
                    &[&directory, &value, &nonce],
                )
                .await?;
            if inserted.is_some() {
                return Ok(credentials.to_vec());
            }
            let row = self
                .query_opt(
                    OP,
                    "SELECT credentials, key_nonce FROM tenant_edge_acme_accounts WHERE directory = $1",
                    &[&directory],
                )
                .await?;
            match row {
                Some(row) => self.account_from_row(OP, directory, &row),
                // The winner's row was deleted in between (an operator reset): ours is as good.
                None => Err(SharedError::Query {
                    op: OP,
                    message: format!(
                        "the account for {directory} was deleted while it was being stored; try again"
                    ),
                }),
            }
        })
        .await
    }

    /// Replace the account of `directory` with `credentials` if the stored one is still
    /// `dead_id`; return what is stored afterwards. The row is locked while it is compared,
    /// so of several hosts replacing the same dead account, the first one's wins.
    pub async fn replace_account(
        &self,
        directory: &str,
        dead_id: &str,
        credentials: &[u8],
    ) -> Result<Vec<u8>, SharedError> {
        const OP: &str = "replacing the ACME account";
        self.bounded(OP, async {
            let (mut conn, _slot) = self.checkout(OP).await?;
            let (value, nonce) = self.encrypt("ACME account", directory, credentials)?;
            let result = async {
                let tx = conn.client.transaction().await?;
                let row = tx
                    .query_opt(
                        "SELECT credentials, key_nonce FROM tenant_edge_acme_accounts
                         WHERE directory = $1 FOR UPDATE",
                        &[&directory],
                    )
                    .await?;
                let stored = row
                    .as_ref()
                    .map(|row| self.account_from_row(OP, directory, row));
                let outcome = match stored {
                    Some(Ok(stored)) if credentials_id(&stored).as_deref() != Some(dead_id) => {
                        Ok(stored)
                    }
                    Some(Err(e)) => Err(e),
                    _ => {
                        tx.execute(
                            "INSERT INTO tenant_edge_acme_accounts (directory, credentials, key_nonce, created_at)
                             VALUES ($1, $2, $3, now())
                             ON CONFLICT (directory) DO UPDATE
                                 SET credentials = EXCLUDED.credentials, key_nonce = EXCLUDED.key_nonce,
                                     created_at = now()",
                            &[&directory, &value, &nonce],
                        )
                        .await?;
                        Ok(credentials.to_vec())
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }
            .await;
            self.finish(OP, conn, result)?
        })
        .await
    }

    pub(super) fn account_from_row(
        &self,
        op: &'static str,
        directory: &str,
        row: &Row,
    ) -> Result<Vec<u8>, SharedError> {
        let value: Vec<u8> = self.column(op, row, 0)?;
        let nonce: Option<Vec<u8>> = self.column(op, row, 1)?;
        self.decrypt("ACME account", directory, value, nonce)
    }
}

#[async_trait]
impl AccountStore for SharedStore {
    async fn load_account(&self, directory: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        Ok(SharedStore::load_account(self, directory).await?)
    }

    async fn insert_account(
        &self,
        directory: &str,
        credentials: &[u8],
    ) -> Result<Vec<u8>, RemoteError> {
        Ok(SharedStore::insert_account(self, directory, credentials).await?)
    }

    async fn replace_account(
        &self,
        directory: &str,
        dead_id: &str,
        credentials: &[u8],
    ) -> Result<Vec<u8>, RemoteError> {
        Ok(SharedStore::replace_account(self, directory, dead_id, credentials).await?)
    }
}
