//! One client connection, after its handshake (Pingora's `ServerApp`, once per connection).
//!
//! - On the plain-HTTP listener, which has no pre-TLS step: the PROXY protocol where the listener
//!   opted in, and admission against the connection limits (`tls::accept` does both for
//!   HTTPS).
//! - What the connection speaks (HTTP/1.1, HTTP/2), for the open-connections gauge.
//! - HTTP/2: a client that has not sent its connection preface within `timeouts.h2_preface` is
//!   closed (Pingora would wait for ever), and a connection Pingora closed for being idle is
//!   counted as `h2_idle_timeout`.
//! - A connection killed from outside (a client reset flood) is closed.
//! - HTTP/1.1: the keep-alive loop is run here (`serve_h1`, over `EdgeApp::http1`) rather than
//!   by Pingora's `ServerApp` for HTTP applications, whose one future serves both protocols and
//!   is sized for HTTP/2's handshake and stream loop (a 3.8 KB allocation every HTTP/1.1
//!   connection held for its whole life: heaptrack, `make bench-load` row m), and which makes
//!   a session for each request before its head came, which the edge, reading heads itself,
//!   would take apart again (callgrind: a few hundred instructions per request).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::app::{EdgeApp, H1Settings};
use crate::http::timeouts::TimeoutSettings;
use crate::limits::connections::{CloseReason, Connection, Connections, Listener, Protocol};
use crate::tls::accept::{accept_proxy_header, connection_key, ProxyProtocol};

/// The bytes a client sent and when its last byte came (HTTP/2 watchdogs).
#[derive(Debug)]
struct ReadClock {
    start: Instant,
    bytes: AtomicU64,
    last_ms: AtomicU64,
    /// The client closed its side (or its socket failed).
    ended: AtomicBool,
}

impl ReadClock {
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A client stream that notes every read in a `ReadClock`; everything else passes through.
#[derive(Debug)]
struct Watched {
    inner: Stream,
    clock: Arc<ReadClock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        let eof = n == 0 && buf.remaining() > 0;
        if matches!(polled, Poll::Ready(Err(_))) || (matches!(polled, Poll::Ready(Ok(()))) && eof) {
            self.clock.ended.store(true, Ordering::Relaxed);
        }
        if n > 0 {
            self.clock.bytes.fetch_add(n as u64, Ordering::Relaxed);
            let ms = self.clock.start.elapsed().as_millis() as u64;
            self.clock.last_ms.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The keep-alive Pingora gives the first session of an HTTP/1.1 connection (its `ServerApp`
/// does the same). The wait for each next request is `timeouts.idle`, in `http/app.rs`.
const PINGORA_KEEPALIVE_SECS: u64 = 60;

/// The connection-level application of one listener, around the HTTP application.
pub struct ConnApp<A> {
    inner: Arc<A>,
    listener: Listener,
    connections: Arc<Connections>,
    /// The plain-HTTP listener's PROXY protocol (HTTPS handles it before TLS).
    proxy: Option<ProxyProtocol>,
    timeouts: TimeoutSettings,
}

impl<A> ConnApp<A> {
    pub fn new(
        inner: A,
        listener: Listener,
        connections: Arc<Connections>,
        proxy: Option<ProxyProtocol>,
        timeouts: TimeoutSettings,
    ) -> ConnApp<A> {
        ConnApp {
            inner: Arc::new(inner),
            listener,
            connections,
            proxy,
            timeouts,
        }
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnApp<EdgeApp<A>> {
    /// Plain HTTP: PROXY protocol where configured, then admission. `None`: refused (counted).
    async fn admit_plain(&self, stream: Stream) -> Option<(Stream, Arc<Connection>)> {
        let mut l4: Box<L4Stream> = stream.into_any().downcast::<L4Stream>().ok()?;
        let digest = l4.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        if let Some(proxy) = self.proxy.as_ref().filter(|p| p.expected_on(local)) {
            if let Err(reason) = accept_proxy_header(&mut l4, proxy).await {
                self.connections.count(reason);
                return None;
            }
        }
        let digest = l4.get_socket_digest()?;
        let ip = digest.peer_addr().and_then(|a| a.as_inet())?.ip();
        let conn = self.connections.admit(ip, self.listener).ok()?;
        conn.register(connection_key(&digest));
        Some((l4, conn))
    }

    /// HTTP/1.1 keep-alive, as Pingora's `ServerApp` runs it for an HTTP application (the
    /// first request keeps the connection open for 60 s unless the server is shutting down;
    /// each reused stream carries its settings into the next session), without the HTTP/2 half
    /// of that future, and with each session made only once its request head came
    /// (`EdgeApp::http1`; Pingora would make one to wait in, and the edge another).
    async fn serve_h1(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let first = H1Settings::Taken {
            keepalive: (!*shutdown.borrow()).then_some(PINGORA_KEEPALIVE_SECS),
            reuses: self
                .inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
            user_context: None,
        };
        // Boxed: the request's future is not held in this one between requests.
        let mut served = Box::pin(self.inner.http1(stream, first, shutdown)).await;
        while let Some((stream, settings)) = served.map(|r| r.consume()) {
            let settings = H1Settings::Reused(settings);
            served = Box::pin(self.inner.http1(stream, settings, shutdown)).await;
        }
        None
    }

    async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        conn: Option<&Arc<Connection>>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let clock = Arc::new(ReadClock {
            start: Instant::now(),
            bytes: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        let watched: Stream = Box::new(Watched {
            inner: stream,
            clock: clock.clone(),
        });
        // The client preface is 24 bytes; its SETTINGS frame follows.
        let preface = async {
            tokio::time::sleep(self.timeouts.h2_preface).await;
            if clock.bytes.load(Ordering::Relaxed) >= 24 {
                std::future::pending::<()>().await;
            }
        };
        let killed = async {
            match conn {
                Some(conn) => conn.killed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = self.inner.process_new(watched, shutdown) => {
                // Pingora closes an HTTP/2 connection with no stream for `h2_idle` without a
                // word. Its timer starts when the last stream ends; the client's last frames
                // (a SETTINGS or PING acknowledgement) may come a moment later.
                let quiet = self.timeouts.h2_idle.saturating_sub(self.timeouts.h2_idle / 4);
                let ended = clock.ended.load(Ordering::Relaxed);
                if !ended && !*shutdown.borrow() && clock.idle() >= quiet {
                    if let Some(conn) = conn {
                        conn.close_because(CloseReason::H2IdleTimeout);
                    }
                }
                served
            }
            () = preface => {
                match conn {
                    Some(conn) => conn.close_because(CloseReason::H2PrefaceTimeout),
                    None => self.connections.count(CloseReason::H2PrefaceTimeout),
                }
                None
            }
            () = killed => None,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnApp<EdgeApp<A>> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (stream, owned) = match self.listener {
            Listener::Http => {
                // Boxed, like `serve_h2` below: a state this future would otherwise hold room
                // for during every HTTP/1.1 connection's life.
                let (stream, conn) = Box::pin(self.admit_plain(stream)).await?;
                (stream, Some(conn))
            }
            Listener::Https => (stream, None),
        };
        let conn = owned.or_else(|| {
            let digest = stream.get_socket_digest()?;
            self.connections.find(connection_key(&digest))
        });
        let protocol = match stream.selected_alpn_proto() {
            Some(ALPN::H2) => Protocol::H2,
            Some(ALPN::H1) | None => Protocol::H1,
            Some(_) => Protocol::Other,
        };
        if let Some(conn) = &conn {
            conn.set_protocol(protocol);
        }
        if protocol == Protocol::H2 {
            return Box::pin(self.serve_h2(stream, conn.as_ref(), shutdown)).await;
        }
        let killed = async {
            match &conn {
                Some(conn) => conn.killed().await,
                None => std::future::pending().await,
            }
        };
        let h1 = protocol == Protocol::H1
            && !self
                .inner
                .server_options()
                .is_some_and(|o| o.h2c || o.force_custom);
        let served = async {
            if h1 {
                self.serve_h1(stream, shutdown).await
            } else {
                self.inner.process_new(stream, shutdown).await
            }
        };
        // `biased`: the connection first, without a random draw on every wake-up.
        tokio::select! {
            biased;
            served = served => served,
            () = killed => None,
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
