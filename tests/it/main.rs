//! Integration tests: one binary (one link of Pingora, OpenSSL and tokio-postgres) with a
//! module per area. Every test starts real processes on loopback (ports picked at run time, a
//! data directory each) and talks to the real components: PostgreSQL (`DATABASE_URL`, else
//! 127.0.0.1:5432), Pebble, real TLS clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod access_log;
mod acme;
mod certs_cli;
mod cli;
mod connection_limits;
mod dashboards;
mod decision_sources;
mod deploy_files;
mod layout;
mod lifecycle;
mod multihost;
mod order_floods;
mod proxy;
mod proxy_protocol;
mod resilience;
mod session_tickets;
mod shared_store;
mod tenants;
mod timeouts;
mod tls_handshake;
mod tls_names;
