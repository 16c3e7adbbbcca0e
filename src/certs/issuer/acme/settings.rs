//! `issuer.acme`: which CA, which account, which challenges.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::metrics::label_set;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    pub contact: Vec<String>,
    /// A root certificate (PEM) trusted for the directory's own HTTPS, instead of the system's
    /// (Pebble, a private ACME CA).
    pub trusted_root: Option<PathBuf>,
    /// In order of preference; never empty.
    pub challenges: Vec<ChallengeType>,
    pub profile: Option<String>,
    pub eab: Option<EabSettings>,
    /// Bound on one order, from newOrder to the downloaded certificate.
    pub order_timeout: Duration,
}

impl AcmeSettings {
    /// The most preferred challenge (the label of orders that failed before choosing one).
    pub fn preferred_challenge(&self) -> ChallengeType {
        self.challenges
            .first()
            .copied()
            .unwrap_or(ChallengeType::TlsAlpn01)
    }
}

/// External Account Binding (RFC 8555 §7.3.4), required by some CAs.
#[derive(Clone)]
pub struct EabSettings {
    pub key_id: String,
    /// The MAC key, base64url-decoded.
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for EabSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EabSettings")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

label_set! {
    /// An ACME challenge type (`acme_orders_total{challenge}`, `issuer.acme.challenges`).
    pub enum ChallengeType {
        Http01 => "http-01",
        TlsAlpn01 => "tls-alpn-01",
    }
}

label_set! {
    /// `acme_orders_total{outcome}`: `invalid` is what the CA refused, `error` a CA that could
    /// not be reached or did not finish in time.
    pub enum OrderOutcome {
        Valid => "valid",
        Invalid => "invalid",
        Error => "error",
    }
}
