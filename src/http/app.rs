//! The HTTP application Pingora runs on each listener: the `ProxyHttp` (or the port-80 app),
//! wrapped so that no client wait is unbounded.
//!
//! - **HTTP/1.1 request heads** are read here, not by Pingora, which bounds each read but not a
//!   whole head (slowloris: one byte every few seconds): the first byte of a request must come
//!   within `timeouts.idle` (keep-alive idle, or the time after the handshake; on a deadline
//!   queue, `idle`, which ends a wait up to a tenth of it and at most 100 ms late), the whole head
//!   within `timeouts.header` of its first byte, and at most `MAX_HEAD` bytes. The head is then
//!   handed to Pingora as already-read bytes.
//! - **HTTP/2 streams**: past `limits.connections.requests_per_connection` a stream is refused
//!   with REFUSED_STREAM (clients retry on a new connection); a request body with no byte for
//!   `timeouts.body` ends the stream (Pingora has no body timeout for HTTP/2); a connection
//!   killed elsewhere (client reset flood) ends all its streams.
//! - **TLS-ALPN-01** validation connections (ALPN `acme-tls/1`) are closed after the handshake,
//!   which was the whole exchange.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::http::idle::IdleQueue;
use crate::http::timeouts::TimeoutSettings;
use crate::limits::connections::{CloseReason, Connection, Connections};
use crate::tls::accept::connection_key;

/// Largest request head read (request line and headers), like nginx's default
/// `large_client_header_buffers` of 4 × 8 KiB plus room. Larger ones get 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// The HTTP application of one listener.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    timeouts: TimeoutSettings,
    connections: Arc<Connections>,
    options: HttpServerOptions,
    h2: Option<H2Options>,
    /// The idle waits between HTTP/1.1 requests.
    idle: Arc<IdleQueue>,
}

impl<A> EdgeApp<A> {
    pub fn new(
        inner: A,
        timeouts: TimeoutSettings,
        connections: Arc<Connections>,
        options: HttpServerOptions,
        h2: Option<H2Options>,
    ) -> EdgeApp<A> {
        EdgeApp {
            inner: Arc::new(inner),
            idle: IdleQueue::new(timeouts.idle),
            timeouts,
            connections,
            options,
            h2,
        }
    }

    fn connection_of(&self, session: &ServerSession) -> Option<Arc<Connection>> {
        let digest = session.digest()?.socket_digest.as_ref()?;
        self.connections.find(connection_key(digest))
    }
}

/// The session settings an HTTP/1.1 connection carries from one request to the next, held
/// while it waits for its next request head (the session itself is made once the head came).
pub enum H1Settings {
    /// Taken out of a session (the first request's, or one Pingora made).
    Taken {
        keepalive: Option<u64>,
        reuses: Option<u32>,
        user_context: Option<Box<dyn std::any::Any + Send + Sync>>,
    },
    /// What the previous request left (Pingora's `ReusedHttpStream`). The edge never enables
    /// HTTP/1.1 pipelining, so these carry no bytes read past the previous request.
    Reused(Option<HttpPersistentSettings>),
}

impl H1Settings {
    fn apply_to(self, session: &mut ServerSession) {
        match self {
            H1Settings::Taken {
                keepalive,
                reuses,
                user_context,
            } => {
                session.set_keepalive(keepalive);
                session.set_keepalive_reuses_remaining(reuses);
                session.set_connection_user_context(user_context);
            }
            H1Settings::Reused(Some(settings)) => settings.apply_to_session(session),
            H1Settings::Reused(None) => {}
        }
    }
}

/// A request's (or stream's) future, boxed, as `HttpServerApp::process_new_http` returns it.
type Served<'fut> = Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'fut>>;

/// How waiting for a request head ended, when it did not produce one.
enum NoHead {
    Idle,
    Slow,
    TooBig,
    Gone,
    Shutdown,
}

/// The end of a request head in `buf` (`\r\n\r\n`, or bare `\n\n` as httparse accepts),
/// looking from `from` on. Empty lines before the request line do not count: httparse skips
/// them, so a head made of them alone would be handed to Pingora unfinished, and Pingora
/// bounds each read but not the whole head.
fn head_complete(buf: &[u8], from: usize) -> bool {
    let Some(first) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return false;
    };
    // The usual case: a read ended with the head (the last four bytes are the end of a head
    // that started at `first`, which is not one of them).
    if buf.ends_with(b"\r\n\r\n") {
        return true;
    }
    let start = from.saturating_sub(3).max(first);
    let tail = &buf[start..];
    tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n")
}

/// Read one request head: the first byte within `idle`, the whole head within `header` of it.
/// A shutdown ends the wait for the first byte (the queue's wait ends then too).
async fn read_head(
    stream: &mut Stream,
    timeouts: &TimeoutSettings,
    idle: &Arc<IdleQueue>,
) -> Result<BytesMut, NoHead> {
    let ended = || {
        if idle.is_shut_down() {
            NoHead::Shutdown
        } else {
            NoHead::Idle
        }
    };
    if idle.is_shut_down() {
        return Err(NoHead::Shutdown);
    }
    // The idle wait is an entry in the application's deadline queue, not a timer per request
    // (a tokio timer on an otherwise idle wheel wakes the runtime's driver: an eventfd write
    // and an extra epoll round on every other request, measured with strace; Pingora's timer
    // costs a few thousand instructions per request, callgrind). The read is polled first.
    let mut buf = tokio::select! {
        biased;
        read = first_read(stream) => match read {
            Ok(buf) if buf.is_empty() => return Err(NoHead::Gone),
            Err(_) => return Err(NoHead::Gone),
            Ok(buf) => buf,
        },
        () = idle.wait() => return Err(ended()),
    };
    // Most heads come whole in their first read: then no clock is read here.
    if head_complete(&buf, 0) {
        return Ok(buf);
    }
    let deadline = Instant::now() + timeouts.header;
    loop {
        let scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Err(NoHead::TooBig);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        // `read_buf` is cancel-safe: no byte is lost when the deadline wins.
        let left = deadline.saturating_duration_since(Instant::now());
        match fast_timeout(left, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(NoHead::Slow),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Gone),
            Ok(Ok(_)) => {}
        }
        if head_complete(&buf, scanned) {
            return Ok(buf);
        }
    }
}

/// Bytes a first read takes at most (a TLS record's plaintext is at most 16 KiB).
const FIRST_READ: usize = 16 * 1024;

thread_local! {
    /// The buffer of `first_read`: one per thread, not one per waiting connection.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; FIRST_READ].into_boxed_slice());
}

/// The first bytes of the next request, read into this thread's scratch buffer and copied
/// into a buffer of their own only once they came: a keep-alive connection waiting for its
/// next request holds no read buffer (`make bench-load`, row m: memory per idle connection).
/// Empty: the client closed the connection.
async fn first_read(stream: &mut Stream) -> std::io::Result<BytesMut> {
    std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = tokio::io::ReadBuf::new(&mut scratch[..]);
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read) {
                std::task::Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    let mut buf = BytesMut::with_capacity(filled.len());
                    buf.extend_from_slice(filled);
                    std::task::Poll::Ready(Ok(buf))
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
    })
    .await
}

/// When the last byte of a request body arrived (HTTP/2), for the body timeout. The proxy
/// touches it per chunk and finishes it at the end of the body.
#[derive(Debug)]
pub struct BodyClock {
    start: Instant,
    last_ms: AtomicU64,
    done: AtomicBool,
}

impl BodyClock {
    fn new() -> BodyClock {
        BodyClock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// A chunk arrived.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The body is complete: no more waiting on the client.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Resolves when no chunk arrived for `limit` before the body was complete.
    async fn stalled(&self, limit: Duration) {
        loop {
            if self.done.load(Ordering::Relaxed) {
                return std::future::pending().await;
            }
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> EdgeApp<A> {
    /// What an HTTP/1.1 request's wait needs from the session Pingora handed over, taken out
    /// of it at once (see `process_new_http`). `None`: not an HTTP/1.1 session.
    fn h1_parts(&self, mut session: ServerSession) -> Option<(Stream, H1Settings)> {
        let keepalive = session.get_keepalive();
        let reuses = session.get_keepalive_reuses_remaining();
        let user_context = session.take_connection_user_context();
        let ServerSession::H1(h1) = session else {
            return None;
        };
        let settings = H1Settings::Taken {
            keepalive,
            reuses,
            user_context,
        };
        Some((h1.into_inner(), settings))
    }

    /// One HTTP/1.1 request of a connection: its head read here (bounded), then the session
    /// made with `settings` and handed to the application. `ConnApp` runs the keep-alive loop
    /// over this, so that no session is made before a request came.
    pub async fn http1(
        self: &Arc<Self>,
        mut stream: Stream,
        settings: H1Settings,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.idle.watch_shutdown(shutdown);
        let head = match read_head(&mut stream, &self.timeouts, &self.idle).await {
            Ok(head) => head,
            Err(why) => {
                let reason = match why {
                    NoHead::Idle => Some(CloseReason::IdleTimeout),
                    NoHead::Slow => Some(CloseReason::HeaderTimeout),
                    NoHead::Shutdown => Some(CloseReason::Shutdown),
                    NoHead::TooBig => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        let _ = stream.flush().await;
                        None
                    }
                    NoHead::Gone => None,
                };
                // The connection's entry is looked up only here, when it ends for a reason.
                let conn = reason.and_then(|_| {
                    let digest = stream.get_socket_digest()?;
                    self.connections.find(connection_key(&digest))
                });
                if let (Some(reason), Some(conn)) = (reason, conn) {
                    conn.close_because(reason);
                }
                return None;
            }
        };
        // The session is made in a block that ends before the wait: a local alive across an
        // `.await`, even one moved out, keeps its room in the future (a `ServerSession` is
        // about 1.4 KB).
        let served = {
            let mut session = ServerSession::new_http1(stream);
            settings.apply_to(&mut session);
            session.set_pipelined_prefix(head);
            self.inner.process_new_http(session, shutdown)
        };
        // A connection killed from outside (its tenant's WebSocket, no longer allowed) is
        // ended by `ConnApp`, which waits for the kill beside the whole HTTP/1.1 connection
        // (its keep-alive loop, `ConnApp::serve_h1`): no wait of its own per request.
        served.await
    }

    /// One HTTP/2 stream: the request cap, then Pingora, beside the connection's kill and the
    /// body's idle timer. The checks and Pingora's future are made here, before the future
    /// this returns: that one then holds neither the session (about 1.4 KB, moved into
    /// Pingora's future) nor room for it, and is not a copy of it.
    fn http2<'this, 'watch, 'fut>(
        self: &'this Arc<Self>,
        mut session: ServerSession,
        shutdown: &'watch ShutdownWatch,
    ) -> Served<'fut>
    where
        'this: 'fut,
        'watch: 'fut,
        Self: 'fut,
    {
        let conn = self.connection_of(&session);
        if let Some(conn) = &conn {
            if !conn.note_request() {
                session.shutdown_with_reason(h2::Reason::REFUSED_STREAM);
                return Box::pin(std::future::ready(None));
            }
        }
        let clock = (!session.is_body_empty()).then(|| {
            let clock = Arc::new(BodyClock::new());
            session
                .req_header_mut()
                .extensions_mut()
                .insert(clock.clone());
            clock
        });
        let served = self.inner.process_new_http(session, shutdown);
        Box::pin(async move {
            let killed = async {
                match &conn {
                    Some(conn) => conn.killed().await,
                    None => std::future::pending().await,
                }
            };
            let stalled = async {
                match &clock {
                    Some(clock) => clock.stalled(self.timeouts.body).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                served = served => served,
                () = killed => None,
                () = stalled => {
                    self.connections.count(CloseReason::BodyTimeout);
                    None
                }
            }
        })
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for EdgeApp<A> {
    // Written out rather than `async fn`: the future boxed here lives for the whole wait of a
    // keep-alive connection for its next request. As an `async fn` it would hold the
    // `ServerSession` it was given (a few KiB) all that time; this one holds the stream and a
    // few settings taken out of the session first (massif: 3.5 KiB less per idle connection).
    fn process_new_http<'this, 'watch, 'fut>(
        self: &'this Arc<Self>,
        session: ServerSession,
        shutdown: &'watch ShutdownWatch,
    ) -> Served<'fut>
    where
        'this: 'fut,
        'watch: 'fut,
        Self: 'fut,
    {
        match session {
            ServerSession::H1(_) => match self.h1_parts(session) {
                Some((stream, settings)) => Box::pin(self.http1(stream, settings, shutdown)),
                None => Box::pin(std::future::ready(None)),
            },
            session if session.is_http2() => self.http2(session, shutdown),
            session => self.inner.process_new_http(session, shutdown),
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.h2.clone()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // ALPN `acme-tls/1`: a CA validating TLS-ALPN-01; the handshake was the exchange.
        drop(stream);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_an_empty_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n", 0));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        // The terminator split across reads is still found.
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(head_complete(buf, buf.len() - 1));
        // Empty lines before the request line are no head (httparse skips them).
        assert!(!head_complete(b"\r\n\r\n", 0));
        assert!(!head_complete(b"\r\n\r\nGE", 0));
        assert!(!head_complete(b"\n\n\n", 0));
        assert!(head_complete(
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            0
        ));
    }

    #[tokio::test]
    async fn a_stalled_body_is_noticed_and_a_finished_one_never() {
        let clock = BodyClock::new();
        let limit = Duration::from_millis(50);
        let started = Instant::now();
        clock.stalled(limit).await;
        assert!(started.elapsed() >= limit);
        let clock = Arc::new(BodyClock::new());
        clock.finish();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), clock.stalled(limit))
                .await
                .is_err(),
            "a complete body never stalls"
        );
    }
}
