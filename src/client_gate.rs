//! The client gate: one client address cycling through never-seen SNI names is throttled
//! before its handshakes reach the allow-list (issue 3 item 4).
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
//! What it must not do: decide whether a name is allowed (the allow-list does), query anything,
//! or delay a handshake: it waits only for bytes OpenSSL would wait for anyway, and a client
//! that sends nothing is passed on after `hello_timeout` to time out in TLS as usual. It must
//! never consume a byte of the stream and never panic on input (the parser is bounds-checked
//! and tested on truncated and random bytes).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::domain::Domain;
use crate::limits::{ShortDuration, TokenBucket};
use crate::logging::LogBudget;
use crate::metrics::Metrics;

/// Which names the edge can answer without asking a dynamic source.
///
/// Called by the gate once per TLS connection, before the handshake, so it must be cheap and
/// must not block: a memory lookup, no I/O. `true` means "a handshake for this name costs no
/// database query": a platform domain, or a name with a cached decision (a cached *no*
/// included). Absent or expired entries are `false`.
pub trait KnownNames: Send + Sync {
    fn is_known(&self, name: &Domain) -> bool;
}

impl<F> KnownNames for F
where
    F: Fn(&Domain) -> bool + Send + Sync,
{
    fn is_known(&self, name: &Domain) -> bool {
        self(name)
    }
}

/// Tunables of the [`ClientGate`]. `Default` is what production runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGateSettings {
    /// Never-seen names one client may try at once (bucket capacity). Default 20: a browser
    /// opening a handful of connections to a brand-new tenant domain never notices.
    pub burst: u32,
    /// One more never-seen name per client every `refill_interval`. Default 1s.
    /// `Duration::ZERO` disables the gate's limit (it still parses, for nothing).
    pub refill_interval: Duration,
    /// Client addresses (or /64s) tracked at once; beyond that the least useful are forgotten
    /// (moka's TinyLFU), which only resets their buckets. Default 100,000 (a few MB). An
    /// address idle for `burst × refill_interval` is forgotten too: its bucket would be full.
    pub max_clients: u64,
    /// IPv6 clients share a bucket per prefix of this length (one subscriber usually gets a
    /// whole /64). Default 64. IPv4 (and IPv4-mapped IPv6) clients are keyed by address.
    pub ipv6_prefix_len: u8,
    /// Longest wait for a whole ClientHello. Default 500ms. A client that has sent nothing or
    /// only part of it by then is passed on (and takes a token, see the module docs).
    pub hello_timeout: Duration,
    /// Largest ClientHello the gate reads, in bytes (record headers included). Default 16,389:
    /// one full TLS record. Larger ones are passed on and take a token.
    pub max_hello_bytes: usize,
}

impl Default for ClientGateSettings {
    fn default() -> Self {
        ClientGateSettings {
            burst: 20,
            refill_interval: Duration::from_secs(1),
            max_clients: 100_000,
            ipv6_prefix_len: 64,
            hello_timeout: Duration::from_millis(500),
            max_hello_bytes: RECORD_HEADER + MAX_RECORD,
        }
    }
}

impl ClientGateSettings {
    /// Every problem with these values, as `(field, message)`; empty when they are usable.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.burst == 0 {
            problems.push(("burst", "must be at least 1".to_string()));
        }
        if self.max_clients == 0 {
            problems.push(("max_clients", "must be at least 1".to_string()));
        }
        if self.ipv6_prefix_len > 128 {
            problems.push(("ipv6_prefix_len", "must be between 0 and 128".to_string()));
        }
        if self.hello_timeout.is_zero() || self.hello_timeout > Duration::from_secs(10) {
            problems.push((
                "hello_timeout",
                "must be more than 0 and at most 10s (it bounds the wait before TLS)".to_string(),
            ));
        }
        if self.max_hello_bytes < 512 {
            problems.push(("max_hello_bytes", "must be at least 512".to_string()));
        }
        problems
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
    settings: ClientGateSettings,
    known: Arc<dyn KnownNames>,
    metrics: Arc<Metrics>,
    clients: moka::sync::Cache<IpAddr, Arc<Mutex<TokenBucket>>>,
    log: LogBudget,
}

impl ClientGate {
    pub fn new(
        settings: ClientGateSettings,
        known: Arc<dyn KnownNames>,
        metrics: Arc<Metrics>,
    ) -> ClientGate {
        let idle = settings
            .refill_interval
            .saturating_mul(settings.burst.max(1))
            .clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600));
        let clients = moka::sync::Cache::builder()
            .max_capacity(settings.max_clients.max(1))
            .time_to_idle(idle)
            .build();
        ClientGate {
            settings,
            known,
            metrics,
            clients,
            log: LogBudget::new(5),
        }
    }

    pub fn settings(&self) -> &ClientGateSettings {
        &self.settings
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
        let s = &self.settings;
        let key = client_key(ip, s.ipv6_prefix_len);
        let burst = s.burst.max(1);
        let bucket = self
            .clients
            .get_with(key, || Arc::new(Mutex::new(TokenBucket::full(burst, now))));
        let taken = bucket.lock().unwrap_or_else(|p| p.into_inner()).try_take(
            s.refill_interval,
            burst,
            now,
        );
        let Err(wait) = taken else {
            return true;
        };
        self.metrics
            .issuances_limited
            .with_label_values(&["client"])
            .inc();
        if let Some(suppressed) = self.log.take() {
            let client = match key {
                IpAddr::V6(_) if s.ipv6_prefix_len < 128 => {
                    format!("{key}/{}", s.ipv6_prefix_len)
                }
                _ => key.to_string(),
            };
            let what = match seen {
                Seen::NeverSeen(name) => format!("never-seen name {name}"),
                _ => "unreadable or slow ClientHello".to_string(),
            };
            let more = if suppressed > 0 {
                format!(" ({suppressed} similar lines suppressed)")
            } else {
                String::new()
            };
            log::warn!(
                "client {client}: connection dropped before TLS ({what}): more than {} \
                 never-seen names, one more every {}; next in {}{more}",
                burst,
                ShortDuration(s.refill_interval),
                ShortDuration(wait),
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
        let deadline = tokio::time::Instant::now() + self.settings.hello_timeout;
        loop {
            match parse_client_hello(buf.filled()) {
                Hello::Incomplete { need } => {
                    if need > self.settings.max_hello_bytes {
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
        stream.rewind(buf.filled());
        if self.admit(ip, &seen) {
            Ok(())
        } else {
            Err(Error::explain(
                ErrorType::Custom("client_limited"),
                "too many never-seen names from this client",
            ))
        }
    }
}

/// The bucket key for a client: the IPv4 address (IPv4-mapped IPv6 included), or the IPv6
/// address masked to `v6_prefix` bits.
fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let shift = 128u32.saturating_sub(u32::from(v6_prefix.min(128)));
                let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
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

// ---------------------------------------------------------------------------------------------
// ClientHello parsing (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, RFC 6066 §3)
// ---------------------------------------------------------------------------------------------

const RECORD_HEADER: usize = 5;
/// TLSPlaintext.length must not exceed 2^14 (RFC 8446 §5.1).
const MAX_RECORD: usize = 16_384;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A ClientHello larger than this is not worth reassembling.
const MAX_HANDSHAKE: usize = 64 * 1024;

/// What the first bytes of a connection say about its SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello<'a> {
    /// More bytes are needed: at least `need` in total.
    Incomplete { need: usize },
    /// Not a TLS handshake record (HTTP, SSLv2, noise): OpenSSL fails it before any callback.
    NotTls,
    /// A TLS handshake this parser cannot read: malformed, not a ClientHello, or oddly split.
    Malformed,
    /// A whole ClientHello without a `server_name` extension.
    NoSni,
    /// The first `host_name` of the `server_name` extension, bytes as sent (the same entry
    /// OpenSSL reports). Borrowed unless the ClientHello was split across records.
    Sni(Cow<'a, [u8]>),
}

/// Find the SNI in the first bytes of a TLS connection. Never panics, never reads past `buf`.
pub fn parse_client_hello(buf: &[u8]) -> Hello<'_> {
    let Some(header) = buf.get(..RECORD_HEADER) else {
        // Reject non-TLS as early as its first bytes allow.
        return match buf {
            [t, ..] if *t != CONTENT_HANDSHAKE => Hello::NotTls,
            [_, major, ..] if *major != 3 => Hello::NotTls,
            _ => Hello::Incomplete {
                need: RECORD_HEADER,
            },
        };
    };
    let record_len = match handshake_record(header) {
        Ok(len) => len,
        Err(not_ours) => return not_ours,
    };
    let Some(fragment) = buf.get(RECORD_HEADER..RECORD_HEADER + record_len) else {
        return Hello::Incomplete {
            need: RECORD_HEADER + record_len,
        };
    };
    if let [msg_type, a, b, c, body @ ..] = fragment {
        if *msg_type != HANDSHAKE_CLIENT_HELLO {
            return Hello::Malformed;
        }
        let body_len = be24(*a, *b, *c);
        if let Some(body) = body.get(..body_len) {
            return match client_hello_body(body) {
                Body::Sni(name) => Hello::Sni(Cow::Borrowed(name)),
                Body::NoSni => Hello::NoSni,
                Body::Malformed => Hello::Malformed,
            };
        }
    }
    reassemble(buf)
}

/// The rare path: a ClientHello split over several handshake records (legal; OpenSSL
/// reassembles it, so we must too, or splitting would get around the gate).
fn reassemble(buf: &[u8]) -> Hello<'static> {
    let mut message: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            return Hello::Incomplete {
                need: pos + RECORD_HEADER,
            };
        };
        // A record of another type in the middle of the ClientHello is a protocol error.
        let Ok(record_len) = handshake_record(header) else {
            return Hello::Malformed;
        };
        let start = pos + RECORD_HEADER;
        let Some(fragment) = buf.get(start..start + record_len) else {
            return Hello::Incomplete {
                need: start + record_len,
            };
        };
        message.extend_from_slice(fragment);
        pos = start + record_len;
        if let [msg_type, a, b, c, body @ ..] = message.as_slice() {
            if *msg_type != HANDSHAKE_CLIENT_HELLO {
                return Hello::Malformed;
            }
            let body_len = be24(*a, *b, *c);
            if body_len > MAX_HANDSHAKE {
                return Hello::Malformed;
            }
            if let Some(body) = body.get(..body_len) {
                return match client_hello_body(body) {
                    Body::Sni(name) => Hello::Sni(Cow::Owned(name.to_vec())),
                    Body::NoSni => Hello::NoSni,
                    Body::Malformed => Hello::Malformed,
                };
            }
        }
    }
}

/// The length of a handshake record from its 5-byte header; `Err` with the verdict otherwise.
fn handshake_record(header: &[u8]) -> Result<usize, Hello<'static>> {
    let [kind, major, _minor, a, b] = header else {
        return Err(Hello::Malformed);
    };
    if *kind != CONTENT_HANDSHAKE || *major != 3 {
        return Err(Hello::NotTls);
    }
    let len = be16(*a, *b);
    if len == 0 || len > MAX_RECORD {
        return Err(Hello::Malformed);
    }
    Ok(len)
}

enum Body<'a> {
    Sni(&'a [u8]),
    NoSni,
    Malformed,
}

/// The ClientHello body after its 4-byte handshake header, checked as strictly as OpenSSL's
/// `tls_process_client_hello` where it matters for the SNI.
fn client_hello_body(body: &[u8]) -> Body<'_> {
    fn parse(body: &[u8]) -> Option<Body<'_>> {
        let mut r = Reader(body);
        r.take(2)?; // legacy_version
        r.take(32)?; // random
        let session_id = r.u8()?;
        if session_id > 32 {
            return None;
        }
        r.take(usize::from(session_id))?;
        let suites = r.u16()?;
        if suites < 2 || suites % 2 != 0 {
            return None;
        }
        r.take(suites)?;
        let compression = r.u8()?;
        if compression == 0 {
            return None;
        }
        r.take(usize::from(compression))?;
        if r.0.is_empty() {
            // No extensions at all (an old TLS 1.0-style client).
            return Some(Body::NoSni);
        }
        let len = r.u16()?;
        let mut extensions = Reader(r.take(len)?);
        if !r.0.is_empty() {
            return None;
        }
        let mut sni = None;
        while !extensions.0.is_empty() {
            let kind = extensions.u16()?;
            let len = extensions.u16()?;
            let data = extensions.take(len)?;
            if kind == usize::from(EXT_SERVER_NAME) {
                if sni.is_some() {
                    // Duplicate extensions are a decode error for OpenSSL.
                    return None;
                }
                sni = Some(server_name(data)?);
            }
        }
        Some(match sni {
            Some(name) => Body::Sni(name),
            None => Body::NoSni,
        })
    }
    parse(body).unwrap_or(Body::Malformed)
}

/// `ServerNameList`: OpenSSL takes the first entry, which must be a `host_name`.
fn server_name(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    let list_len = r.u16()?;
    let mut list = Reader(r.take(list_len)?);
    if !r.0.is_empty() || list.0.is_empty() {
        return None;
    }
    if list.u8()? != NAME_TYPE_HOST_NAME {
        return None;
    }
    let len = list.u16()?;
    list.take(len)
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        match self.take(1)? {
            [a] => Some(*a),
            _ => None,
        }
    }
    fn u16(&mut self) -> Option<usize> {
        match self.take(2)? {
            [a, b] => Some(be16(*a, *b)),
            _ => None,
        }
    }
}

fn be16(a: u8, b: u8) -> usize {
    usize::from(u16::from_be_bytes([a, b]))
}

fn be24(a: u8, b: u8, c: u8) -> usize {
    (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
}

/// The allow-list knows a name when it is a platform domain or has a cached decision.
impl KnownNames for crate::decision::AllowList {
    fn is_known(&self, name: &Domain) -> bool {
        crate::decision::AllowList::is_known(self, name)
    }
}

#[cfg(test)]
mod tests;
