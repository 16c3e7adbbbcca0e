//! The PostgreSQL allow-list source: "does an active company own this name?"
//!
//! Owns a small pool of tokio-postgres connections (TLS as the URL's `sslmode` says, verified
//! against `allow.database.tls_root` or the system's roots; TCP keepalive and a server-side
//! `statement_timeout`), the prepared allow-list query, and the timeout around each lookup. The default query and the schema it expects are in ARCHITECTURE.md ("The schema the
//! default query expects"); `$1` is the normalized name and `dns_names citext[]` makes the
//! match case-insensitive.
//!
//! Must not: connect before the first lookup (Pingora forks and starts its runtimes after the
//! server is built), cache answers (`allow::list::AllowList` does), or put the database password
//! in any message.
//!
//! Failure handling: a lookup (waiting for a pool slot, connecting, preparing, querying) is
//! bounded by `allow.database.timeout`. A connection that failed or timed out is dropped and the
//! next lookup opens a new one, so the edge reconnects on its own when the database returns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::allow::circuit::CircuitSettings;
use crate::allow::decision::{DecisionError, DecisionSource, NameList, Source};
use crate::domain::Domain;
use crate::metrics::{label_set, Metrics};
use crate::pg::pool::{Pool, PoolClosed, Pooled};
use crate::pg::{
    connect_settings, describe_target, harden, is_config_error, password_of, redact_password,
    redact_url,
};
use crate::util::error::chain;
use crate::util::task::AbortOnDrop;

/// The default allow-list query; `$1` is the normalized name.
pub const DEFAULT_ALLOW_QUERY: &str =
    "SELECT 1 FROM companies WHERE active AND dns_names @> ARRAY[$1]::citext[] LIMIT 1";
/// Every allowed name, for pre-provisioning and `certs warm` (one text column).
pub const DEFAULT_LIST_QUERY: &str =
    "SELECT DISTINCT lower(unnest(dns_names)::text) FROM companies WHERE active";
/// The LISTEN channel `deploy/postgres/notify.sql` notifies.
pub const DEFAULT_NOTIFY_CHANNEL: &str = "tenant_edge_domains";

/// `allow.database`.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
    pub query: String,
    /// Every name the database allows (pre-provisioning, `certs warm`); no parameters.
    pub list_query: String,
    /// LISTEN channel for instant tenant changes (`deploy/postgres/notify.sql`).
    pub notify_channel: String,
    /// How often the whole allow-list is read for pre-provisioning (a safety net for NOTIFY).
    pub scan_interval: Duration,
    /// How often the LISTEN connection is asked a round trip (a silently dead one is replaced).
    pub notify_probe: Duration,
    pub timeout: Duration,
    pub pool_size: usize,
    /// PEM roots that sign the server's certificate when the URL says `sslmode=require` (or
    /// `prefer` and the server offers TLS); `None`: the system's roots.
    pub tls_root: Option<std::path::PathBuf>,
    /// When to stop asking a database that keeps failing, and how to find out it is back.
    pub circuit: CircuitSettings,
}

label_set! {
    /// `tenant_edge_database_queries_total{outcome}`.
    pub enum QueryOutcome {
        Ok => "ok",
        Error => "error",
        Timeout => "timeout",
    }
}

const WHAT: &str = "the database allow-list";

/// A name no company can own (RFC 2606 `.invalid`), used by `probe`.
const PROBE_NAME: &str = "probe.tenant-edge.invalid";

/// One pooled connection: the client, its prepared query, and the task driving the socket.
struct Conn {
    client: Client,
    statement: Statement,
    _task: AbortOnDrop,
}

impl Pooled for Conn {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The two queries the allow-list runs.
#[derive(Clone, Copy)]
enum Query<'a> {
    /// `allow.database.query` for one name (prepared on each connection).
    Lookup(&'a str),
    /// `allow.database.list_query`: every allowed name.
    List,
}

impl Query<'_> {
    /// The config key of the query, for messages.
    fn key(self) -> &'static str {
        match self {
            Query::Lookup(_) => "allow.database.query",
            Query::List => "allow.database.list_query",
        }
    }
}

/// Why a lookup failed, before it becomes a `DecisionError`.
enum Failure {
    /// The server could not be reached or the connection broke: retrying later may work.
    Unavailable(String),
    /// The server answered with an error about the query itself: the config must change.
    Query(String),
}

pub struct PgAllowList {
    config: tokio_postgres::Config,
    /// Host, port, user and database for messages (never the password).
    target: String,
    password: Option<String>,
    query: String,
    /// Every allowed name (pre-provisioning, `certs warm`).
    list_query: String,
    timeout: Duration,
    tls: MakeTlsConnector,
    /// At most `pool_size` lookups (and so connections) at a time; idle connections, each
    /// with the query prepared.
    pool: Pool<Conn>,
    metrics: Arc<Metrics>,
}

impl PgAllowList {
    /// Parse the URL and set up an empty pool. Does not connect.
    pub fn new(
        config: &DatabaseSettings,
        metrics: Arc<Metrics>,
    ) -> Result<PgAllowList, DecisionError> {
        let (mut pg, tls) =
            connect_settings(&config.url, config.tls_root.as_deref()).map_err(|message| {
                DecisionError::Misconfigured {
                    what: WHAT,
                    message: redact_url(&config.url, format!("allow.database.url: {message}")),
                }
            })?;
        harden(&mut pg, config.timeout);
        let password = password_of(&pg);
        Ok(PgAllowList {
            tls,
            target: describe_target(&pg),
            config: pg,
            password,
            query: config.query.clone(),
            list_query: config.list_query.clone(),
            timeout: config.timeout,
            pool: Pool::new(config.pool_size),
            metrics,
        })
    }

    /// Connect and run the query once with a name no company owns (for `tenant-edge check`).
    /// Uses the pool like a lookup does, but is not counted in the metrics.
    pub async fn probe(&self) -> Result<(), DecisionError> {
        match tokio::time::timeout(self.timeout, self.lookup(PROBE_NAME)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(failure)) => Err(self.error(failure)),
            Err(_) => Err(self.timeout_error()),
        }
    }

    /// Every name the database allows: `allow.database.list_query` (no parameters, one
    /// text-like column), through the same pool and bounded by the same
    /// `allow.database.timeout`. Rows that are not valid DNS names are skipped with a warning;
    /// the result is sorted and without duplicates. Not counted in the lookup metrics.
    pub async fn all_names(&self) -> Result<Vec<Domain>, DecisionError> {
        let rows = match tokio::time::timeout(self.timeout, self.list()).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(failure)) => return Err(self.error(failure)),
            Err(_) => return Err(self.timeout_error()),
        };
        let mut names = Vec::with_capacity(rows.len());
        for raw in rows.into_iter().flatten() {
            match Domain::parse(&raw) {
                Ok(name) => names.push(name),
                Err(e) => log::warn!(
                    "allow.database.list_query returned {raw:?}, which is not a usable name ({e}); skipped"
                ),
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Run the list query on a pooled (or new) connection; the first column of each row.
    async fn list(&self) -> Result<Vec<Option<String>>, Failure> {
        let rows = self.run(Query::List).await?;
        rows.iter()
            .map(|row| {
                row.try_get::<_, Option<String>>(0).map_err(|e| {
                    Failure::Query(format!(
                        "allow.database.list_query must return one text column of names: {}",
                        self.redact(chain(&e))
                    ))
                })
            })
            .collect()
    }

    /// One bounded lookup, counted by outcome.
    async fn query(&self, name: &str) -> Result<bool, DecisionError> {
        let (outcome, result) = match tokio::time::timeout(self.timeout, self.lookup(name)).await {
            Ok(Ok(found)) => (QueryOutcome::Ok, Ok(found)),
            Ok(Err(failure)) => (QueryOutcome::Error, Err(self.error(failure))),
            Err(_) => {
                // The connection that timed out is gone with the future; the idle ones likely
                // went the same way (a path that drops traffic): do not pay a timeout for each.
                self.pool.clear();
                (QueryOutcome::Timeout, Err(self.timeout_error()))
            }
        };
        self.metrics
            .database_queries
            .with_label_values(&[outcome.label()])
            .inc();
        result
    }

    /// Run the prepared query: is `name` one of an active company's names? An
    /// internationalized name is asked in both forms (A-label first, then the Unicode form),
    /// so a tenant domain stored either way matches.
    async fn lookup(&self, name: &str) -> Result<bool, Failure> {
        let rows = self.run(Query::Lookup(name)).await?;
        if !rows.is_empty() {
            return Ok(true);
        }
        match unicode_form(name) {
            Some(unicode) => Ok(!self.run(Query::Lookup(&unicode)).await?.is_empty()),
            None => Ok(false),
        }
    }

    /// Take a slot, take (or open) a connection, run `query` on it. Cancel-safe: a connection
    /// in use when the caller's timeout fires is dropped with the future, never pooled again.
    async fn run(&self, query: Query<'_>) -> Result<Vec<Row>, Failure> {
        let _slot =
            self.pool.slot().await.map_err(|PoolClosed| {
                Failure::Unavailable("the connection pool is closed".into())
            })?;
        let mut pooled = self.pool.take();
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            let result = match query {
                Query::Lookup(name) => conn.client.query(&conn.statement, &[&name]).await,
                Query::List => conn.client.query(self.list_query.as_str(), &[]).await,
            };
            match result {
                Ok(value) => {
                    self.pool.put_back(conn);
                    return Ok(value);
                }
                Err(e) => {
                    let broken = e.is_closed() || conn.client.is_closed();
                    if broken && reused {
                        // The server closed this idle connection (restart, idle timeout):
                        // one new connection is worth a try before reporting an outage.
                        continue;
                    }
                    if broken {
                        return Err(Failure::Unavailable(format!(
                            "the connection to PostgreSQL at {} broke: {}",
                            self.target,
                            self.redact(chain(&e))
                        )));
                    }
                    // The connection is fine; the query (or the server) is not.
                    self.pool.put_back(conn);
                    let message = format!(
                        "{} failed on {}: {}",
                        query.key(),
                        self.target,
                        self.redact(chain(&e))
                    );
                    // A server error about the query itself (or a client-side type error,
                    // which has no SQLSTATE) is for the operator; anything else is an outage.
                    return Err(if e.as_db_error().is_none() || is_config_error(&e) {
                        Failure::Query(message)
                    } else {
                        Failure::Unavailable(message)
                    });
                }
            }
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| {
            let message = format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.target,
                self.redact(chain(&e))
            );
            if is_config_error(&e) {
                // Authentication or a missing database: the server is up, the URL is wrong.
                Failure::Query(format!("{message}; check allow.database.url"))
            } else {
                Failure::Unavailable(format!(
                    "{message}; is the server running and allow.database.url right?"
                ))
            }
        })?;
        let target = self.target.clone();
        let task = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::warn!(
                    "the allow-list connection to PostgreSQL at {target} ended: {}; the next lookup reconnects",
                    chain(&e)
                );
            }
        }));
        let statement = client.prepare(&self.query).await.map_err(|e| {
            let message = format!(
                "allow.database.query does not prepare on {}: {}",
                self.target,
                self.redact(chain(&e))
            );
            if is_config_error(&e) {
                Failure::Query(format!(
                    "{message}; the default expects companies(active boolean, dns_names citext[]) and the citext extension"
                ))
            } else {
                Failure::Unavailable(message)
            }
        })?;
        match statement.params() {
            [param] if <&str as ToSql>::accepts(param) => {}
            [param] => {
                return Err(Failure::Query(format!(
                    "allow.database.query uses $1 as {param}; $1 is the name and must be text-like (text, varchar, citext)"
                )))
            }
            params => {
                return Err(Failure::Query(format!(
                    "allow.database.query takes {} parameters; it must take exactly one ($1, the name)",
                    params.len()
                )))
            }
        }
        Ok(Conn {
            client,
            statement,
            _task: task,
        })
    }

    fn error(&self, failure: Failure) -> DecisionError {
        match failure {
            Failure::Unavailable(message) => DecisionError::Unavailable {
                what: WHAT,
                message,
            },
            Failure::Query(message) => DecisionError::Misconfigured {
                what: WHAT,
                message,
            },
        }
    }

    fn timeout_error(&self) -> DecisionError {
        DecisionError::Unavailable {
            what: WHAT,
            message: format!(
                "no answer from PostgreSQL at {} within {:?} (allow.database.timeout); the server is down, overloaded or unreachable",
                self.target, self.timeout
            ),
        }
    }

    /// Belt and braces: no message leaves this module with the password in it.
    fn redact(&self, message: String) -> String {
        redact_password(self.password.as_deref(), message)
    }
}

/// The Unicode form of an A-label name (`xn--bcher-kva.example` → `bücher.example`), when it
/// has one that differs.
fn unicode_form(name: &str) -> Option<String> {
    if !name.starts_with("xn--") && !name.contains(".xn--") {
        return None;
    }
    let (unicode, result) = idna::domain_to_unicode(name);
    (result.is_ok() && unicode != name).then_some(unicode)
}

#[async_trait]
impl DecisionSource for PgAllowList {
    fn source(&self) -> Source {
        Source::Database
    }

    async fn allows(&self, name: &Domain) -> Result<bool, DecisionError> {
        self.query(name.as_str()).await
    }
}

#[async_trait]
impl NameList for PgAllowList {
    async fn all_names(&self) -> Result<Vec<Domain>, DecisionError> {
        PgAllowList::all_names(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> DatabaseSettings {
        DatabaseSettings {
            url: url.into(),
            query: DEFAULT_ALLOW_QUERY.into(),
            list_query: DEFAULT_LIST_QUERY.into(),
            notify_channel: DEFAULT_NOTIFY_CHANNEL.into(),
            scan_interval: Duration::from_secs(600),
            notify_probe: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
            pool_size: 2,
            tls_root: None,
            circuit: CircuitSettings::default(),
        }
    }

    #[test]
    fn internationalized_names_are_also_asked_in_unicode() {
        assert_eq!(
            unicode_form("xn--bcher-kva.tenant.test").as_deref(),
            Some("bücher.tenant.test")
        );
        assert_eq!(
            unicode_form("shop.xn--mnchen-3ya.example").as_deref(),
            Some("shop.münchen.example")
        );
        assert_eq!(unicode_form("shop.example"), None);
    }

    #[test]
    fn target_never_shows_the_password() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let pg = PgAllowList::new(
            &config("postgres://app:s3cret@db.internal:6543/saas"),
            metrics,
        )
        .unwrap();
        assert_eq!(pg.target, "db.internal:6543 (user app, database saas)");
        assert_eq!(
            pg.redact("auth failed for s3cret".into()),
            "auth failed for ***"
        );
    }

    #[test]
    fn a_bad_url_is_a_configuration_error() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let err = PgAllowList::new(&config("postgres://app:pw@host:notaport/db"), metrics)
            .err()
            .unwrap();
        assert_eq!(err.kind(), "misconfigured");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
