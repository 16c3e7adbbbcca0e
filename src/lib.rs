//! tenant-edge: the TLS front door of a multi-tenant SaaS. ARCHITECTURE.md tells the whole
//! story; this is the map. Folders are named after the question each answers, and after the
//! config section or CLI verb that drives it. Dependencies point one way, down this list:
//!
//! Leaves (import nothing above them):
//! - `util`: atomic files, time, token buckets, tasks, error chains.
//! - `domain`: parsing names (SNI, Host, config) into `Domain`, once.
//! - `metrics`: the Prometheus families and the `label_set!` closed label sets.
//! - `logging`: the logger and its rate limits.
//! - `pg`: the PostgreSQL pool and LISTEN, shared by `allow::database` and `shared`.
//! - `net`: address ranges and the PROXY protocol header.
//!
//! Features (own their settings types; never import `config`):
//! - `allow` (`allow:`): may a name be served? Platform patterns, database, ask URL, the
//!   decision cache, `explain`.
//! - `limits` (`limits:`): issuance rate, concurrency, backoff, the per-domain budget, the
//!   per-client buckets, connection caps.
//! - `certs` (`tls:`, `issuer:`, `renewal:`, `provisioning:`): which certificate a name gets,
//!   the stores, challenges, issuers (internal CA, ACME), maintenance.
//! - `shared` (`store.shared:`): the PostgreSQL tables several hosts share, implementing the
//!   traits `certs` declares.
//! - `tls`: before the handshake (PROXY protocol, admission, the gate), the handshake callbacks,
//!   session tickets.
//! - `http` (`upstreams:`, `timeouts:`, `forwarding:`): connections after the handshake, the
//!   `ProxyHttp`, upstream pools, port 80, `/metrics`.
//!
//! On top: `config` (the YAML file, every error at once) builds the features' settings;
//! `server` assembles a Pingora `Server`; `cli` holds one file per command, and `main.rs` is a
//! table of contents.

pub mod allow;
pub mod certs;
pub mod cli;
pub mod config;
pub mod domain;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod net;
pub(crate) mod pg;
pub mod server;
pub mod shared;
pub mod tls;
pub(crate) mod util;
