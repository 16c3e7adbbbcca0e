//! Abuse limits (config section `limits:`): what bounds new orders and never-seen names.
//!
//! - `issuance`: may a new order start now? Rate, concurrency, per-name backoff, the
//!   per-registered-domain budget.
//! - `budget`: the budget's key (registered domain), window and file.
//! - `clients`: the per-client buckets for never-seen names (applied before TLS by
//!   `tls::gate`).
//! - `connections`: open connections in total and per client, and what one connection may do
//!   (HTTP/2 streams, requests, client resets).
//!
//! Issuance limits apply to new orders only, never to serving or loading stored certificates.

pub mod budget;
pub mod clients;
pub mod connections;
pub mod issuance;
pub mod orders;
