//! Certificates: which certificate a name gets, where it is kept, where a new one comes from,
//! and when it is renewed.
//!
//! - `manager`: `CertManager`, the one place that answers "which certificate for this name?"
//!   (decision first, then memory, then the store, then one issuance per name).
//! - `certificate`: a parsed, checked chain and key.
//! - `store` (the contract), `disk` (this host's files), `layered` (a shared store in front of
//!   the disk copy).
//! - `lock`: the cross-host issuance lock the manager takes around an order.
//! - `challenge`: pending ACME challenge responses.
//! - `issuer`: the `Issuer` seam, with `internal` (a local CA) and `acme`.
//! - `maintain`: the background service for renewal, pre-provisioning and change feeds.
//!
//! The traits here (`Store`, `IssuanceLocks`, `SharedChallenges`, `AccountStore`) are what
//! several hosts share; `shared` implements them with PostgreSQL. Nothing in `certs` names
//! PostgreSQL.

pub mod certificate;
pub mod challenge;
pub mod disk;
pub mod issuer;
pub mod layered;
pub mod lock;
pub mod maintain;
pub mod manager;
pub mod store;
