//! HTTP (what happens to a request once TLS is done, and on port 80).
//!
//! - `proxy`: Pingora's `ProxyHttp` for HTTPS requests: Host checks, the per-request allow-list
//!   re-check, upstream selection, `X-Forwarded-*` headers.
//! - `upstream`: pools of backends (kamal-proxy), load balancing, health checks, routes.
//! - `host`: the request's host, from `:authority` or `Host`.
//! - `plain`: port 80 (ACME HTTP-01 answers, everything else redirected to https).
//! - `metrics`: the `/metrics` listener.

pub mod host;
pub mod metrics;
pub mod plain;
pub mod proxy;
pub mod upstream;
