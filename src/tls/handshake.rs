//! The TLS listener's callbacks: the only module that touches OpenSSL handshake state.
//!
//! `certificate_callback` runs in the middle of every full handshake (Pingora pauses OpenSSL,
//! awaits us, then resumes). It reads the SNI, asks the manager, and installs the chain and key
//! on this connection only. It holds no policy: refusals come from the manager, and a refusal is
//! "install nothing", which OpenSSL turns into a handshake failure for the client.
//!
//! ACME TLS-ALPN-01 (RFC 8737): a validation handshake offers ALPN `acme-tls/1` and must get the
//! challenge certificate, never the real one, and must negotiate `acme-tls/1`. With TLS 1.2
//! OpenSSL selects ALPN only after the certificate callback, so a ClientHello callback notes the
//! offer in the connection's ex-data and the certificate callback reads it there.
//!
//! `handshake_complete_callback` runs for full *and* resumed handshakes; it records the
//! connection's name in the `SslDigest` so the proxy can compare it with the request's Host.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::L4BufferSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::ssl::{select_next_proto, AlpnError, ClientHelloResponse, NameType, Ssl, SslRef};

use crate::certs::certificate::CertifiedKey;
use crate::certs::challenge::Challenges;
use crate::certs::manager::{CertManager, CertSource, Refusal};
use crate::domain::Domain;
use crate::logging::{suppressed, LogBudget};
use crate::metrics::{label_set, NO_SOURCE};

label_set! {
    /// `tenant_edge_tls_handshakes_total{outcome}` when a certificate was found (refusals use
    /// the refusal's kind).
    pub enum HandshakeOutcome {
        Served => "served",
        InstallFailed => "install_failed",
    }
}

/// The name a TLS connection was established for, attached to its `SslDigest`.
#[derive(Debug, Clone)]
pub struct ConnName(pub Domain);

/// ALPN protocol id of TLS-ALPN-01 validation handshakes, length-prefixed (wire format).
const ACME_TLS_1: &[u8] = b"\x0aacme-tls/1";
/// What we serve otherwise, in order of preference (wire format).
const H2_H1: &[u8] = b"\x02h2\x08http/1.1";

pub struct EdgeTls {
    manager: Arc<CertManager>,
    challenges: Arc<Challenges>,
    refusal_log: LogBudget,
}

impl EdgeTls {
    /// The callbacks alone (the TLS settings wrap them; benchmarks drive them directly).
    pub fn new(manager: Arc<CertManager>, challenges: Arc<Challenges>) -> EdgeTls {
        EdgeTls {
            manager,
            challenges,
            refusal_log: LogBudget::new(10),
        }
    }
}

/// TLS settings for one HTTPS listener: our callbacks, ALPN h2 + http/1.1 (+ acme-tls/1 for
/// validation handshakes). `TlsSettings` is not `Clone`: call once per listener.
pub fn tls_settings(
    manager: Arc<CertManager>,
    challenges: Arc<Challenges>,
) -> pingora::Result<TlsSettings> {
    let callbacks = EdgeTls::new(manager, challenges);
    let mut tls = TlsSettings::with_callbacks(Box::new(callbacks))?;
    // OpenSSL reads whole records itself; see `listener_buffers`.
    tls.set_read_ahead(true);
    tls.set_alpn_select_callback(|_, offered| {
        if offers_acme_tls(offered) {
            return Ok(&ACME_TLS_1[1..]);
        }
        select_next_proto(H2_H1, offered).ok_or(AlpnError::NOACK)
    });
    tls.set_client_hello_callback(|ssl, _alert| {
        if client_hello_offers_acme_tls(ssl) {
            if let Some(index) = acme_index() {
                ssl.set_ex_data(index, true);
            }
        }
        Ok(ClientHelloResponse::SUCCESS)
    });
    Ok(tls)
}

/// The transport buffers under each HTTPS listener's TLS layer: no read buffer, the default
/// write buffer. Pingora's default puts a 64 KiB read buffer under every client connection so
/// that OpenSSL's small reads (a 5-byte record header, then the record) do not each cost a
/// system call. OpenSSL's read-ahead (set in `tls_settings`) does the same with its own record
/// buffer: measured with `strace -c` under keep-alive load, 2 `recvfrom` per proxied request
/// either way (4 without either), while an idle keep-alive client costs the edge 46 KB
/// instead of 65 KB of resident memory (`make bench-load`, the idle-connections row).
pub fn listener_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// Whether a wire-format ALPN list contains `acme-tls/1`.
fn offers_acme_tls(list: &[u8]) -> bool {
    let mut rest = list;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if tail.len() < len {
            return false;
        }
        if tail[..len] == ACME_TLS_1[1..] {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// The ex-data slot where the ClientHello callback notes an `acme-tls/1` offer.
fn acme_index() -> Option<openssl::ex_data::Index<Ssl, bool>> {
    static INDEX: OnceLock<Option<openssl::ex_data::Index<Ssl, bool>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index::<bool>().ok())
}

/// Read the ALPN extension of the ClientHello being processed.
fn client_hello_offers_acme_tls(ssl: &mut SslRef) -> bool {
    use foreign_types::ForeignTypeRef;
    use pingora::tls::ssl_sys;
    use std::os::raw::{c_uchar, c_uint};
    const ALPN_EXTENSION: c_uint = 16;
    let mut data: *const c_uchar = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: called only from the ClientHello callback, where OpenSSL documents
    // SSL_client_hello_get0_ext as valid; `data` points into the ClientHello buffer owned by
    // `ssl` and is read before the callback returns.
    let found = unsafe {
        ssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), ALPN_EXTENSION, &mut data, &mut len)
    };
    if found != 1 || data.is_null() || len < 2 {
        return false;
    }
    // SAFETY: OpenSSL returned `len` readable bytes at `data`.
    let ext = unsafe { std::slice::from_raw_parts(data, len) };
    // The extension is a 2-byte length followed by the protocol list.
    offers_acme_tls(&ext[2..])
}

impl EdgeTls {
    fn refuse(&self, sni: Option<&str>, refusal: &Refusal) {
        self.manager
            .metrics()
            .handshakes
            .with_label_values(&[refusal.kind(), NO_SOURCE])
            .inc();
        if let Some(dropped) = self.refusal_log.take() {
            // The SNI is attacker-controlled: log it escaped and bounded.
            let sni: String = sni.unwrap_or("").escape_debug().take(100).collect();
            let more = suppressed(dropped);
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

    fn install(&self, ssl: &mut TlsRef, name: &Domain, ck: &CertifiedKey, source: CertSource) {
        let installed = ext::ssl_use_certificate(ssl, ck.leaf())
            .and_then(|()| ext::ssl_use_private_key(ssl, &ck.key))
            .and_then(|()| {
                ck.chain[1..]
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        let outcome = match installed {
            Ok(()) => HandshakeOutcome::Served,
            Err(e) => {
                log::error!("{name}: OpenSSL refused the certificate: {e}");
                HandshakeOutcome::InstallFailed
            }
        };
        self.manager
            .metrics()
            .handshakes
            .with_label_values(&[outcome.label(), source.label()])
            .inc();
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
        let acme_validation = acme_index()
            .and_then(|i| ssl.ex_data(i))
            .copied()
            .unwrap_or(false);
        if acme_validation {
            // A CA validating TLS-ALPN-01: only the challenge certificate, never a real one,
            // and never an issuance.
            return match self.challenges.find_tls_alpn01(&name).await {
                Some(ck) => self.install(ssl, &name, &ck, CertSource::AcmeChallenge),
                None => self.refuse(Some(name.as_str()), &Refusal::NoChallenge(name.clone())),
            };
        }
        match self.manager.certificate(&name).await {
            Ok((ck, source)) => self.install(ssl, &name, &ck, source),
            Err(refusal) => self.refuse(Some(name.as_str()), &refusal),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_lists_are_parsed_safely() {
        assert!(offers_acme_tls(b"\x0aacme-tls/1"));
        assert!(offers_acme_tls(b"\x02h2\x0aacme-tls/1"));
        assert!(!offers_acme_tls(b"\x02h2\x08http/1.1"));
        assert!(!offers_acme_tls(b"\x0bacme-tls/1x"));
        assert!(!offers_acme_tls(b"\x0aacme-tls")); // truncated
        assert!(!offers_acme_tls(b"\xff"));
        assert!(!offers_acme_tls(b""));
    }
}
