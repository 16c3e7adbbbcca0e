//! The TLS listener's callbacks: the only module that touches OpenSSL handshake state.
//!
//! `certificate_callback` runs in the middle of every full handshake (Pingora pauses OpenSSL,
//! awaits us, then resumes). It takes the name from the connection's ClientHello record
//! (`tls::hello`), asks the manager, and installs the chain and key on this connection only. It
//! holds no policy: refusals come from the manager, and a refusal is "install nothing", which
//! OpenSSL turns into a handshake failure for the client. Names that can be refused without any
//! lookup are refused earlier, in the servername callback, with the `unrecognized_name` alert.
//!
//! ACME TLS-ALPN-01 (RFC 8737): a validation handshake offers ALPN `acme-tls/1` and must get the
//! challenge certificate, never the real one, and must negotiate `acme-tls/1`. With TLS 1.2
//! OpenSSL selects ALPN only after the certificate callback, so the ClientHello callback notes
//! the offer and the certificate callback reads it.
//!
//! `handshake_complete_callback` runs for full *and* resumed handshakes; it records the
//! connection's name in the `SslDigest` so the proxy can compare it with the request's Host.
//!
//! The settings are hardened to TLS 1.2 and 1.3 with forward-secret AEAD suites only, the
//! server's cipher order, no renegotiation, and session tickets under our own rotated keys
//! (`tls::tickets`).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::L4BufferSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::ssl::{
    select_next_proto, AlpnError, ClientHelloResponse, NameType, SniError, SslAlert, SslMode,
    SslOptions, SslRef, SslVersion,
};
use pingora::{ErrorType, OrErr};

use crate::certs::certificate::CertifiedKey;
use crate::certs::challenge::Challenges;
use crate::certs::manager::{CertManager, CertSource, Refusal};
use crate::domain::Domain;
use crate::logging::access::AccessLog;
use crate::logging::{suppressed, LogBudget};
use crate::metrics::{label_set, NO_SOURCE};
use crate::tls::hello::{hello, offers_acme_tls, on_client_hello, ACME_TLS_1};
use crate::tls::tickets::TicketKeys;

label_set! {
    /// `tenant_edge_tls_handshakes_total{outcome}` when a certificate was found (refusals use
    /// the refusal's kind).
    pub enum HandshakeOutcome {
        Served => "served",
        InstallFailed => "install_failed",
    }
}

/// The name a TLS connection was established for, attached to its `SslDigest`, and when the
/// allow-list last said yes to it for this connection: in the handshake (a full one), or on a
/// request since (a resumed session skipped the handshake's decision).
#[derive(Debug)]
pub struct ConnName {
    pub name: Domain,
    /// Whether the handshake resumed a session (no certificate callback, no decision).
    pub resumed: bool,
    born: std::time::Instant,
    /// Milliseconds after `born` of the last "allowed"; `u64::MAX`: never.
    allowed_ms: std::sync::atomic::AtomicU64,
    /// The client's address as X-Forwarded-For carries it, formatted by the first request.
    forwarded_for: std::sync::OnceLock<Option<http::HeaderValue>>,
    /// The access-log fields of the connection (client, TLS name and version, ALPN,
    /// resumption), rendered by its first logged request.
    log_fields: std::sync::OnceLock<Box<[u8]>>,
}

impl ConnName {
    pub fn new(name: Domain, resumed: bool) -> ConnName {
        ConnName {
            name,
            resumed,
            born: std::time::Instant::now(),
            allowed_ms: std::sync::atomic::AtomicU64::new(if resumed { u64::MAX } else { 0 }),
            forwarded_for: std::sync::OnceLock::new(),
            log_fields: std::sync::OnceLock::new(),
        }
    }

    /// `client` (the connection's peer, the same for all its requests) as X-Forwarded-For
    /// carries it: formatted once per connection.
    pub fn forwarded_for(&self, client: std::net::IpAddr) -> Option<&http::HeaderValue> {
        self.forwarded_for
            .get_or_init(|| http::HeaderValue::try_from(client.to_string()).ok())
            .as_ref()
    }

    /// The connection's access-log fields, rendered by `render` for its first logged request
    /// and copied by the others.
    pub fn log_fields(&self, render: impl FnOnce() -> Box<[u8]>) -> &[u8] {
        self.log_fields.get_or_init(render)
    }

    /// Whether the allow-list said yes to this connection's name less than `within` before
    /// `now` (a request's start, read once for all its uses): a request arriving then need not
    /// ask again.
    pub fn allowed_within(&self, now: std::time::Instant, within: std::time::Duration) -> bool {
        let last = self.allowed_ms.load(std::sync::atomic::Ordering::Relaxed);
        last != u64::MAX
            && (now.saturating_duration_since(self.born).as_millis() as u64)
                < last + within.as_millis() as u64
    }

    /// The allow-list said yes to this connection's name just now.
    pub fn note_allowed(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.allowed_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What we serve otherwise, in order of preference (wire format).
const H2_H1: &[u8] = b"\x02h2\x08http/1.1";
/// TLS 1.2: ECDHE with AEAD only, ECDSA first (the default key type).
const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:\
ECDHE-RSA-AES256-GCM-SHA384";
const TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
/// Key exchange: the hybrid post-quantum group browsers offer first, then the classic ones.
const GROUPS: &str = "X25519MLKEM768:X25519:P-256:P-384";

pub struct EdgeTls {
    manager: Arc<CertManager>,
    challenges: Arc<Challenges>,
    refusal_log: Arc<RefusalLog>,
}

/// Where refused handshakes are told: the log (10 lines a second) and the access log.
pub struct RefusalLog {
    lines: LogBudget,
    access: Option<Arc<AccessLog>>,
}

impl EdgeTls {
    /// The callbacks alone (the TLS settings wrap them; benchmarks drive them directly).
    pub fn new(manager: Arc<CertManager>, challenges: Arc<Challenges>) -> EdgeTls {
        EdgeTls::with_access_log(manager, challenges, None)
    }

    /// The callbacks, writing refused handshakes to `access` too.
    pub fn with_access_log(
        manager: Arc<CertManager>,
        challenges: Arc<Challenges>,
        access: Option<Arc<AccessLog>>,
    ) -> EdgeTls {
        EdgeTls {
            manager,
            challenges,
            refusal_log: Arc::new(RefusalLog {
                lines: LogBudget::new(10),
                access,
            }),
        }
    }
}

/// TLS settings for one HTTPS listener: our callbacks, the hardened protocol settings, ALPN
/// h2 and http/1.1 (and acme-tls/1 for validation handshakes), session tickets under
/// `tickets`. `TlsSettings` is not `Clone`: call once per listener.
pub fn tls_settings(
    manager: Arc<CertManager>,
    challenges: Arc<Challenges>,
    tickets: &Arc<TicketKeys>,
    access: Option<Arc<AccessLog>>,
) -> pingora::Result<TlsSettings> {
    let callbacks = EdgeTls::with_access_log(manager.clone(), challenges, access);
    let refusal_log = callbacks.refusal_log.clone();
    let mut tls = TlsSettings::with_callbacks(Box::new(callbacks))?;
    harden(&mut tls)?;
    tickets
        .enable(&mut tls)
        .or_err(ErrorType::InternalError, "session-ticket keys")?;
    // One TLS 1.3 ticket per handshake, as Go's crypto/tls (Caddy) sends, not OpenSSL's two:
    // each resumed connection brings its client a fresh one, and a ticket costs the server a
    // tenth of a full handshake's instructions (callgrind, `make bench-load` row a1).
    tls.set_num_tickets(1)
        .or_err(ErrorType::InternalError, "TLS 1.3 tickets per handshake")?;
    // OpenSSL reads whole records itself; see `listener_buffers`. An idle connection gives
    // its record buffers back (`make bench-load`, row m: memory per idle connection).
    tls.set_read_ahead(true);
    tls.set_mode(SslMode::RELEASE_BUFFERS);
    tls.set_alpn_select_callback(|_, offered| {
        if offers_acme_tls(offered) {
            return Ok(&ACME_TLS_1[1..]);
        }
        select_next_proto(H2_H1, offered).ok_or(AlpnError::NOACK)
    });
    tls.set_client_hello_callback(|ssl, alert| {
        on_client_hello(ssl, alert).map(|()| ClientHelloResponse::SUCCESS)
    });
    tls.set_servername_callback(move |ssl, alert| refuse_early(&manager, &refusal_log, ssl, alert));
    Ok(tls)
}

/// TLS 1.2 and 1.3 only, forward-secret AEAD suites in the server's order, no renegotiation.
fn harden(tls: &mut TlsSettings) -> pingora::Result<()> {
    let err = ErrorType::InternalError;
    tls.set_min_proto_version(Some(SslVersion::TLS1_2))
        .or_err(err.clone(), "TLS minimum version")?;
    tls.set_cipher_list(TLS12_CIPHERS)
        .or_err(err.clone(), "TLS 1.2 ciphers")?;
    tls.set_ciphersuites(TLS13_SUITES)
        .or_err(err.clone(), "TLS 1.3 suites")?;
    tls.set_groups_list(GROUPS).or_err(err, "TLS groups")?;
    tls.set_options(
        SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::PRIORITIZE_CHACHA
            | SslOptions::NO_RENEGOTIATION,
    );
    Ok(())
}

/// The servername callback: refuse, with `unrecognized_name`, what needs no lookup to refuse:
/// no SNI and no `tls.default_name`, a name that is not a DNS name, a name whose cached
/// decision is "no" (resumed sessions included: the certificate callback never runs for
/// those). Everything else goes on to the certificate callback.
fn refuse_early(
    manager: &CertManager,
    log: &RefusalLog,
    ssl: &mut SslRef,
    alert: &mut SslAlert,
) -> Result<(), SniError> {
    let Some(hello) = hello(ssl) else {
        return Ok(());
    };
    if hello.acme {
        // A CA validating TLS-ALPN-01: the certificate callback answers with the challenge.
        return Ok(());
    }
    let refusal = match hello.sni.as_deref() {
        Some(raw) => match std::str::from_utf8(raw) {
            Ok(sni) => match manager.handshake_name(Some(sni)) {
                Ok(name) if manager.cached_decision(&name) == Some(false) => {
                    Some(Refusal::NotAllowed(name))
                }
                Ok(_) => None,
                Err(refusal) => Some(refusal),
            },
            Err(_) => Some(Refusal::NoSni),
        },
        None => manager.handshake_name(None).err(),
    };
    let Some(refusal) = refusal else {
        return Ok(());
    };
    count_refusal(manager, log, ssl, hello.sni_str(), &refusal);
    *alert = SslAlert::UNRECOGNIZED_NAME;
    Err(SniError::ALERT_FATAL)
}

/// Count a refused handshake and log it at a bounded rate (never at error level: refusals are
/// normal traffic for an on-demand edge).
fn count_refusal(
    manager: &CertManager,
    log: &RefusalLog,
    ssl: &SslRef,
    sni: Option<&str>,
    refusal: &Refusal,
) {
    manager
        .metrics()
        .handshakes
        .with_label_values(&[refusal.kind(), NO_SOURCE])
        .inc();
    if let Some(access) = &log.access {
        // OpenSSL's callbacks do not know the socket: the pre-TLS gate noted the client of
        // this ClientHello by its client random.
        let mut random = [0u8; 32];
        let client = (ssl.client_random(&mut random) == 32)
            .then(|| access.client_of_hello(&random))
            .flatten();
        let sni: String = sni.unwrap_or("").escape_debug().take(255).collect();
        access.refused_handshake(client, Some(&sni), refusal.kind());
    }
    if let Some(dropped) = log.lines.take() {
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

impl EdgeTls {
    fn refuse(&self, ssl: &SslRef, sni: Option<&str>, refusal: &Refusal) {
        count_refusal(&self.manager, &self.refusal_log, ssl, sni, refusal);
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
        // Acceptors not built by `tls_settings` (benchmarks) have no ClientHello record.
        let (sni, acme) = match hello(ssl) {
            Some(h) => (h.sni_str().map(str::to_owned), h.acme),
            None => (
                ssl.servername(NameType::HOST_NAME).map(str::to_owned),
                false,
            ),
        };
        let name = match self.manager.handshake_name(sni.as_deref()) {
            Ok(name) => name,
            Err(refusal) => return self.refuse(ssl, sni.as_deref(), &refusal),
        };
        if acme {
            // A CA validating TLS-ALPN-01: only the challenge certificate, never a real one,
            // and never an issuance.
            return match self.challenges.find_tls_alpn01(&name).await {
                Some(ck) => self.install(ssl, &name, &ck, CertSource::AcmeChallenge),
                None => self.refuse(
                    ssl,
                    Some(name.as_str()),
                    &Refusal::NoChallenge(name.clone()),
                ),
            };
        }
        match self.manager.certificate(&name).await {
            Ok((ck, source)) => self.install(ssl, &name, &ck, source),
            Err(refusal) => self.refuse(ssl, Some(name.as_str()), &refusal),
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let reused = ssl.session_reused();
        let resumed = if reused { "true" } else { "false" };
        let version = crate::metrics::tls_version_label(ssl.version_str());
        let alpn = crate::metrics::alpn_label(ssl.selected_alpn_protocol());
        self.manager
            .metrics()
            .handshakes_completed
            .with_label_values(&[resumed, version, alpn])
            .inc();
        let sni = match hello(ssl) {
            Some(h) => h.sni_str(),
            None => ssl.servername(NameType::HOST_NAME),
        };
        let name = self.manager.handshake_name(sni).ok()?;
        Some(Arc::new(ConnName::new(name, reused)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_connection_asks_the_allow_list_at_most_once_per_window() {
        let name = Domain::parse("shop.tenant.test").unwrap();
        let now = std::time::Instant::now;
        // A full handshake decided just now; a resumed session never did.
        assert!(ConnName::new(name.clone(), false).allowed_within(now(), Duration::from_secs(1)));
        let resumed = ConnName::new(name, true);
        assert!(resumed.resumed);
        assert!(!resumed.allowed_within(now(), Duration::from_secs(1)));
        resumed.note_allowed();
        assert!(resumed.allowed_within(now(), Duration::from_secs(1)));
        // The window passes: ask again.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!resumed.allowed_within(now(), Duration::from_millis(10)));
        // A request that started before the yes (or before the connection) is within it.
        let earlier = now();
        let fresh = ConnName::new(Domain::parse("b.tenant.test").unwrap(), false);
        assert!(fresh.allowed_within(earlier, Duration::from_millis(1)));
    }

    #[test]
    fn the_forwarded_address_is_formatted_once() {
        let conn = ConnName::new(Domain::parse("a.tenant.test").unwrap(), false);
        let first = conn.forwarded_for("203.0.113.9".parse().unwrap()).unwrap();
        assert_eq!(first, "203.0.113.9");
        // The same value (same allocation) for every later request of the connection.
        let again = conn.forwarded_for("203.0.113.9".parse().unwrap()).unwrap();
        assert!(std::ptr::eq(first, again));
    }
}
