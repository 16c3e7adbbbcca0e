//! tenant-edge: the TLS front door of a multi-tenant SaaS.
//!
//! Where things happen (see README "Request flow" and DESIGN.md):
//! - `domain`: parsing names (SNI, Host, config) into `Domain`, once.
//! - `config`: the YAML file, typed and validated with every error at once.
//! - `decision`: the allow-list (platform domains, then dynamic sources).
//! - `store`: where certificates persist (disk; atomic writes).
//! - `issuer`: where missing certificates come from (the internal CA; ACME next).
//! - `certificate`: a parsed, checked chain + key.
//! - `manager`: the lookup path, memory cache and one-issuance-per-name coordination.
//! - `tls`: Pingora's certificate callback (the only OpenSSL handshake code).
//! - `proxy`: Pingora's `ProxyHttp` (Host checks, upstream selection, X-Forwarded-*).
//! - `upstream`: pools, load balancing and health checks.
//! - `plain_http`: port 80 (ACME HTTP-01, redirects) and `/metrics`.
//! - `metrics`, `logging`, `check`, `server` (assembly).

pub mod acme;
pub mod ask;
pub mod certificate;
pub mod certs_cli;
pub mod challenge;
pub mod check;
pub mod client_gate;
pub mod config;
pub mod database;
pub mod decision;
pub mod domain;
pub mod issuer;
pub mod limits;
pub mod logging;
pub mod maintain;
pub mod manager;
pub mod metrics;
pub mod notify;
mod pgpool;
pub mod plain_http;
pub mod proxy;
pub mod server;
pub mod shared;
pub mod store;
pub mod tls;
pub mod upstream;
