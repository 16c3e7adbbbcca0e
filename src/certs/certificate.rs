//! `CertifiedKey`: a certificate chain and its private key, parsed once and checked, ready to
//! hand to OpenSSL in the handshake without any further parsing.
//!
//! The stored form is one PEM *bundle*: the private key, then the leaf, then the intermediates
//! (the layout HAProxy's `crt` files use). Keeping key and chain in one file means a reader
//! can never pair a new certificate with an old key.
//!
//! This module uses OpenSSL (the same `openssl` crate Pingora links) only as a parser; it knows nothing
//! of handshakes or policy.

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use crate::domain::Domain;
use crate::metrics::label_set;

/// Why a bundle is unusable. Variants are stable labels (`kind()`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BundleError {
    #[error("no private key in the bundle: {0}")]
    NoKey(String),
    #[error("no certificate in the bundle")]
    NoCertificate,
    #[error("the PEM data does not parse: {0}")]
    Unparsable(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate does not name {0}")]
    NameMismatch(Domain),
}

label_set! {
    /// `tenant_edge_store_corrupt_files_total{reason}`: why a stored bundle was ignored.
    pub enum BundleErrorKind {
        NoKey => "no_key",
        NoCertificate => "no_certificate",
        Unparsable => "unparsable",
        KeyMismatch => "key_mismatch",
        NameMismatch => "name_mismatch",
    }
}

impl BundleError {
    pub fn kind(&self) -> &'static str {
        let kind = match self {
            BundleError::NoKey(_) => BundleErrorKind::NoKey,
            BundleError::NoCertificate => BundleErrorKind::NoCertificate,
            BundleError::Unparsable(_) => BundleErrorKind::Unparsable,
            BundleError::KeyMismatch => BundleErrorKind::KeyMismatch,
            BundleError::NameMismatch(_) => BundleErrorKind::NameMismatch,
        };
        kind.label()
    }
}

/// A parsed, consistent certificate chain with its key.
pub struct CertifiedKey {
    /// Leaf first.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// DNS names in the leaf's subjectAltName.
    pub names: Vec<String>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

impl CertifiedKey {
    /// Parse a bundle (key + leaf + intermediates) and check that the key matches the leaf and,
    /// when `name` is given, that the leaf covers it.
    pub fn from_bundle(pem: &[u8], name: Option<&Domain>) -> Result<CertifiedKey, BundleError> {
        let chain =
            X509::stack_from_pem(pem).map_err(|e| BundleError::Unparsable(e.to_string()))?;
        let leaf = chain.first().ok_or(BundleError::NoCertificate)?;
        let key = PKey::private_key_from_pem(pem).map_err(|e| BundleError::NoKey(e.to_string()))?;
        let public = leaf
            .public_key()
            .map_err(|e| BundleError::Unparsable(e.to_string()))?;
        if !public.public_eq(&key) {
            return Err(BundleError::KeyMismatch);
        }
        let names: Vec<String> = leaf
            .subject_alt_names()
            .map(|sans| {
                sans.iter()
                    .filter_map(|g| g.dnsname().map(|n| n.to_ascii_lowercase()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(name) = name {
            if !covers(&names, name) {
                return Err(BundleError::NameMismatch(name.clone()));
            }
        }
        let not_before = asn1_to_unix(leaf.not_before())?;
        let not_after = asn1_to_unix(leaf.not_after())?;
        Ok(CertifiedKey {
            chain,
            key,
            not_before,
            not_after,
            names,
        })
    }

    /// True while `now` is inside the validity window.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }

    pub fn leaf(&self) -> &X509 {
        // `from_bundle` refuses an empty chain, so the leaf always exists.
        &self.chain[0]
    }
}

/// Whether a SAN list covers `name` (exact, or a one-label wildcard).
fn covers(names: &[String], name: &Domain) -> bool {
    names.iter().any(|n| {
        n == name.as_str()
            || n.strip_prefix("*.").is_some_and(|suffix| {
                name.as_str()
                    .split_once('.')
                    .is_some_and(|(_, rest)| rest == suffix)
            })
    })
}

fn asn1_to_unix(t: &Asn1TimeRef) -> Result<i64, BundleError> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| BundleError::Unparsable(e.to_string()))?;
    let diff = epoch
        .diff(t)
        .map_err(|e| BundleError::Unparsable(e.to_string()))?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}
