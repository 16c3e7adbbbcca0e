//! The shared store's connection to PostgreSQL: the pool, the bound on every operation, and
//! how driver errors become `SharedError`s an operator can act on.

use std::path::PathBuf;
use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use tokio::sync::SemaphorePermit;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row};

use crate::certs::store::StoreError;
use crate::domain::Domain;
use crate::pg::pool::{Pool, PoolClosed, Pooled};
use crate::pg::{
    connect_settings, describe_target, harden, is_config_error, password_of, redact_password,
    redact_url,
};
use crate::util::error::chain;
use crate::util::task::AbortOnDrop;

/// The environment variable that holds the encryption key by default (named in errors).
pub const KEY_ENV: &str = "TENANT_EDGE_STORE_KEY";

/// Connections (and so concurrent operations) per store.
const POOL_SIZE: usize = 4;

/// Why a shared-store operation failed. Each message says which operation and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The URL or the key is unusable; the configuration must change.
    #[error("{0}")]
    Misconfigured(String),
    /// The server could not be reached or the connection broke: retrying later may work.
    #[error("{op}: {message}")]
    Unavailable { op: &'static str, message: String },
    /// No answer within the timeout.
    #[error("{op}: no answer from PostgreSQL at {target} within {timeout:?}; the server is down, overloaded or unreachable")]
    Timeout {
        op: &'static str,
        target: String,
        timeout: Duration,
    },
    /// The server rejected a statement (missing tables, privileges, authentication).
    #[error("{op}: {message}")]
    Query { op: &'static str, message: String },
    /// A row is encrypted and this host has no key.
    #[error("the {what} for {id} in PostgreSQL is encrypted but this host has no key; set {key_env} to the key the other hosts use")]
    KeyMissing {
        what: &'static str,
        id: String,
        key_env: String,
    },
    /// A row is stored in plaintext although this host has a key: written before the key was
    /// configured, or by a host without it (or altered to look so).
    #[error("the {what} for {id} in PostgreSQL is not encrypted although {key_env} is set; run `tenant-edge migrate -c FILE` once with the key to encrypt the rows written before it, and give every host the key")]
    Plaintext {
        what: &'static str,
        id: String,
        key_env: String,
    },
    /// A row does not decrypt with this host's key.
    #[error("the {what} for {id} in PostgreSQL does not decrypt with the key in {key_env}: it was written with another key, or altered; give every host the same {key_env}")]
    WrongKey {
        what: &'static str,
        id: String,
        key_env: String,
    },
    /// A row is not in the shape this version writes.
    #[error("the {what} for {id} in PostgreSQL is damaged: {message}")]
    Corrupt {
        what: &'static str,
        id: String,
        message: String,
    },
    /// OpenSSL failed to encrypt (or to produce a random nonce).
    #[error("encrypting the {what} for {id} failed: {message}")]
    Crypto {
        what: &'static str,
        id: String,
        message: String,
    },
}

impl SharedError {
    /// Fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SharedError::Misconfigured(_) => "misconfigured",
            SharedError::Unavailable { .. } => "unavailable",
            SharedError::Timeout { .. } => "timeout",
            SharedError::Query { .. } => "query",
            SharedError::KeyMissing { .. } => "key_missing",
            SharedError::Plaintext { .. } => "plaintext",
            SharedError::WrongKey { .. } => "wrong_key",
            SharedError::Corrupt { .. } => "corrupt",
            SharedError::Crypto { .. } => "internal",
        }
    }

    /// The `SharedError` inside a `StoreError` returned by the `Store` impl, for its `kind()`.
    pub fn in_store_error(e: &StoreError) -> Option<&SharedError> {
        match e {
            StoreError::Io { source, .. } => source.get_ref()?.downcast_ref::<SharedError>(),
            StoreError::Join(_) => None,
        }
    }
}

/// An identifier for this process as a lock holder: `host/pid/random`, unique across restarts.
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// One pooled connection and the task driving its socket.
pub(super) struct Conn {
    pub(super) client: Client,
    _task: AbortOnDrop,
}

impl Pooled for Conn {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Certificates, ACME accounts, challenges and issuance locks in one PostgreSQL database.
pub struct SharedStore {
    pub(super) config: tokio_postgres::Config,
    /// Host, port, user and database for messages (never the password).
    pub(super) target: String,
    pub(super) password: Option<String>,
    pub(super) key: Option<[u8; 32]>,
    /// Where the key comes from, for messages.
    pub(super) key_env: String,
    pub(super) timeout: Duration,
    /// At most `POOL_SIZE` operations (and so connections) at a time; idle connections.
    pub(super) pool: Pool<Conn>,
    /// TLS as the URL's `sslmode` says.
    pub(super) tls: MakeTlsConnector,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("target", &self.target)
            .field("encrypted", &self.key.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// `url`: postgres URL; `key`: optional 32-byte key for encrypting private keys at rest;
    /// `timeout`: the bound on every operation. Parses the URL and sets up an empty pool; does
    /// not connect.
    pub fn new(
        url: &str,
        key: Option<[u8; 32]>,
        timeout: Duration,
    ) -> Result<SharedStore, SharedError> {
        let (mut pg, tls) = connect_settings(url, None).map_err(|message| {
            SharedError::Misconfigured(redact_url(url, format!("the shared store URL: {message}")))
        })?;
        let password = password_of(&pg);
        harden(&mut pg, timeout);
        if pg.get_application_name().is_none() {
            // Shows up in pg_stat_activity, beside the lock rows' holders.
            pg.application_name("tenant-edge");
        }
        Ok(SharedStore {
            target: describe_target(&pg),
            config: pg,
            password,
            key,
            key_env: KEY_ENV.to_string(),
            timeout,
            pool: Pool::new(POOL_SIZE),
            tls,
        })
    }

    /// Verify the server's certificate against the PEM roots in `root` (`store.shared.tls_root`)
    /// instead of the system's.
    pub fn with_tls_root(
        mut self,
        url: &str,
        root: &std::path::Path,
    ) -> Result<SharedStore, SharedError> {
        let (_, tls) = connect_settings(url, Some(root))
            .map_err(|m| SharedError::Misconfigured(format!("store.shared.tls_root: {m}")))?;
        self.tls = tls;
        Ok(self)
    }

    /// Name the place the key comes from in error messages (default [`KEY_ENV`]).
    pub fn with_key_env(mut self, name: &str) -> SharedStore {
        self.key_env = name.to_string();
        self
    }

    /// `host:port (user U, database D)`, for logs.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl SharedStore {
    /// Run `op` within the timeout. Cancel-safe: a connection in use when the timeout fires is
    /// dropped with the future, never pooled again.
    pub(super) async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, SharedError>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => {
                // The idle connections probably went the way of the one that timed out.
                self.pool.clear();
                Err(SharedError::Timeout {
                    op,
                    target: self.target.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }

    pub(super) async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, SharedError> {
        let (conn, _slot) = self.checkout(op).await?;
        let result = conn.client.query_opt(sql, params).await;
        self.finish(op, conn, result)
    }

    pub(super) async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, SharedError> {
        let (conn, _slot) = self.checkout(op).await?;
        let result = conn.client.query(sql, params).await;
        self.finish(op, conn, result)
    }

    pub(super) async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, SharedError> {
        let (conn, _slot) = self.checkout(op).await?;
        let result = conn.client.execute(sql, params).await;
        self.finish(op, conn, result)
    }

    /// A pool slot and an open connection (an idle one, else a new one).
    pub(super) async fn checkout(
        &self,
        op: &'static str,
    ) -> Result<(Conn, SemaphorePermit<'_>), SharedError> {
        let slot = self
            .pool
            .slot()
            .await
            .map_err(|PoolClosed| SharedError::Unavailable {
                op,
                message: "the connection pool is closed".into(),
            })?;
        let conn = match self.pool.take() {
            Some(conn) => conn,
            None => self.connect(op).await?,
        };
        Ok((conn, slot))
    }

    /// Return the connection to the pool unless it broke, and turn a driver error into ours.
    pub(super) fn finish<T>(
        &self,
        op: &'static str,
        conn: Conn,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, SharedError> {
        match result {
            Ok(value) => {
                self.pool.put_back(conn);
                Ok(value)
            }
            Err(e) => {
                let broken = e.is_closed() || conn.client.is_closed();
                if !broken && e.as_db_error().is_some() {
                    // The server answered: the connection is fine (an open transaction is
                    // rolled back by tokio-postgres before the next statement).
                    self.pool.put_back(conn);
                }
                Err(self.query_error(op, &e, broken))
            }
        }
    }

    pub(super) async fn connect(&self, op: &'static str) -> Result<Conn, SharedError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| {
            let message = format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.target,
                self.redact(chain(&e))
            );
            if is_config_error(&e) {
                // Authentication or a missing database: the server is up, the URL is wrong.
                SharedError::Query {
                    op,
                    message: format!("{message}; check the shared store URL"),
                }
            } else {
                SharedError::Unavailable {
                    op,
                    message: format!("{message}; is the server running and the URL right?"),
                }
            }
        })?;
        let target = self.target.clone();
        let task = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::warn!(
                    "a shared store connection to PostgreSQL at {target} ended: {}; the next operation reconnects",
                    chain(&e)
                );
            }
        }));
        // The server gives up on a statement when we do (e.g. a lock wait past the timeout):
        // `statement_timeout` is set at connection start (`pg::harden`).
        Ok(Conn {
            client,
            _task: task,
        })
    }

    pub(super) fn column<'r, T: tokio_postgres::types::FromSql<'r>>(
        &self,
        op: &'static str,
        row: &'r Row,
        index: usize,
    ) -> Result<T, SharedError> {
        row.try_get(index).map_err(|e| SharedError::Query {
            op,
            message: format!(
                "column {index} has an unexpected type: {}; is the schema from another version? run `tenant-edge migrate`",
                self.redact(chain(&e))
            ),
        })
    }

    pub(super) fn query_error(
        &self,
        op: &'static str,
        e: &tokio_postgres::Error,
        broken: bool,
    ) -> SharedError {
        let text = self.redact(chain(e));
        if broken {
            return SharedError::Unavailable {
                op,
                message: format!(
                    "the connection to PostgreSQL at {} broke: {text}; the next operation reconnects",
                    self.target
                ),
            };
        }
        let message = format!("PostgreSQL at {} refused it: {text}", self.target);
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            return SharedError::Query {
                op,
                message: format!(
                    "{message}; the shared store tables are missing: run `tenant-edge migrate`"
                ),
            };
        }
        // A server error about the statement (or a client-side type error, which has no
        // SQLSTATE) needs a change; anything else (shutdown, too many connections, a
        // statement timeout) is an outage.
        if e.as_db_error().is_none() || is_config_error(e) {
            SharedError::Query { op, message }
        } else {
            SharedError::Unavailable { op, message }
        }
    }

    /// Belt and braces: no message leaves this module with the password in it.
    pub(super) fn redact(&self, message: String) -> String {
        redact_password(self.password.as_deref(), message)
    }
}

/// `StoreError` has no database variant: carry ours as the I/O error's source, with a
/// pseudo-path naming the table and row.
pub(super) fn store_error(op: &'static str, name: Option<&Domain>, e: SharedError) -> StoreError {
    let path = match name {
        Some(name) => format!("postgres:tenant_edge_certificates/{name}"),
        None => "postgres:tenant_edge_certificates".to_string(),
    };
    StoreError::Io {
        op,
        path: PathBuf::from(path),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_show_the_password() {
        let store = SharedStore::new(
            "postgres://app:s3cret@db.internal:6543/saas",
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(store.target(), "db.internal:6543 (user app, database saas)");
        assert_eq!(store.redact("for s3cret".into()), "for ***");
        assert!(!format!("{store:?}").contains("s3cret"));
        let err = SharedStore::new(
            "postgres://app:pw1@host:notaport/db",
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "misconfigured");
        assert!(!err.to_string().contains("pw1"), "{err}");
    }

    #[test]
    fn store_errors_carry_the_shared_error() {
        let e = store_error("load", None, SharedError::Misconfigured("bad".into()));
        assert_eq!(
            SharedError::in_store_error(&e).map(SharedError::kind),
            Some("misconfigured")
        );
    }

    #[test]
    fn holder_ids_are_unique() {
        assert_ne!(holder_id(), holder_id());
    }
}
