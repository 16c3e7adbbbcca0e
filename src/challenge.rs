//! Pending ACME challenge responses, shared by the issuer (which writes them while an order is
//! open) and the listeners (which answer the CA's validation requests).
//!
//! - HTTP-01 (RFC 8555 §8.3): token → key authorization, served on port 80.
//! - TLS-ALPN-01 (RFC 8737): name → a self-signed certificate carrying the `acmeIdentifier`
//!   extension, served only to handshakes that offer ALPN `acme-tls/1`.
//!
//! Entries live only while an order is being validated; `ChallengeGuard` removes them when the
//! order ends, however it ends. No policy here: the stores answer what they were given.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::certificate::CertifiedKey;
use crate::domain::Domain;

/// Both challenge stores.
#[derive(Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<Domain, Arc<CertifiedKey>>>,
}

/// RFC 8555 tokens are base64url without padding; ACME CAs use 43 characters (32 bytes).
pub fn is_valid_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    /// The key authorization for an HTTP-01 token, if an order is waiting on it.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if an order is waiting on it.
    pub fn tls_alpn01(&self, name: &Domain) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Publish an HTTP-01 response until the guard is dropped.
    pub fn publish_http01(
        self: &Arc<Self>,
        token: &str,
        key_authorization: String,
    ) -> ChallengeGuard {
        self.http01
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), key_authorization);
        ChallengeGuard {
            store: self.clone(),
            entry: Entry::Http01(token.to_string()),
        }
    }

    /// Publish a TLS-ALPN-01 certificate until the guard is dropped.
    pub fn publish_tls_alpn01(
        self: &Arc<Self>,
        name: &Domain,
        cert: CertifiedKey,
    ) -> ChallengeGuard {
        self.tls_alpn01
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), Arc::new(cert));
        ChallengeGuard {
            store: self.clone(),
            entry: Entry::TlsAlpn01(name.clone()),
        }
    }
}

enum Entry {
    Http01(String),
    TlsAlpn01(Domain),
}

/// Removes its challenge response when dropped.
pub struct ChallengeGuard {
    store: Arc<Challenges>,
    entry: Entry,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        match &self.entry {
            Entry::Http01(token) => {
                self.store
                    .http01
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(token);
            }
            Entry::TlsAlpn01(name) => {
                self.store
                    .tls_alpn01
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_remove_their_entries() {
        let c = Arc::new(Challenges::default());
        let token = "abcdefghijklmnopqrstuvwxyz0123456789_-ABCDE";
        assert!(is_valid_token(token));
        {
            let _g = c.publish_http01(token, "ka".into());
            assert_eq!(c.http01(token).as_deref(), Some("ka"));
        }
        assert_eq!(c.http01(token), None);
    }

    #[test]
    fn token_validation() {
        for bad in [
            "",
            "short",
            "../../etc/passwd/aaaaaaaaaaaa",
            "abc=defghijklmnopqrs",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_token(bad), "{bad}");
        }
    }
}
