//! `tenant_edge_orders`: every order the hosts placed with the shared ACME account, so that the
//! account's order budget (`limits::orders`) is one budget for all of them. Counted and
//! recorded in one transaction under an advisory lock: two hosts never both take the last slot.

use std::time::Duration;

use async_trait::async_trait;

use crate::limits::orders::{AccountBudget, OrderLog, Recorded, Spent};
use crate::shared::store::{SharedError, SharedStore};
use crate::util::error::RemoteError;

/// The `pg_advisory_xact_lock` key that serializes order counting ("te_order" in ASCII).
pub const ORDERS_LOCK: i64 = 0x7465_5f6f_7264_6572;

/// Rows are kept this long (the per-domain budget looks back 7 days).
const KEEP: Duration = Duration::from_secs(8 * 24 * 3600);

impl SharedStore {
    /// Count one order for `registered` if `budget` (and, for a new name, the domain's
    /// `weekly` budget) allows it (see [`OrderLog`]).
    pub async fn record_order(
        &self,
        registered: &str,
        renewal: bool,
        budget: &AccountBudget,
        weekly: Option<u32>,
    ) -> Result<Recorded, SharedError> {
        const OP: &str = "counting an order against the account budget";
        self.bounded(OP, async {
            let (mut conn, _slot) = self.checkout(OP).await?;
            let window = budget.window.as_secs_f64();
            let ceiling = i64::from(if renewal {
                budget.limit
            } else {
                budget.limit.saturating_sub(budget.renewal_reserve)
            });
            let result = async {
                let tx = conn.client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ORDERS_LOCK])
                    .await?;
                tx.execute(
                    "DELETE FROM tenant_edge_orders WHERE at < now() - make_interval(secs => $1::float8)",
                    &[&KEEP.as_secs_f64()],
                )
                .await?;
                // The count in the window, and when the order that must leave for one more
                // to fit does (the (used - ceiling + 1)-th oldest).
                let row = tx
                    .query_one(
                        "WITH w AS (
                             SELECT at FROM tenant_edge_orders
                             WHERE at > now() - make_interval(secs => $1::float8)
                         )
                         SELECT (SELECT count(*) FROM w),
                                (SELECT extract(epoch FROM (at + make_interval(secs => $1::float8) - now()))::float8
                                 FROM w ORDER BY at
                                 OFFSET greatest((SELECT count(*) FROM w) - $2, 0) LIMIT 1)",
                        &[&window, &ceiling],
                    )
                    .await?;
                let used: i64 = row.try_get(0)?;
                if used >= ceiling {
                    let retry: Option<f64> = row.try_get(1)?;
                    tx.commit().await?;
                    return Ok(Recorded::Account(Spent {
                        used: u32::try_from(used).unwrap_or(u32::MAX),
                        retry_in: Duration::from_secs_f64(retry.unwrap_or(1.0).max(1.0)),
                    }));
                }
                // The registered domain's certificates in 7 days (new names that did not fail;
                // renewals are exempt), every host's.
                if let (Some(weekly), false) = (weekly, renewal) {
                    let row = tx
                        .query_one(
                            "SELECT count(*), extract(epoch FROM (min(at) + interval '7 days' - now()))::float8
                             FROM tenant_edge_orders
                             WHERE registered = $1 AND NOT renewal AND NOT failed
                               AND at > now() - interval '7 days'",
                            &[&registered],
                        )
                        .await?;
                    let used: i64 = row.try_get(0)?;
                    if used >= i64::from(weekly) {
                        let retry: Option<f64> = row.try_get(1)?;
                        tx.commit().await?;
                        return Ok(Recorded::Domain(Spent {
                            used: u32::try_from(used).unwrap_or(u32::MAX),
                            retry_in: Duration::from_secs_f64(retry.unwrap_or(1.0).max(1.0)),
                        }));
                    }
                }
                let row = tx
                    .query_one(
                        "INSERT INTO tenant_edge_orders (registered, renewal) VALUES ($1, $2) RETURNING id",
                        &[&registered, &renewal],
                    )
                    .await?;
                let id: i64 = row.try_get(0)?;
                tx.commit().await?;
                Ok(Recorded::Counted(Some(id)))
            }
            .await;
            self.finish(OP, conn, result)
        })
        .await
    }
}

#[async_trait]
impl OrderLog for SharedStore {
    async fn record(
        &self,
        registered: &str,
        renewal: bool,
        budget: &AccountBudget,
        weekly: Option<u32>,
    ) -> Result<Recorded, RemoteError> {
        Ok(self
            .record_order(registered, renewal, budget, weekly)
            .await?)
    }

    async fn mark_failed(&self, id: i64) -> Result<(), RemoteError> {
        const OP: &str = "marking an order failed";
        self.bounded(OP, async {
            self.execute(
                OP,
                "UPDATE tenant_edge_orders SET failed = true WHERE id = $1",
                &[&id],
            )
            .await
        })
        .await?;
        Ok(())
    }
}
