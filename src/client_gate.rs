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
mod tests {
    use super::*;
    use pingora::tls::ssl::{
        Ssl, SslAcceptor, SslContext, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion,
    };
    use rand::{Rng, RngCore};
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A transport that records what the client writes and has nothing to read: the handshake
    /// stops after the ClientHello.
    #[derive(Default)]
    struct Capture(Vec<u8>);

    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A real ClientHello from OpenSSL for `sni` (none when `None`), pinned to one version.
    fn client_hello(sni: Option<&str>, version: SslVersion) -> Vec<u8> {
        let mut ctx = SslContext::builder(SslMethod::tls_client()).unwrap();
        ctx.set_min_proto_version(Some(version)).unwrap();
        ctx.set_max_proto_version(Some(version)).unwrap();
        let mut ssl = Ssl::new(&ctx.build()).unwrap();
        if let Some(name) = sni {
            ssl.set_hostname(name).unwrap();
        }
        ssl.set_connect_state();
        let mut stream = SslStream::new(ssl, Capture::default()).unwrap();
        assert!(
            stream.do_handshake().is_err(),
            "stops for lack of an answer"
        );
        stream.get_ref().0.clone()
    }

    fn sni(hello: &Hello<'_>) -> Option<String> {
        match hello {
            Hello::Sni(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// Re-frame the handshake message of a one-record ClientHello into records of `chunk`.
    fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
        let message = &hello[RECORD_HEADER..];
        let mut out = Vec::new();
        for piece in message.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    #[test]
    fn extracts_the_sni_of_real_client_hellos() {
        for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
            for name in ["shop.tenant.test", "Shop.Example.COM", "a.b.example.co.uk"] {
                let hello = client_hello(Some(name), version);
                assert_eq!(sni(&parse_client_hello(&hello)).as_deref(), Some(name));
            }
            let hello = client_hello(None, version);
            assert_eq!(parse_client_hello(&hello), Hello::NoSni, "{version:?}");
        }
        // The TLS 1.3 hello of this OpenSSL carries a large key share (ML-KEM when offered).
        let big = client_hello(Some("shop.tenant.test"), SslVersion::TLS1_3);
        assert!(big.len() > 200, "{}", big.len());
    }

    #[test]
    fn reassembles_a_client_hello_split_over_records() {
        let hello = client_hello(Some("split.tenant.test"), SslVersion::TLS1_3);
        for chunk in [1, 3, 4, 5, 100, 1000] {
            let split = split_records(&hello, chunk);
            let got = parse_client_hello(&split);
            assert_eq!(sni(&got).as_deref(), Some("split.tenant.test"), "{chunk}");
            assert!(matches!(got, Hello::Sni(Cow::Owned(_))) || chunk >= hello.len());
            // Every strict prefix asks for more, with a `need` beyond what it has.
            for cut in [0, 1, 4, 5, 6, split.len() / 2, split.len() - 1] {
                match parse_client_hello(&split[..cut]) {
                    Hello::Incomplete { need } => assert!(need > cut, "{chunk} {cut}"),
                    other => panic!("{chunk} {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_truncation_asks_for_more_and_the_need_is_exact() {
        let hello = client_hello(Some("shop.tenant.test"), SslVersion::TLS1_2);
        for cut in 0..hello.len() {
            match parse_client_hello(&hello[..cut]) {
                Hello::Incomplete { need } => {
                    assert!(need > cut && need <= hello.len(), "{cut}: {need}")
                }
                other => panic!("{cut}: {other:?}"),
            }
        }
        // Extra bytes after the ClientHello (0-RTT data, the next record) do not matter.
        let mut more = hello.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(
            sni(&parse_client_hello(&more)).as_deref(),
            Some("shop.tenant.test")
        );
    }

    #[test]
    fn garbage_is_never_an_sni_and_never_panics() {
        let cases: &[(&[u8], Hello<'_>)] = &[
            (b"GET / HTTP/1.1\r\n", Hello::NotTls),
            (b"G", Hello::NotTls),
            (&[22, 2], Hello::NotTls),
            (&[0x80, 0x2e, 0x01, 0x03, 0x01], Hello::NotTls), // SSLv2-style hello
            (&[22, 3, 1, 0, 0], Hello::Malformed),            // empty record
            (&[22, 3, 1, 0x40, 0x01], Hello::Malformed),      // record over 2^14
            (&[22, 3, 1, 0, 4, 2, 0, 0, 0], Hello::Malformed), // ServerHello
            (&[22, 3, 1, 0, 4, 1, 0, 0, 0], Hello::Malformed), // empty ClientHello body
            (&[22], Hello::Incomplete { need: 5 }),
            (&[], Hello::Incomplete { need: 5 }),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_client_hello(input), want, "{input:?}");
        }

        let mut rng = rand::rng();
        let mut buf = vec![0u8; 600];
        for i in 0..20_000 {
            let len = rng.random_range(0..buf.len());
            rng.fill_bytes(&mut buf[..len]);
            if i % 2 == 0 && len >= 9 {
                // Make most of it look like a handshake record so the parser goes deep.
                buf[..6].copy_from_slice(&[22, 3, 1, 0, 0, 1]);
                let body = (len - 5) as u16;
                buf[3..5].copy_from_slice(&body.to_be_bytes());
            }
            let _ = parse_client_hello(&buf[..len]);
        }
    }

    #[test]
    fn corrupting_a_real_client_hello_never_panics() {
        let hello = client_hello(Some("shop.tenant.test"), SslVersion::TLS1_2);
        let mut rng = rand::rng();
        for i in 0..hello.len() {
            for value in [0u8, 0xff, rng.random()] {
                let mut bad = hello.clone();
                bad[i] = value;
                if let Hello::Sni(name) = parse_client_hello(&bad) {
                    assert!(name.len() <= hello.len());
                }
            }
        }
        // Lengths that point past the end of their container.
        let mut bad = hello.clone();
        let n = bad.len();
        bad[n - 2] = 0xff;
        bad[n - 1] = 0xff;
        let _ = parse_client_hello(&bad);
    }

    #[test]
    fn server_name_follows_openssl() {
        let entry = |kind: u8, name: &[u8]| {
            let mut e = vec![kind];
            e.extend_from_slice(&(name.len() as u16).to_be_bytes());
            e.extend_from_slice(name);
            e
        };
        let list = |entries: &[Vec<u8>]| {
            let body: Vec<u8> = entries.concat();
            let mut l = (body.len() as u16).to_be_bytes().to_vec();
            l.extend_from_slice(&body);
            l
        };
        assert_eq!(
            server_name(&list(&[entry(0, b"a.example"), entry(0, b"b.example")])),
            Some(&b"a.example"[..])
        );
        assert_eq!(server_name(&list(&[entry(1, b"a.example")])), None);
        assert_eq!(server_name(&list(&[])), None);
        let mut trailing = list(&[entry(0, b"a.example")]);
        trailing.push(0);
        assert_eq!(server_name(&trailing), None);
        assert_eq!(server_name(&[0, 9, 0, 0]), None);
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new().unwrap())
    }

    fn limited(m: &Metrics) -> u64 {
        m.issuances_limited.with_label_values(&["client"]).get()
    }

    fn gate(settings: ClientGateSettings, m: Arc<Metrics>) -> ClientGate {
        let known = |name: &Domain| name.as_str().ends_with(".known.test");
        ClientGate::new(settings, Arc::new(known), m)
    }

    fn never(s: &str) -> Seen {
        Seen::NeverSeen(Domain::parse(s).unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        let s = ClientGateSettings::default();
        assert!(s.validate().is_empty());
        assert_eq!((s.burst, s.refill_interval), (20, Duration::from_secs(1)));
        let bad = ClientGateSettings {
            burst: 0,
            ipv6_prefix_len: 129,
            hello_timeout: Duration::ZERO,
            ..s
        };
        let fields: Vec<_> = bad.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["burst", "ipv6_prefix_len", "hello_timeout"]);
    }

    #[test]
    fn per_client_burst_then_refusal_then_refill() {
        let m = metrics();
        let g = gate(
            ClientGateSettings {
                burst: 3,
                ..Default::default()
            },
            m.clone(),
        );
        let ip: IpAddr = Ipv4Addr::new(203, 0, 113, 7).into();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(g.admit_at(ip, &never(&format!("n{i}.tenant.test")), t0));
        }
        assert!(!g.admit_at(ip, &never("n3.tenant.test"), t0));
        assert!(
            !g.admit_at(ip, &Seen::Unproven, t0),
            "unproven costs a token too"
        );
        assert_eq!(limited(&m), 2);
        // Known names and lookups that cannot happen are never limited.
        for _ in 0..100 {
            assert!(g.admit_at(ip, &Seen::Known, t0));
            assert!(g.admit_at(ip, &Seen::NoLookup, t0));
        }
        // Another client is independent.
        let other: IpAddr = Ipv4Addr::new(203, 0, 113, 8).into();
        assert!(g.admit_at(other, &never("n0.tenant.test"), t0));
        // One token per second comes back.
        assert!(!g.admit_at(ip, &never("x.tenant.test"), t0 + Duration::from_millis(900)));
        assert!(g.admit_at(ip, &never("x.tenant.test"), t0 + Duration::from_secs(1)));
        assert!(!g.admit_at(ip, &never("y.tenant.test"), t0 + Duration::from_secs(1)));
        assert_eq!(limited(&m), 4);
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let g = gate(
            ClientGateSettings {
                burst: 2,
                ..Default::default()
            },
            metrics(),
        );
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
        let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        assert!(g.admit_at(a, &never("a.tenant.test"), t0));
        assert!(g.admit_at(b, &never("b.tenant.test"), t0));
        assert!(!g.admit_at(a, &never("c.tenant.test"), t0), "same /64");
        assert!(g.admit_at(c, &never("c.tenant.test"), t0), "next /64");

        // IPv4-mapped addresses (a dual-stack listener) count as the IPv4 address.
        let v4: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        let mapped: IpAddr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().into();
        assert_eq!(client_key(mapped, 64), v4);
        assert_eq!(client_key(a, 128), a);
        assert_eq!(client_key(a, 0), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(
            client_key(b, 64),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn classification() {
        let g = gate(ClientGateSettings::default(), metrics());
        let hello = |name: &[u8]| Hello::Sni(Cow::Owned(name.to_vec()));
        assert_eq!(g.classify(hello(b"shop.known.test")), Seen::Known);
        assert_eq!(g.classify(hello(b"SHOP.Known.test.")), Seen::Known);
        assert_eq!(
            g.classify(hello(b"new.tenant.test")),
            never("new.tenant.test")
        );
        assert_eq!(g.classify(hello(b"bad_name.test")), Seen::NoLookup);
        assert_eq!(g.classify(hello(b"")), Seen::NoLookup);
        assert_eq!(g.classify(hello(b"\xff\xfe")), Seen::NoLookup);
        assert_eq!(g.classify(Hello::NoSni), Seen::NoLookup);
        assert_eq!(g.classify(Hello::NotTls), Seen::NoLookup);
        assert_eq!(g.classify(Hello::Malformed), Seen::Unproven);
    }

    #[tokio::test]
    async fn read_hello_waits_for_the_rest_within_the_bound() {
        let g = gate(
            ClientGateSettings {
                hello_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            metrics(),
        );
        let hello = client_hello(Some("slow.tenant.test"), SslVersion::TLS1_3);

        // Sent in three pieces with pauses: read whole, bytes kept in order.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in [&sent[..3], &sent[3..100], &sent[100..]] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            client
        });
        let mut buf = HelloBuf::new();
        let seen = g.read_hello(&mut server, &mut buf).await;
        assert_eq!(seen, never("slow.tenant.test"));
        assert_eq!(buf.filled(), &hello[..]);
        let _client = writer.await.unwrap();

        // Silent: passed on after the bound, nothing read.
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let mut buf = HelloBuf::new();
        assert_eq!(g.read_hello(&mut server, &mut buf).await, Seen::Unproven);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(2));
        assert!(buf.filled().is_empty());

        // Half a hello, then the client hangs up: no lookup can follow.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        {
            use tokio::io::AsyncWriteExt;
            client.write_all(&hello[..50]).await.unwrap();
        }
        drop(client);
        let mut buf = HelloBuf::new();
        assert_eq!(g.read_hello(&mut server, &mut buf).await, Seen::NoLookup);
        assert_eq!(buf.filled(), &hello[..50]);

        // Over the size cap: unproven, without waiting for the rest.
        let small = gate(
            ClientGateSettings {
                max_hello_bytes: 512,
                ..Default::default()
            },
            metrics(),
        );
        let mut padded = hello.clone();
        padded.truncate(5);
        padded[3..5].copy_from_slice(&4000u16.to_be_bytes());
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        {
            use tokio::io::AsyncWriteExt;
            client.write_all(&padded).await.unwrap();
        }
        let started = Instant::now();
        let mut buf = HelloBuf::new();
        assert_eq!(
            small.read_hello(&mut server, &mut buf).await,
            Seen::Unproven
        );
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_hello_larger_than_the_inline_buffer_moves_to_the_heap() {
        let g = gate(ClientGateSettings::default(), metrics());
        let hello = client_hello(Some("big.tenant.test"), SslVersion::TLS1_3);
        // The handshake in 1-byte records (6 bytes each): well beyond the inline 4 KiB.
        let split = split_records(&hello, 1);
        assert!(split.len() > INLINE, "{}", split.len());
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        {
            use tokio::io::AsyncWriteExt;
            client.write_all(&split).await.unwrap();
        }
        let mut buf = HelloBuf::new();
        assert_eq!(
            g.read_hello(&mut server, &mut buf).await,
            never("big.tenant.test")
        );
        assert_eq!(buf.filled(), &split[..]);
    }

    /// A self-signed certificate for the loopback TLS server.
    fn acceptor() -> SslAcceptor {
        let ck = rcgen::generate_simple_self_signed(vec!["shop.tenant.test".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        b.set_certificate_chain_file(&cert).unwrap();
        b.set_private_key_file(&key, SslFiletype::PEM).unwrap();
        b.build()
    }

    /// A blocking OpenSSL client for `sni` on its own thread; `Ok` when its handshake completes.
    fn tls_client(
        addr: std::net::SocketAddr,
        sni: &str,
    ) -> std::thread::JoinHandle<Result<(), String>> {
        let sni = sni.to_string();
        std::thread::spawn(move || {
            let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut ctx = SslContext::builder(SslMethod::tls_client()).unwrap();
            ctx.set_verify(SslVerifyMode::NONE);
            let mut ssl = Ssl::new(&ctx.build()).unwrap();
            ssl.set_hostname(&sni).unwrap();
            ssl.connect(tcp).map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// Accept one connection as Pingora does (socket digest set), run the gate, then the TLS
    /// handshake over the same stream.
    async fn serve_one(
        listener: &tokio::net::TcpListener,
        gate: &ClientGate,
        acceptor: &SslAcceptor,
    ) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let fd = tcp.as_raw_fd();
        let mut stream = L4Stream::from(tcp);
        stream.set_socket_digest(pingora::protocols::SocketDigest::from_raw_fd(fd));
        gate.process(&mut stream)
            .await
            .map_err(|e| format!("gate: {e}"))?;
        pingora::protocols::tls::server::handshake(acceptor, stream)
            .await
            .map(|_| ())
            .map_err(|e| format!("tls: {e}"))
    }

    #[tokio::test]
    async fn process_on_a_real_connection_rewinds_and_limits() {
        let m = metrics();
        let g = gate(
            ClientGateSettings {
                burst: 1,
                refill_interval: Duration::from_secs(3600),
                ..Default::default()
            },
            m.clone(),
        );
        let acceptor = acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        // A never-seen name within the budget: the handshake completes over the rewound bytes.
        let client = tls_client(addr, "shop.tenant.test");
        serve_one(&listener, &g, &acceptor).await.expect("first");
        client.join().unwrap().expect("client handshake");

        // Known names always pass, even with the client's bucket empty.
        let client = tls_client(addr, "www.known.test");
        serve_one(&listener, &g, &acceptor).await.expect("known");
        client.join().unwrap().expect("client handshake");
        assert_eq!(limited(&m), 0);

        // The second never-seen name from 127.0.0.1 is dropped before TLS.
        let client = tls_client(addr, "other.tenant.test");
        let err = serve_one(&listener, &g, &acceptor).await.unwrap_err();
        assert!(err.starts_with("gate:"), "{err}");
        assert!(client.join().unwrap().is_err());
        assert_eq!(limited(&m), 1);
    }
}
