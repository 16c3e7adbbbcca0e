//! The shared store: what several hosts of one edge share through PostgreSQL (issue 5,
//! DESIGN.md "Several hosts"): certificates (a `Store`), ACME accounts, challenge responses and
//! issuance locks, and the NOTIFY that tells the other hosts a certificate changed.
//!
//! Owns the `tenant_edge_*` tables (created and upgraded by [`SharedStore::migrate`]), a small
//! pool of tokio-postgres connections (no TLS: the database is expected on a private network or
//! loopback) and the at-rest encryption of private keys. Must not: connect before the first
//! operation (Pingora forks and starts its runtimes after the server is built), decide policy
//! (which names, when to renew: the manager does), or put the database password in any message.
//!
//! # Failure handling
//! Every public operation (waiting for a pool slot, connecting, querying) is bounded by the
//! `timeout` given to [`SharedStore::new`]; each connection also sets `statement_timeout` so the
//! server gives up too. A connection that broke or was in use when the timeout fired is dropped,
//! never pooled again, and the next operation opens a new one: the store reconnects on its own
//! when the database comes back. The disk store stays each host's local copy, so a host keeps
//! serving what it has while the database is down.
//!
//! # Schema (`migrations/`)
//! ```text
//! tenant_edge_schema_migrations(version int primary key, applied_at timestamptz)
//! tenant_edge_certificates(name text primary key, bundle bytea, key_nonce bytea null,
//!                          meta jsonb null, updated_at timestamptz)
//! tenant_edge_acme_accounts(directory text primary key, credentials bytea,
//!                           key_nonce bytea null, created_at timestamptz)
//! tenant_edge_challenges(kind text, id text, value bytea, expires_at timestamptz,
//!                        primary key (kind, id))
//! tenant_edge_locks(name text primary key, holder text, expires_at timestamptz)
//! ```
//! Every name starts with `tenant_edge_` so the tables sit beside the application's (Rails)
//! tables in the same database. Migrations are versioned and run in one transaction holding
//! `pg_advisory_xact_lock(MIGRATION_LOCK)`, so hosts starting together apply each version once.
//!
//! # Times come from the database
//! Every expiry is computed and compared with PostgreSQL's `now()`, never a host's clock: hosts
//! whose clocks disagree still agree on whether a lease or a challenge has expired.
//!
//! # Issuance locks are lease rows, not advisory locks
//! A lock is a row `(name, holder, expires_at)`. Taking it is one statement,
//! `INSERT .. ON CONFLICT (name) DO UPDATE .. WHERE tenant_edge_locks.expires_at < now()
//! RETURNING holder`: it succeeds when there is no row or when the row's lease has run out (its
//! holder died or stalled); PostgreSQL serializes concurrent takers on the row, so exactly one
//! wins. The holder extends the lease while its ACME order runs and deletes the row when done.
//! Why not `pg_advisory_lock`: an advisory lock belongs to one session and dies with its
//! connection, so a network blip would silently release it while the order goes on (and a
//! second host would start a second order); holding it would pin one pooled connection across
//! every await of an order that takes seconds to minutes. A lease survives connection loss,
//! still expires if its holder dies, and is visible (and deletable) in a table when debugging.
//!
//! # Private keys at rest
//! With a key (32 bytes, from [`KEY_ENV`] by default; see [`parse_key`]), certificate bundles
//! (they contain the private key) and ACME account credentials are encrypted with AES-256-GCM:
//! a random 12-byte nonce per write in `key_nonce`, the ciphertext followed by the 16-byte tag in
//! the value column, and the row's key (name or directory URL) as associated data so a value
//! copied to another row does not decrypt. A row that does not decrypt (another key, or altered)
//! is an error naming the key's environment variable, never `Ok(None)`: treating it as absent
//! would make the host order a new certificate for every name. A plaintext row (written before a
//! key was configured) is still read, and encrypted on its next write. Without a key, values are
//! stored as they are. TLS-ALPN-01 challenge certificates are not encrypted: their keys are
//! throwaway and the rows expire within minutes.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use tokio::sync::SemaphorePermit;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row};

use crate::database::{chain, describe_target, is_config_error};
use crate::domain::Domain;
use crate::pgpool::{redact_password, AbortOnDrop, Pool, PoolClosed, Pooled};
use crate::store::{CertMeta, Store, StoreError, StoredCert};

/// The NOTIFY channel on which [`SharedStore::notify_issued`] announces a certificate that was
/// issued or renewed; the payload is the name.
pub const CERTS_CHANNEL: &str = "tenant_edge_certs";

/// The environment variable that holds the encryption key by default (named in errors).
pub const KEY_ENV: &str = "TENANT_EDGE_STORE_KEY";

/// The `pg_advisory_xact_lock` key that serializes migrations ("tenant_e" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_5f65;

/// Every schema version, in order. Append; never edit a version that has shipped.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_shared_store.sql"))];

/// Connections (and so concurrent operations) per store.
const POOL_SIZE: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HTTP01: &str = "http-01";
const TLS_ALPN01: &str = "tls-alpn-01";

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

/// Parse an encryption key: 64 hex digits, or standard base64 of 32 bytes
/// (`openssl rand -hex 32` or `openssl rand -base64 32`).
pub fn parse_key(text: &str) -> Result<[u8; 32], SharedError> {
    let text = text.trim();
    let bad = || {
        SharedError::Misconfigured(
            "the shared store key must be 32 bytes as 64 hex digits or base64 (openssl rand -hex 32)"
                .into(),
        )
    };
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?
    } else {
        openssl::base64::decode_block(text).map_err(|_| bad())?
    };
    bytes.try_into().map_err(|_| bad())
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
struct Conn {
    client: Client,
    _task: AbortOnDrop,
}

impl Pooled for Conn {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Certificates, ACME accounts, challenges and issuance locks in one PostgreSQL database.
pub struct SharedStore {
    config: tokio_postgres::Config,
    /// Host, port, user and database for messages (never the password).
    target: String,
    password: Option<String>,
    key: Option<[u8; 32]>,
    /// Where the key comes from, for messages.
    key_env: String,
    timeout: Duration,
    /// At most `POOL_SIZE` operations (and so connections) at a time; idle connections.
    pool: Pool<Conn>,
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
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            let message = chain(&e);
            SharedError::Misconfigured(format!(
                "the shared store URL is not a PostgreSQL URL ({}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
                redact_url_secret(url, message)
            ))
        })?;
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        pg.connect_timeout(timeout);
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
        })
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

    // ---- certificates (the `Store` impl delegates here) ----

    async fn load_cert(&self, name: &Domain) -> Result<Option<StoredCert>, SharedError> {
        const OP: &str = "loading a certificate";
        self.bounded(OP, async {
            let Some(row) = self
                .query_opt(
                    OP,
                    "SELECT bundle, key_nonce, meta::text FROM tenant_edge_certificates WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?
            else {
                return Ok(None);
            };
            let bundle: Vec<u8> = self.column(OP, &row, 0)?;
            let nonce: Option<Vec<u8>> = self.column(OP, &row, 1)?;
            let meta: Option<String> = self.column(OP, &row, 2)?;
            let bundle = self.decrypt("certificate", name.as_str(), bundle, nonce)?;
            // Informational: an unreadable meta never hides a certificate.
            let meta = meta.and_then(|m| match serde_json::from_str::<CertMeta>(&m) {
                Ok(meta) => Some(meta),
                Err(e) => {
                    log::warn!("the certificate metadata for {name} in PostgreSQL does not parse ({e}); ignored");
                    None
                }
            });
            Ok(Some(StoredCert { bundle, meta }))
        })
        .await
    }

    async fn save_cert(&self, name: &Domain, cert: &StoredCert) -> Result<(), SharedError> {
        const OP: &str = "saving a certificate";
        self.bounded(OP, async {
            let (bundle, nonce) = self.encrypt("certificate", name.as_str(), &cert.bundle)?;
            let meta = cert
                .meta
                .as_ref()
                .and_then(|m| serde_json::to_string(m).ok());
            // One statement replaces key, chain and meta together: a reader sees old or new.
            self.execute(
                OP,
                "INSERT INTO tenant_edge_certificates (name, bundle, key_nonce, meta, updated_at)
                 VALUES ($1, $2, $3, $4::text::jsonb, now())
                 ON CONFLICT (name) DO UPDATE
                     SET bundle = EXCLUDED.bundle, key_nonce = EXCLUDED.key_nonce,
                         meta = EXCLUDED.meta, updated_at = EXCLUDED.updated_at",
                &[&name.as_str(), &bundle, &nonce, &meta],
            )
            .await
            .map(drop)
        })
        .await
    }

    async fn remove_cert(&self, name: &Domain) -> Result<bool, SharedError> {
        const OP: &str = "removing a certificate";
        self.bounded(OP, async {
            let n = self
                .execute(
                    OP,
                    "DELETE FROM tenant_edge_certificates WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_certs(&self) -> Result<Vec<Domain>, SharedError> {
        const OP: &str = "listing certificates";
        self.bounded(OP, async {
            let rows = self
                .query(
                    OP,
                    "SELECT name FROM tenant_edge_certificates ORDER BY name",
                    &[],
                )
                .await?;
            let mut names = Vec::with_capacity(rows.len());
            for row in &rows {
                let raw: String = self.column(OP, row, 0)?;
                match Domain::parse(&raw) {
                    Ok(name) => names.push(name),
                    Err(e) => log::warn!(
                        "tenant_edge_certificates has a row for {raw:?}, which is not a usable name ({e}); skipped"
                    ),
                }
            }
            names.sort();
            names.dedup();
            Ok(names)
        })
        .await
    }

    // ---- challenges ----

    async fn put_challenge(
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
        .await
        .map(drop)
    }

    async fn challenge(
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

    async fn delete_challenge(
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

    fn account_from_row(
        &self,
        op: &'static str,
        directory: &str,
        row: &Row,
    ) -> Result<Vec<u8>, SharedError> {
        let value: Vec<u8> = self.column(op, row, 0)?;
        let nonce: Option<Vec<u8>> = self.column(op, row, 1)?;
        self.decrypt("ACME account", directory, value, nonce)
    }

    // ---- encryption ----

    /// `(value, nonce)` to store: the ciphertext and tag with a fresh nonce when a key is set,
    /// else the plaintext and no nonce.
    fn encrypt(
        &self,
        what: &'static str,
        id: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), SharedError> {
        let Some(key) = &self.key else {
            return Ok((plaintext.to_vec(), None));
        };
        let failed = |e: openssl::error::ErrorStack| SharedError::Crypto {
            what,
            id: id.to_string(),
            message: e.to_string(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(failed)?;
        let mut tag = [0u8; TAG_LEN];
        let mut value = encrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            id.as_bytes(),
            plaintext,
            &mut tag,
        )
        .map_err(failed)?;
        value.extend_from_slice(&tag);
        Ok((value, Some(nonce.to_vec())))
    }

    fn decrypt(
        &self,
        what: &'static str,
        id: &str,
        value: Vec<u8>,
        nonce: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, SharedError> {
        let Some(nonce) = nonce else {
            if self.key.is_some() {
                log::debug!("the {what} for {id} in PostgreSQL is not encrypted yet; it will be on its next write");
            }
            return Ok(value);
        };
        let Some(key) = &self.key else {
            return Err(SharedError::KeyMissing {
                what,
                id: id.to_string(),
                key_env: self.key_env.clone(),
            });
        };
        if nonce.len() != NONCE_LEN || value.len() < TAG_LEN {
            return Err(SharedError::Corrupt {
                what,
                id: id.to_string(),
                message: format!(
                    "a {}-byte nonce and {} bytes of ciphertext (expected a {NONCE_LEN}-byte nonce and at least {TAG_LEN} bytes)",
                    nonce.len(),
                    value.len()
                ),
            });
        }
        let (ciphertext, tag) = value.split_at(value.len() - TAG_LEN);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            id.as_bytes(),
            ciphertext,
            tag,
        )
        .map_err(|_| SharedError::WrongKey {
            what,
            id: id.to_string(),
            key_env: self.key_env.clone(),
        })
    }

    // ---- the pool ----

    /// Run `op` within the timeout. Cancel-safe: a connection in use when the timeout fires is
    /// dropped with the future, never pooled again.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, SharedError>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(SharedError::Timeout {
                op,
                target: self.target.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, SharedError> {
        let (conn, _slot) = self.checkout(op).await?;
        let result = conn.client.query_opt(sql, params).await;
        self.finish(op, conn, result)
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, SharedError> {
        let (conn, _slot) = self.checkout(op).await?;
        let result = conn.client.query(sql, params).await;
        self.finish(op, conn, result)
    }

    async fn execute(
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
    async fn checkout(&self, op: &'static str) -> Result<(Conn, SemaphorePermit<'_>), SharedError> {
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
    fn finish<T>(
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

    async fn connect(&self, op: &'static str) -> Result<Conn, SharedError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
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
        // The server gives up on a statement when we do (e.g. a lock wait past the timeout).
        let ms = self.timeout.as_millis().clamp(1, i32::MAX as u128);
        client
            .batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(|e| self.query_error(op, &e, e.is_closed() || client.is_closed()))?;
        Ok(Conn {
            client,
            _task: task,
        })
    }

    fn column<'r, T: tokio_postgres::types::FromSql<'r>>(
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

    fn query_error(
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
    fn redact(&self, message: String) -> String {
        redact_password(self.password.as_deref(), message)
    }
}

/// Certificates in `tenant_edge_certificates`. Errors are `StoreError::Io` whose source is the
/// `SharedError` (see [`SharedError::in_store_error`]).
#[async_trait]
impl Store for SharedStore {
    async fn load(&self, name: &Domain) -> Result<Option<StoredCert>, StoreError> {
        self.load_cert(name)
            .await
            .map_err(|e| store_error("load", Some(name), e))
    }

    async fn save(&self, name: &Domain, cert: &StoredCert) -> Result<(), StoreError> {
        self.save_cert(name, cert)
            .await
            .map_err(|e| store_error("save", Some(name), e))
    }

    async fn remove(&self, name: &Domain) -> Result<bool, StoreError> {
        self.remove_cert(name)
            .await
            .map_err(|e| store_error("remove", Some(name), e))
    }

    async fn list(&self) -> Result<Vec<Domain>, StoreError> {
        self.list_certs()
            .await
            .map_err(|e| store_error("list", None, e))
    }
}

/// `StoreError` has no database variant: carry ours as the I/O error's source, with a
/// pseudo-path naming the table and row.
fn store_error(op: &'static str, name: Option<&Domain>, e: SharedError) -> StoreError {
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

/// A URL that does not parse has no parsed password to redact: hide whatever sits between
/// `user:` and `@` in case the parser quoted it.
fn redact_url_secret(url: &str, message: String) -> String {
    let secret = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match secret {
        Some(secret) => message.replace(secret, "***"),
        None => message,
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
    fn keys_parse_from_hex_or_base64() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key = parse_key(hex).unwrap();
        assert_eq!(key[1], 0x11);
        let b64 = openssl::base64::encode_block(&key);
        assert_eq!(parse_key(&b64).unwrap(), key);
        for bad in ["", "abcd", &hex[..62], "not base64 at all!"] {
            assert_eq!(parse_key(bad).unwrap_err().kind(), "misconfigured", "{bad}");
        }
    }

    #[test]
    fn encryption_roundtrips_and_binds_the_row() {
        let timeout = Duration::from_secs(1);
        let store = SharedStore::new("postgres://u@h/d", Some([7; 32]), timeout).unwrap();
        let (value, nonce) = store.encrypt("certificate", "a.test", b"secret").unwrap();
        assert_eq!(nonce.as_ref().map(Vec::len), Some(NONCE_LEN));
        assert!(!value.windows(6).any(|w| w == b"secret"));
        let back = store
            .decrypt("certificate", "a.test", value.clone(), nonce.clone())
            .unwrap();
        assert_eq!(back, b"secret");
        // The same bytes under another row's name do not decrypt.
        let err = store
            .decrypt("certificate", "b.test", value.clone(), nonce.clone())
            .unwrap_err();
        assert_eq!(err.kind(), "wrong_key");
        assert!(err.to_string().contains(KEY_ENV), "{err}");
        // No key: an encrypted row is an error, a plaintext row is read as is.
        let plain = SharedStore::new("postgres://u@h/d", None, timeout)
            .unwrap()
            .with_key_env("MY_KEY");
        let err = plain
            .decrypt("certificate", "a.test", value, nonce)
            .unwrap_err();
        assert_eq!(err.kind(), "key_missing");
        assert!(err.to_string().contains("MY_KEY"), "{err}");
        assert_eq!(
            store
                .decrypt("certificate", "a.test", b"pem".to_vec(), None)
                .unwrap(),
            b"pem"
        );
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
