//! What the allow-list answers and the contract of its sources.

use async_trait::async_trait;

use crate::domain::Domain;
use crate::metrics::label_set;

label_set! {
    /// Which source answered.
    pub enum Source {
        Platform => "platform",
        Database => "database",
        Ask => "ask",
    }
}

label_set! {
    /// Who gave the answer counted in `tenant_edge_decisions_total{source}`: a source, or the
    /// decision cache.
    pub enum DecidedBy {
        Platform => "platform",
        Database => "database",
        Ask => "ask",
        Cache => "cache",
    }
}

impl From<Source> for DecidedBy {
    fn from(source: Source) -> DecidedBy {
        match source {
            Source::Platform => DecidedBy::Platform,
            Source::Database => DecidedBy::Database,
            Source::Ask => DecidedBy::Ask,
        }
    }
}

label_set! {
    /// `tenant_edge_decisions_total{result}`: `stale_allowed` is a source that failed while a
    /// previous yes was used; `fail_closed` a source that failed for a name never allowed.
    pub enum DecisionResult {
        Allowed => "allowed",
        Denied => "denied",
        Error => "error",
        StaleAllowed => "stale_allowed",
        FailClosed => "fail_closed",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(Source),
    /// No source allows the name (or none could answer and the name was never allowed).
    Denied,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed(_))
    }

    pub(crate) fn result(self) -> DecisionResult {
        match self {
            Decision::Allowed(_) => DecisionResult::Allowed,
            Decision::Denied => DecisionResult::Denied,
        }
    }
}

/// Why a source (or a probe of one) has no answer. Each message says what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecisionError {
    /// The source could not be reached or did not answer in time; retrying later may work.
    #[error("{what} is unavailable: {message}")]
    Unavailable { what: &'static str, message: String },
    /// The source answered, but in a way that shows its configuration is wrong (a redirecting
    /// ask URL, a query that does not prepare). Retrying will not help; the config must change.
    #[error("{what} is misconfigured: {message}")]
    Misconfigured { what: &'static str, message: String },
}

impl DecisionError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecisionError::Unavailable { .. } => "unavailable",
            DecisionError::Misconfigured { .. } => "misconfigured",
        }
    }
}

/// A dynamic allow-list source (database, ask URL).
///
/// Contract:
/// - `allows` is called at most once per name per cache lifetime by `AllowList` (which caches
///   and coalesces); a source does not cache on its own.
/// - `Ok(true)`: this source allows `name`. `Ok(false)`: it does not (the next source is asked;
///   when none says yes the no is cached for `denied_ttl`).
/// - `Err`: it could not answer (unreachable, timed out, misconfigured). Nothing is cached; the
///   name is allowed only if it was allowed before (stale-if-error), else refused.
/// - It returns within its own bounded timeout: a handshake waits for it.
/// - `name` is already normalized (lowercase ASCII, no trailing dot).
#[async_trait]
pub trait DecisionSource: Send + Sync {
    fn source(&self) -> Source;
    async fn allows(&self, name: &Domain) -> Result<bool, DecisionError>;
}

/// A source that can list every name it allows (pre-provisioning, `certs warm`).
#[async_trait]
pub trait NameList: Send + Sync {
    /// Every allowed name, sorted, without duplicates. Bounded by the source's own timeout.
    async fn all_names(&self) -> Result<Vec<Domain>, DecisionError>;
}
