//! HTTP (what happens to a request once TLS is done, and on port 80).
//!
//! - `conn`: one client connection after its handshake (port 80's PROXY protocol and
//!   admission, the HTTP/2 preface timeout, killed connections).
//! - `app`: the HTTP application around the proxy (request-head deadlines, HTTP/2 stream
//!   limits and body timeouts).
//! - `proxy`: Pingora's `ProxyHttp` for HTTPS requests: Host checks, the per-request allow-list
//!   re-check, upstream selection.
//! - `request_id`: the `X-Request-Id` each request carries upstream and into the access log.
//! - `forwarded` (`forwarding:`): the forwarding headers the app can trust.
//! - `timeouts` (`timeouts:`): how long a client may take.
//! - `deadline`: separate upstream deadlines for the response head and the body gaps.
//! - `upstream`: pools of backends (kamal-proxy), load balancing, health checks, routes.
//! - `host`: the request's host, from `:authority` or `Host`.
//! - `idle`: the idle timeout between HTTP/1.1 requests, one deadline queue per application.
//! - `plain`: port 80 (ACME HTTP-01 answers, everything else redirected to https).
//! - `metrics`: the `/metrics` listener.

pub mod app;
pub mod conn;
pub mod deadline;
pub mod forwarded;
pub mod host;
pub mod idle;
pub mod metrics;
pub mod plain;
pub mod proxy;
pub mod request_id;
pub mod timeouts;
pub mod upstream;
