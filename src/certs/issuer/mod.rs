//! Issuers: where a missing certificate comes from.
//!
//! `Issuer` is the seam between the manager (which decides *whether* and *when* to issue, and
//! coalesces concurrent requests) and a CA (which only signs). An issuer is called only for a
//! name that passed the allow-list, at most once at a time per name, and never on the TLS
//! thread's critical path without a bound: the manager runs it in its own task.
//!
//! - `internal`: the embedded CA under `<data_dir>/ca/` (the default for development).
//! - `acme`: any ACME CA (Let's Encrypt by default), through instant-acme.

pub mod acme;
pub mod internal;

use async_trait::async_trait;

use crate::certs::certificate::CertifiedKey;
use crate::domain::Domain;
use crate::metrics::label_set;

/// The key type of issued certificates (`tls.key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
}

impl KeyType {
    /// The rcgen signature algorithm for keys of this type.
    pub fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

label_set! {
    /// `issuances_total{issuer}` and the `issuer` of `meta.json`.
    pub enum IssuerKind {
        Internal => "internal",
        Acme => "acme",
    }
}

label_set! {
    /// `issuances_total{outcome}`.
    pub enum IssueOutcome {
        Success => "success",
        Failure => "failure",
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error("key generation failed: {0}")]
    Key(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the CA refused the order: {0}")]
    Refused(String),
    #[error("the CA is unreachable: {0}")]
    Unreachable(String),
}

impl IssueError {
    pub fn kind(&self) -> &'static str {
        match self {
            IssueError::Key(_) => "key",
            IssueError::Sign(_) => "sign",
            IssueError::Refused(_) => "refused",
            IssueError::Unreachable(_) => "unreachable",
        }
    }
}

/// A freshly issued certificate: the bundle (key + leaf + intermediates, PEM).
#[derive(Debug, Clone)]
pub struct Issued {
    pub bundle: Vec<u8>,
}

/// Something that can produce a certificate for an allowed name.
#[async_trait]
pub trait Issuer: Send + Sync {
    /// Fixed label for metrics and `meta.json` (`internal`, `acme`).
    fn kind(&self) -> IssuerKind;
    /// Obtain a new certificate whose SAN is exactly `name`. Called only after the allow-list
    /// said yes; may take seconds (ACME) and is never retried by the issuer itself.
    async fn issue(&self, name: &Domain) -> Result<Issued, IssueError>;

    /// When the CA suggests renewing `old`, as Unix seconds `(start, end)` (ACME Renewal
    /// Information, RFC 9773). `None`: the CA offers no such window; the manager then renews
    /// when `renewal.fraction` of the lifetime is left. The default offers none.
    async fn renewal_window(&self, _old: &CertifiedKey) -> Option<(i64, i64)> {
        None
    }

    /// A new certificate for `name` replacing `old` (an ACME CA is told which certificate is
    /// replaced, which exempts the order from some rate limits). The default is `issue`.
    async fn renew(&self, name: &Domain, _old: &CertifiedKey) -> Result<Issued, IssueError> {
        self.issue(name).await
    }
}
