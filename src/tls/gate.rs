//! The client gate: one client address cycling through never-seen SNI names is throttled
//! before its handshakes reach the allow-list (the limit itself is `limits::clients`).
//!
//! Pingora's certificate callback does not know the client's address, so the gate runs one step
//! earlier, as Pingora's `PreTlsProcess` (registered with `Listeners::set_pre_tls_callback`):
//! after the TCP accept, in the connection's own task, before OpenSSL reads a byte. It reads
//! the ClientHello, puts every byte back (`L4Stream::rewind`), and takes the SNI:
//! - a name the edge knows already ([`KnownNames`]: a platform domain or a cached decision)
//!   always passes, at the cost of one parse and one cache lookup;
//! - no SNI, an invalid name, something that is not TLS, or a client that hangs up pass free:
//!   the certificate callback refuses those without a database query;
//! - a valid name never seen before takes a token from the client's bucket (IPv6 clients
//!   grouped by /64); with the bucket empty the connection is dropped, counted in
//!   `tenant_edge_issuances_limited_total{limit="client"}` and logged at a bounded rate;
//! - a ClientHello that cannot be read whole within `hello_timeout` or `max_hello_bytes`, or
//!   that this parser cannot read, also takes a token, so that sending slowly or oddly is no
//!   way around the gate; it is never dropped for that alone.
//!
//! What it must not do: decide whether a name is allowed (the allow-list does, through
//! `KnownNames`), or delay a handshake beyond what the handshake would wait anyway: it waits
//! only for bytes OpenSSL would wait for, and a client that sends nothing is passed on after
//! `hello_timeout` to time out in TLS as usual. It must
//! never consume a byte of the stream and never panic on input (the parser is bounds-checked
//! and tested on truncated and random bytes).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::allow::pattern::NamePattern;
use crate::certs::challenge::Challenges;
use crate::certs::manager::CertManager;
use crate::domain::Domain;
use crate::limits::clients::{ClientGateSettings, ClientLimiter};
use crate::limits::issuance::LimitKind;
use crate::logging::access::AccessLog;
use crate::logging::{suppressed, LogBudget};
use crate::metrics::Metrics;
use crate::tls::client_hello::{parse_client_hello, Hello};
use crate::util::time::ShortDuration;

/// Which names the edge can answer without asking a dynamic source or the CA.
///
/// `is_known` is called by the gate once per TLS connection, before the handshake, so it must
/// be cheap and must not block: a memory lookup, no I/O. `true` means "a handshake for this
/// name costs no database query and no order": an exact platform domain, a name with a cached
/// decision (a cached *no* included), or a name under a platform wildcard that already has a
/// certificate. Absent or expired entries are `false`.
///
/// `warm` is awaited for a never-seen name the gate let through: it looks the name up, so that
/// the handshake that follows can refuse a name nobody allows with `unrecognized_name`.
#[async_trait]
pub trait KnownNames: Send + Sync {
    fn is_known(&self, name: &Domain) -> bool;
    async fn warm(&self, _name: &Domain) {}
}

#[async_trait]
impl<F> KnownNames for F
where
    F: Fn(&Domain) -> bool + Send + Sync,
{
    fn is_known(&self, name: &Domain) -> bool {
        self(name)
    }
}

/// What the first bytes of a connection showed, as far as the gate cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A name the edge knows: always passes.
    Known,
    /// A valid name not known yet: costs the client a token.
    NeverSeen(Domain),
    /// No allow-list lookup can follow (no SNI, an invalid name, not TLS, the client hung up
    /// or failed): passes free.
    NoLookup,
    /// No whole, readable ClientHello within the time and size bounds: costs a token.
    Unproven,
}

/// The pre-TLS client gate. One per edge, shared by every TLS listener.
pub struct ClientGate {
    limiter: ClientLimiter,
    known: Arc<dyn KnownNames>,
    metrics: Arc<Metrics>,
    log: LogBudget,
    access: Option<Arc<AccessLog>>,
}

impl ClientGate {
    pub fn new(
        settings: ClientGateSettings,
        known: Arc<dyn KnownNames>,
        metrics: Arc<Metrics>,
    ) -> ClientGate {
        ClientGate {
            limiter: ClientLimiter::new(settings),
            known,
            metrics,
            log: LogBudget::new(5),
            access: None,
        }
    }

    /// Write the connections it drops to `access` too.
    pub fn with_access_log(mut self, access: Arc<AccessLog>) -> ClientGate {
        self.access = Some(access);
        self
    }

    pub fn settings(&self) -> &ClientGateSettings {
        self.limiter.settings()
    }

    /// May a connection from `ip` that showed `seen` go on to TLS? Takes a token when `seen`
    /// is `NeverSeen` or `Unproven`; counts and logs a refusal.
    pub fn admit(&self, ip: IpAddr, seen: &Seen) -> bool {
        self.admit_at(ip, seen, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, seen: &Seen, now: Instant) -> bool {
        if matches!(seen, Seen::Known | Seen::NoLookup) {
            return true;
        }
        let Err(wait) = self.limiter.take(ip, now) else {
            return true;
        };
        self.metrics
            .issuances_limited
            .with_label_values(&[LimitKind::Client.label()])
            .inc();
        if let Some(access) = &self.access {
            let name = match seen {
                Seen::NeverSeen(name) => Some(name.as_str()),
                _ => None,
            };
            access.refused_handshake(Some(ip), name, LimitKind::Client.label());
        }
        if let Some(dropped) = self.log.take() {
            let s = self.settings();
            let what = match seen {
                Seen::NeverSeen(name) => format!("never-seen name {name}"),
                _ => "unreadable or slow ClientHello".to_string(),
            };
            log::info!(
                "client {}: connection dropped before TLS ({what}): more than {} \
                 never-seen names, one more every {}; next in {}{}",
                self.limiter.describe(ip),
                s.burst.max(1),
                ShortDuration(s.refill_interval),
                ShortDuration(wait),
                suppressed(dropped),
            );
        }
        false
    }

    /// Read the ClientHello from `io` into `buf` (without putting it back: the caller rewinds
    /// `buf.filled()`), bounded by `hello_timeout` and `max_hello_bytes`, and classify it.
    async fn read_hello<S: AsyncRead + Unpin + Send>(
        &self,
        io: &mut S,
        buf: &mut HelloBuf,
    ) -> Seen {
        let deadline = tokio::time::Instant::now() + self.settings().hello_timeout;
        loop {
            match parse_client_hello(buf.filled()) {
                Hello::Incomplete { need } => {
                    if need > self.settings().max_hello_bytes {
                        return Seen::Unproven;
                    }
                    buf.reserve(need);
                }
                hello => return self.classify(hello),
            }
            let spare = buf.spare();
            if spare.is_empty() {
                return Seen::Unproven;
            }
            // `read` is cancel-safe (no byte is lost when the timeout wins), unlike Pingora's
            // `try_peek`, which is `read_exact` + rewind and drops what it read on timeout/EOF.
            match tokio::time::timeout_at(deadline, io.read(spare)).await {
                Err(_elapsed) => return Seen::Unproven,
                // The client hung up or the socket failed: OpenSSL fails the same way, before
                // any callback.
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::NoLookup,
                Ok(Ok(n)) => buf.advance(n),
            }
        }
    }

    fn classify(&self, hello: Hello<'_>) -> Seen {
        match hello {
            Hello::Incomplete { .. } | Hello::Malformed => Seen::Unproven,
            Hello::NotTls | Hello::NoSni => Seen::NoLookup,
            Hello::Sni(raw) => {
                // The certificate callback parses the same bytes the same way: an invalid name
                // (or non-UTF-8 bytes, which it sees as no SNI) is refused there without a query.
                let Some(name) = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| Domain::parse(s).ok())
                else {
                    return Seen::NoLookup;
                };
                if self.known.is_known(&name) {
                    Seen::Known
                } else {
                    Seen::NeverSeen(name)
                }
            }
        }
    }
}

#[async_trait]
impl PreTlsProcess for ClientGate {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let Some(ip) = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        else {
            // Not an IP socket (Unix socket): nothing to key a bucket on.
            return Ok(());
        };
        let mut buf = HelloBuf::new();
        let seen = self.read_hello(stream, &mut buf).await;
        if let Some(access) = &self.access {
            access.note_client_hello(buf.filled(), ip);
        }
        stream.rewind(buf.filled());
        if self.admit(ip, &seen) {
            if let Seen::NeverSeen(name) = &seen {
                self.known.warm(name).await;
            }
            Ok(())
        } else {
            Err(Error::explain(
                ErrorType::Custom("client_limited"),
                "too many never-seen names from this client",
            ))
        }
    }
}

/// Bytes read from the connection so far: inline for the usual ClientHello, on the heap beyond.
struct HelloBuf {
    inline: [u8; INLINE],
    heap: Vec<u8>,
    len: usize,
}

/// Most ClientHellos fit (≈ 250–600 bytes classic, ≈ 1.8 KiB with a post-quantum key share).
const INLINE: usize = 4096;

impl HelloBuf {
    fn new() -> HelloBuf {
        HelloBuf {
            inline: [0; INLINE],
            heap: Vec::new(),
            len: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap[..self.len]
        }
    }

    /// Make room for at least `cap` bytes in total.
    fn reserve(&mut self, cap: usize) {
        if self.heap.is_empty() {
            if cap > INLINE {
                let mut heap = vec![0; cap];
                heap[..self.len].copy_from_slice(&self.inline[..self.len]);
                self.heap = heap;
            }
        } else if cap > self.heap.len() {
            self.heap.resize(cap, 0);
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        if self.heap.is_empty() {
            &mut self.inline[self.len..]
        } else {
            &mut self.heap[self.len..]
        }
    }

    fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// The names the edge knows: the certificate manager's, the names a CA is validating, and the
/// never-seen names the gate already let through once.
pub struct EdgeNames {
    manager: Arc<CertManager>,
    challenges: Arc<Challenges>,
    /// Whether a new certificate is an order with a public CA (ACME). With the internal CA a
    /// name under a platform wildcard costs a local signature, no order and no query: known.
    wildcards_cost_orders: bool,
    /// A never-seen name costs its first client a token; the connections that follow for it
    /// (a browser opens several, a CA validates from several places) join the lookup or the
    /// order already under way and cost nothing more.
    admitted: moka::sync::Cache<Domain, ()>,
}

/// Never-seen names remembered as admitted, and for how long.
const ADMITTED: u64 = 10_000;
const ADMITTED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl EdgeNames {
    pub fn new(
        manager: Arc<CertManager>,
        challenges: Arc<Challenges>,
        wildcards_cost_orders: bool,
    ) -> EdgeNames {
        EdgeNames {
            manager,
            challenges,
            wildcards_cost_orders,
            admitted: moka::sync::Cache::builder()
                .max_capacity(ADMITTED)
                .time_to_live(ADMITTED_FOR)
                .build(),
        }
    }
}

/// The edge knows a name when it is an exact platform domain, has a cached decision, is under
/// a platform wildcard and already has a certificate (a wildcard would otherwise let a client
/// turn every made-up name below it into an order), has a TLS-ALPN-01 challenge waiting on it
/// (the CA's validation connections, which may come from the client's own address, must not
/// spend its tokens), or was admitted as never-seen a moment ago.
#[async_trait]
impl KnownNames for EdgeNames {
    fn is_known(&self, name: &Domain) -> bool {
        let allow = self.manager.allow_list();
        let known = match allow.platform_match(name) {
            Some(NamePattern::Exact(_)) => true,
            Some(NamePattern::Below(_)) => {
                !self.wildcards_cost_orders || self.manager.cached(name).is_some()
            }
            None => allow.is_known(name),
        };
        known || self.admitted.contains_key(name) || self.challenges.awaits_tls_alpn01(name)
    }

    async fn warm(&self, name: &Domain) {
        self.admitted.insert(name.clone(), ());
        let _ = self.manager.allow_list().decide(name).await;
    }
}

#[cfg(test)]
mod tests;
