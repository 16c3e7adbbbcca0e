//! The TLS listener's callbacks: the only module that touches OpenSSL handshake state.
//!
//! `certificate_callback` runs in the middle of every full handshake (Pingora pauses OpenSSL,
//! awaits us, then resumes). It reads the SNI, asks the manager, and installs the chain and key
//! on this connection only. It holds no policy: refusals come from the manager, and a refusal is
//! "install nothing", which OpenSSL turns into a handshake failure for the client.
//!
//! `handshake_complete_callback` runs for full *and* resumed handshakes; it records the
//! connection's name in the `SslDigest` so the proxy can compare it with the request's Host.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::ssl::NameType;

use crate::domain::Domain;
use crate::logging::LogBudget;
use crate::manager::{CertManager, Refusal};

/// The name a TLS connection was established for, attached to its `SslDigest`.
#[derive(Debug, Clone)]
pub struct ConnName(pub Domain);

pub struct EdgeTls {
    manager: Arc<CertManager>,
    refusal_log: LogBudget,
}

impl EdgeTls {
    pub fn new(manager: Arc<CertManager>) -> EdgeTls {
        EdgeTls {
            manager,
            refusal_log: LogBudget::new(10),
        }
    }

    fn refuse(&self, sni: Option<&str>, refusal: &Refusal) {
        self.manager
            .metrics()
            .handshakes
            .with_label_values(&[refusal.kind(), "none"])
            .inc();
        if let Some(suppressed) = self.refusal_log.take() {
            // The SNI is attacker-controlled: log it escaped and bounded.
            let sni: String = sni.unwrap_or("").escape_debug().take(100).collect();
            let more = if suppressed > 0 {
                format!(" ({suppressed} similar lines suppressed)")
            } else {
                String::new()
            };
            match refusal {
                Refusal::IssueFailed(_)
                | Refusal::Store(_)
                | Refusal::BadIssue(_)
                | Refusal::Decision(_) => {
                    log::warn!("handshake for \"{sni}\" refused: {refusal}{more}")
                }
                _ => log::info!("handshake for \"{sni}\" refused: {refusal}{more}"),
            }
        }
    }
}

#[async_trait]
impl TlsAccept for EdgeTls {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let name = {
            let sni = ssl.servername(NameType::HOST_NAME);
            match self.manager.handshake_name(sni) {
                Ok(name) => name,
                Err(refusal) => return self.refuse(sni, &refusal),
            }
        };
        let (ck, source) = match self.manager.certificate(&name).await {
            Ok(found) => found,
            Err(refusal) => return self.refuse(Some(name.as_str()), &refusal),
        };
        let installed = ext::ssl_use_certificate(ssl, ck.leaf())
            .and_then(|()| ext::ssl_use_private_key(ssl, &ck.key))
            .and_then(|()| {
                ck.chain[1..]
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        match installed {
            Ok(()) => self
                .manager
                .metrics()
                .handshakes
                .with_label_values(&["served", source.kind()])
                .inc(),
            Err(e) => {
                log::error!("{name}: OpenSSL refused the certificate: {e}");
                self.manager
                    .metrics()
                    .handshakes
                    .with_label_values(&["install_failed", source.kind()])
                    .inc();
            }
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let resumed = if ssl.session_reused() {
            "true"
        } else {
            "false"
        };
        self.manager
            .metrics()
            .handshakes_completed
            .with_label_values(&[resumed])
            .inc();
        let name = self
            .manager
            .handshake_name(ssl.servername(NameType::HOST_NAME))
            .ok()?;
        Some(Arc::new(ConnName(name)))
    }
}
