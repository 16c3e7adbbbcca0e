//! Abuse limits (config section `limits:`): what bounds new orders and never-seen names.
//!
//! - `issuance`: may a new order start now? Rate, concurrency, per-name backoff, the
//!   per-registered-domain budget.
//! - `budget`: the budget's key (registered domain), window and file.
//! - `clients`: the per-client buckets for never-seen names (applied before TLS by
//!   `tls::gate`).
//!
//! Limits apply to new orders only, never to serving or loading stored certificates.

pub mod budget;
pub mod clients;
pub mod issuance;
