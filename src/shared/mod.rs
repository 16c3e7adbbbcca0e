//! The shared store (config `store.shared`): what several hosts of one edge share through
//! PostgreSQL: certificates (a `Store`), ACME accounts, challenge responses and issuance locks,
//! and the NOTIFY that tells the other hosts a certificate changed. Each concern is one file
//! and implements the trait `certs` declares for it, as certmagic's Storage and Locker do:
//! `certificates` (`certs::store::Store`), `accounts` (`certs::issuer::acme::account::
//! AccountStore`), `challenges` (`certs::challenge::SharedChallenges`), `locks`
//! (`certs::lock::IssuanceLocks`), `orders` (`limits::orders::OrderLog`), `tickets`
//! (`tls::tickets::TicketKeyStore`); `store` holds the connection pool and errors, `migrate`
//! the schema, `crypto` the at-rest encryption, `feed` the LISTEN for certificates issued
//! elsewhere.
//!
//! Owns the `tenant_edge_*` tables (created and upgraded by `SharedStore::migrate`), a small
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
//! With a key (32 bytes, from `TENANT_EDGE_STORE_KEY` by default; see `crypto::parse_key`), certificate bundles
//! (they contain the private key) and ACME account credentials are encrypted with AES-256-GCM:
//! a random 12-byte nonce per write in `key_nonce`, the ciphertext followed by the 16-byte tag in
//! the value column, and the row's key (name or directory URL) as associated data so a value
//! copied to another row does not decrypt. A row that does not decrypt (another key, or altered)
//! is an error naming the key's environment variable, never `Ok(None)`: treating it as absent
//! would make the host order a new certificate for every name. A plaintext row (written before a
//! key was configured) is still read, and encrypted on its next write. Without a key, values are
//! stored as they are. TLS-ALPN-01 challenge certificates are not encrypted: their keys are
//! throwaway and the rows expire within minutes.

pub mod accounts;
pub mod certificates;
pub mod challenges;
pub mod crypto;
pub mod feed;
pub mod locks;
pub mod migrate;
pub mod orders;
pub mod remembered;
pub mod store;
pub mod tickets;

use std::time::Duration;

/// `store.shared`: several hosts sharing certificates, accounts, challenges and issuance locks
/// through PostgreSQL.
#[derive(Clone)]
pub struct SharedSettings {
    pub url: String,
    /// AES-256 key for private keys at rest, and the environment variable it was read from
    /// (`encryption_key_env`), named in every key error.
    pub encryption_key: Option<([u8; 32], String)>,
    pub migrate_on_start: bool,
    /// How long an issuance lock outlives a holder that died.
    pub lock_lease: Duration,
    pub timeout: Duration,
    /// How often the LISTEN connection is asked a round trip (a silently dead one is replaced).
    pub notify_probe: Duration,
    /// PEM roots for TLS to PostgreSQL (`sslmode` in the URL); `None`: the system's.
    pub tls_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSettings")
            .field("encrypted", &self.encryption_key.is_some())
            .field("migrate_on_start", &self.migrate_on_start)
            .field("lock_lease", &self.lock_lease)
            .finish_non_exhaustive()
    }
}
