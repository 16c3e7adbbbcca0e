//! The allow-list (config section `allow:`): may the edge serve, and issue for, a name?
//!
//! - `pattern`: platform domains from the config (`example.com`, `*.example.com`).
//! - `decision`: the answers (`Decision`, `Source`), the `DecisionSource` contract, the
//!   metric labels of decisions.
//! - `list`: `AllowList`, the decision cache in front of the sources (coalescing,
//!   stale-if-error, fail closed).
//! - `database`: PostgreSQL, "does an active company own this name?" (the default query and the
//!   schema it expects are in ARCHITECTURE.md).
//! - `ask`: a Caddy-compatible ask URL.
//! - `circuit`: stop asking a source that keeps failing until a background probe answers.
//! - `remembered`: "allowed before", persisted, for stale-if-error across restarts.
//! - `explain`: why a name is allowed or refused, in words (`tenant-edge allow`, `certs`).
//!
//! Nothing here touches certificates, sockets or OpenSSL.

pub mod ask;
pub mod circuit;
pub mod database;
pub mod decision;
pub mod explain;
pub mod list;
pub mod pattern;
pub mod remembered;

use crate::allow::ask::AskSettings;
use crate::allow::database::DatabaseSettings;
use crate::allow::list::DecisionSettings;
use crate::allow::pattern::NamePattern;

/// Everything `allow:` configures.
#[derive(Debug, Clone)]
pub struct AllowSettings {
    pub platform_domains: Vec<NamePattern>,
    pub database: Option<DatabaseSettings>,
    pub ask: Option<AskSettings>,
    /// How long answers of the dynamic sources are kept.
    pub cache: DecisionSettings,
}
