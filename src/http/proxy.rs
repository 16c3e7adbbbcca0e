//! The HTTPS side: Pingora's `ProxyHttp` for requests that arrived over TLS.
//!
//! `early_request_filter` bounds the client's waits for this request (body, send). Then
//! `request_filter` handles the special cases first, each answered by the edge itself:
//! no Host (400), a Host that is not the connection's TLS name (421, RFC 9110 §15.5.20),
//! a name that is no longer allowed (421; resumed sessions skip the certificate callback,
//! so the allow-list is re-checked per request). Then the normal path: pick the pool by Host,
//! a healthy backend (retrying a connect failure once on another backend; an idempotent
//! request whose kept-alive upstream connection turned out closed is retried on a new one, to
//! any backend), forward with the forwarding headers `http::forwarded` writes. Shared state
//! lives on `&self`; per-request state in `RequestCtx`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::tls::SslDigest;
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::certs::manager::CertManager;
use crate::domain::Domain;
use crate::http::app::BodyClock;
use crate::http::deadline::{Deadline, Late};
use crate::http::forwarded::{self, ForwardingSettings};
use crate::http::host::{request_host, strip_port};
use crate::http::request_id::{RequestId, X_REQUEST_ID};
use crate::http::timeouts::TimeoutSettings;
use crate::http::upstream::Upstreams;
use crate::limits::connections::{CloseReason, Connections};
use crate::logging::access::AccessLog;
use crate::logging::line::RequestLine;
use crate::metrics::{label_set, Metrics};
use crate::tls::accept::connection_key;
use crate::tls::handshake::ConnName;

label_set! {
    /// `tenant_edge_requests_refused_total{reason}`: HTTPS requests the edge answered itself.
    pub enum RequestRefusal {
        Misdirected => "misdirected",
        NoHost => "no_host",
        NotAllowed => "not_allowed",
    }
}

pub struct EdgeProxy {
    manager: Arc<CertManager>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    /// What the per-request settings need besides the proxy's core parts.
    pub policy: ClientPolicy,
}

/// How the proxy treats a client: its timeouts, whom it trusts, its connection limits.
#[derive(Clone)]
pub struct ClientPolicy {
    pub timeouts: TimeoutSettings,
    pub forwarding: ForwardingSettings,
    pub connections: Arc<Connections>,
    pub access_log: Arc<AccessLog>,
}

/// A request this soon after the allow-list said yes to its connection's name (in the full
/// handshake or for an earlier request) uses that answer: a connection asks at most once a
/// second, however many requests it carries; a tenant removed is refused within a second.
const ASKED_RECENTLY: Duration = Duration::from_secs(1);

/// `ErrorType::Custom` of a request body slower than `timeouts.body_min_rate`.
const BODY_TOO_SLOW: &str = "body_too_slow";

/// The per-request state of a body still coming, a failed connect or split deadlines.
#[derive(Default)]
struct RareCtx {
    /// The backend a connect failed to, which the one retry skips. A retry after a kept-alive
    /// connection failed (the backend closed it as it was reused) may pick the same backend:
    /// with one kamal-proxy behind the edge, that is the only one there is.
    connect_failed: Option<SocketAddr>,
    /// When the first byte of the request body came, and how many bytes came since.
    body: Option<(Instant, u64)>,
    /// The watchdog of the pool's head and body deadlines, when they differ.
    deadline: Option<Deadline>,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    /// An upgrade request (WebSocket), as `early_request_filter` found (a header lookup once).
    upgrade: bool,
    /// The connection's TLS digest (its `ConnName`), once the request was checked.
    ssl: Option<Arc<SslDigest>>,
    host: Option<Domain>,
    pool: Option<usize>,
    /// The backend of the latest attempt.
    upstream: Option<SocketAddr>,
    /// What few requests need, apart: Pingora's request future holds the context by value
    /// (in more than one of its nested futures), and copies that future once per request, so
    /// every byte here is paid on every request (callgrind: about 3 instructions a byte).
    rare: Option<Box<RareCtx>>,
    request_id: Option<RequestId>,
    /// Why the edge answered the request itself (`requests_refused_total{reason}`).
    refusal: Option<&'static str>,
    upstream_status: Option<u16>,
}

impl RequestCtx {
    fn connect_failed(&self) -> Option<SocketAddr> {
        self.rare.as_ref().and_then(|r| r.connect_failed)
    }

    fn deadline(&self) -> Option<&Deadline> {
        self.rare.as_ref().and_then(|r| r.deadline.as_ref())
    }
}

impl EdgeProxy {
    pub fn new(
        manager: Arc<CertManager>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
        policy: ClientPolicy,
    ) -> EdgeProxy {
        EdgeProxy {
            manager,
            upstreams,
            metrics,
            policy,
        }
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        reason: RequestRefusal,
        body: &'static str,
    ) -> Result<bool> {
        ctx.refusal = Some(reason.label());
        self.metrics
            .requests_refused
            .with_label_values(&[reason.label()])
            .inc();
        session
            .respond_error_with_body(status, Bytes::from_static(body.as_bytes()))
            .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            upgrade: false,
            ssl: None,
            host: None,
            pool: None,
            upstream: None,
            rare: None,
            request_id: None,
            refusal: None,
            upstream_status: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let t = &self.policy.timeouts;
        ctx.upgrade = session.is_upgrade_req();
        // HTTP/1.1: no byte of the body for `body`; both: no progress writing for `send`. An
        // upgrade (WebSocket) gets its pool's `upgrade_timeout` in `upstream_peer` instead:
        // after the 101, this read timeout is the client side's idle timeout.
        if !ctx.upgrade {
            session.set_read_timeout(Some(t.body));
        }
        session.set_write_timeout(Some(t.send));
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let t = &self.policy.timeouts;
        // The rate of a body still coming (the last chunk ends it: nothing is left to time; a
        // request without a body, most of them, reads no clock here). An upgraded connection
        // (WebSocket) carries messages, not a body: no rate applies.
        if !end_of_stream && t.body_min_rate > 0 && !ctx.upgrade {
            let now = Instant::now();
            let rare = ctx.rare.get_or_insert_with(Box::default);
            let (started, bytes) = rare.body.get_or_insert((now, 0));
            *bytes += body.as_ref().map_or(0, |b| b.len() as u64);
            let elapsed = now.saturating_duration_since(*started);
            if elapsed > t.body && (*bytes as f64) < t.body_min_rate as f64 * elapsed.as_secs_f64()
            {
                return Err(Error::create(
                    ErrorType::Custom(BODY_TOO_SLOW),
                    ErrorSource::Downstream,
                    Some(format!("request body below {} bytes/s", t.body_min_rate).into()),
                    None,
                ));
            }
        }
        // HTTP/2 bodies are timed by `http::app` (Pingora has no body timeout for them).
        if let Some(clock) = session.req_header().extensions.get::<Arc<BodyClock>>() {
            clock.touch();
            if end_of_stream {
                clock.finish();
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let trusted = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| self.policy.forwarding.trusts(a.ip()));
        let incoming = session.req_header().headers.get(&X_REQUEST_ID);
        ctx.request_id = Some(RequestId::new(incoming, trusted));
        let Some(host_header) = request_host(session.req_header()) else {
            return self
                .refuse(
                    session,
                    ctx,
                    400,
                    RequestRefusal::NoHost,
                    "400 Bad Request: no Host header\n",
                )
                .await;
        };
        // The digest is shared: holding it leaves the session free to answer.
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        let conn_name = ssl.as_deref().and_then(|s| s.extension.get::<ConnName>());
        // The usual Host is the connection's TLS name as the client sent it (ASCII, any case):
        // that one needs no parse (IDNA and all).
        let stripped = strip_port(host_header);
        let host = match conn_name {
            Some(c) if stripped.eq_ignore_ascii_case(c.name.as_str()) => Some(c.name.clone()),
            _ => Domain::parse(stripped).ok(),
        };
        let conn_name = conn_name.filter(|c| host.as_ref() == Some(&c.name));
        let (Some(host), Some(conn_name)) = (host, conn_name) else {
            return self
                .refuse(
                    session,
                    ctx,
                    421,
                    RequestRefusal::Misdirected,
                    "421 Misdirected Request: Host does not match the TLS server name\n",
                )
                .await;
        };
        // The allow-list said yes for this connection a moment ago (its full handshake, or an
        // earlier request): do not ask again. Otherwise, and on every resumed session's first
        // request, ask it (its cache).
        if !conn_name.allowed_within(ctx.started, ASKED_RECENTLY) {
            if !self.manager.is_allowed(&host).await {
                return self
                    .refuse(
                        session,
                        ctx,
                        421,
                        RequestRefusal::NotAllowed,
                        "421 Misdirected Request: this name is not served here\n",
                    )
                    .await;
            }
            conn_name.note_allowed();
        }
        if ctx.upgrade {
            // A WebSocket: closed at once if the tenant stops being allowed.
            let conn = session
                .digest()
                .and_then(|d| d.socket_digest.as_ref())
                .and_then(|d| self.policy.connections.find(connection_key(d)));
            if let Some(conn) = conn {
                self.policy.connections.register_upgrade(&host, &conn);
            }
        }
        ctx.pool = Some(self.upstreams.pool_for(&host));
        ctx.host = Some(host);
        ctx.ssl = ssl;
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool_index = ctx.pool.unwrap_or(0);
        let host = ctx.host.as_ref().map_or("", |h| h.as_str());
        let Some(addr) = self
            .upstreams
            .select(pool_index, host, ctx.connect_failed())
        else {
            let mut e =
                Error::explain(ErrorType::HTTPStatus(502), "no healthy backend left to try");
            e.set_retry(false);
            return Err(e);
        };
        ctx.upstream = Some(addr);
        let pool = self.upstreams.pool(pool_index);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(if ctx.upgrade {
            // A WebSocket: idle for as long as upgrade_timeout, on both sides.
            session.set_read_timeout(Some(pool.upgrade_timeout));
            pool.upgrade_timeout
        } else {
            // Split deadlines (a watchdog enforces each, `connected_to_upstream`): the
            // longer one is the connection's.
            pool.response_timeout.max(pool.body_timeout)
        });
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let pool = ctx.pool.map(|p| self.upstreams.pool(p));
        if let Some(pool) = pool.filter(|p| !ctx.upgrade && p.response_timeout != p.body_timeout) {
            // A new connection's watchdog replaces the last attempt's (none if the socket
            // could not be duplicated: the connection's read timeout still applies).
            let deadline = Deadline::watch(fd, pool.response_timeout, pool.body_timeout);
            if deadline.is_some() || ctx.rare.is_some() {
                ctx.rare.get_or_insert_with(Box::default).deadline = deadline;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if let Some(d) = ctx.deadline() {
            d.head_received();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Shutting down: tell HTTP/1.1 clients this connection closes after the response.
        if session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(d) = ctx.deadline() {
            d.body_received();
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // One retry, on another backend (`upstream_peer` skips `ctx.connect_failed`).
        if ctx.connect_failed().is_none() {
            ctx.rare.get_or_insert_with(Box::default).connect_failed = ctx.upstream;
            if let Some(pool) = ctx.pool {
                self.upstreams.pool(pool).metrics.retries.inc();
            }
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A deadline that passed is an answer (504), not a broken pooled connection to retry.
        let late = ctx.deadline().and_then(Deadline::fired).is_some()
            || matches!(e.etype(), ErrorType::ReadTimedout);
        if late
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = client_ip.is_some_and(|ip| self.policy.forwarding.trusts(ip));
        let conn_name = ctx
            .ssl
            .as_deref()
            .and_then(|s| s.extension.get::<ConnName>());
        let formatted;
        let client = match (client_ip, conn_name) {
            (Some(ip), Some(conn)) => conn.forwarded_for(ip),
            (Some(ip), None) => {
                formatted = HeaderValue::try_from(ip.to_string()).ok();
                formatted.as_ref()
            }
            (None, _) => None,
        };
        // The host as the client sent it: `:authority` (HTTP/2) or Host, like `request_host`.
        let host_header = req.headers.get(http::header::HOST).cloned();
        let host = match req.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => host_header.clone(),
        };
        // HTTP/2 clients send :authority, not Host; HTTP/1.1 upstreams need Host.
        if let (None, Some(host)) = (&host_header, &host) {
            req.insert_header(http::header::HOST, host.clone())?;
        }
        forwarded::rewrite(req, client, trusted, host)?;
        if let Some(id) = &ctx.request_id {
            // A static name: Pingora takes its spelling as it is (see `forwarded`).
            req.insert_header("X-Request-Id", id.header_value())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                // The upstream took too long: for its response head (Pingora's read timeout,
                // or the watchdog of split deadlines), or to accept the connection.
                ErrorSource::Upstream
                    if matches!(
                        e.etype(),
                        ErrorType::ReadTimedout | ErrorType::ConnectTimedout
                    ) || ctx.deadline().and_then(Deadline::fired) == Some(Late::Head) =>
                {
                    504
                }
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    // The client's body averages under `timeouts.body_min_rate`.
                    ErrorType::Custom(BODY_TOO_SLOW) => {
                        self.policy.connections.count(CloseReason::BodyTooSlow);
                        408
                    }
                    // The client stopped sending its body: tell it, then close.
                    ErrorType::ReadTimedout => {
                        self.policy.connections.count(CloseReason::BodyTimeout);
                        408
                    }
                    // The client stopped reading: nothing more can be written to it.
                    ErrorType::WriteTimedout => {
                        self.policy.connections.count(CloseReason::SendTimeout);
                        0
                    }
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let body: &'static str = match code {
                502 => "502 Bad Gateway: no upstream answered\n",
                504 => "504 Gateway Timeout: the upstream did not answer in time\n",
                408 => "408 Request Timeout: the request body stopped arriving\n",
                400 => "400 Bad Request\n",
                _ => "tenant-edge could not complete the request\n",
            };
            if let Err(err) = session
                .respond_error_with_body(code, Bytes::from_static(body.as_bytes()))
                .await
            {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // An HTTP/2 stream the client gave up on (reset, or a broken read or write) counts
        // against its connection: rapid-reset loops are cut off.
        if let Some(e) = e.filter(|e| *e.esource() == ErrorSource::Downstream) {
            if session.is_http2()
                && !matches!(
                    e.etype(),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout
                )
            {
                let conn = session
                    .digest()
                    .and_then(|d| d.socket_digest.as_ref())
                    .and_then(|d| self.policy.connections.find(connection_key(d)));
                if let Some(conn) = conn {
                    conn.note_reset();
                }
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        if self.policy.access_log.wants(status) {
            let pool = ctx.pool.map(|p| self.upstreams.pool(p).name.as_str());
            self.policy.access_log.request(&request_line(
                session,
                ctx,
                pool,
                status,
                elapsed,
                self.policy.access_log.settings().query,
            ));
        }
        if let Some(pool) = ctx.pool {
            self.upstreams
                .pool(pool)
                .metrics
                .request(status, elapsed.as_secs_f64());
        }
    }
}

/// The access-log line of a finished request.
fn request_line<'a>(
    session: &'a Session,
    ctx: &'a RequestCtx,
    pool: Option<&'a str>,
    status: u16,
    elapsed: Duration,
    with_query: bool,
) -> RequestLine<'a> {
    let req = session.req_header();
    let ssl = session.digest().and_then(|d| d.ssl_digest.as_ref());
    let conn = ssl.and_then(|s| s.extension.get::<ConnName>());
    let path = if with_query {
        req.uri.path_and_query().map(|p| p.as_str())
    } else {
        Some(req.uri.path())
    };
    // The fields of the connection, the same for each of its requests.
    let connection = || RequestLine {
        client_inet: session.client_addr().and_then(|a| a.as_inet()).copied(),
        client: session
            .client_addr()
            .filter(|a| a.as_inet().is_none())
            .map(|a| a as &dyn std::fmt::Display),
        tls_name: conn.map(|c| c.name.as_str()),
        tls_version: ssl.map(|s| s.version.as_ref()),
        alpn: Some(if session.is_http2() { "h2" } else { "http/1.1" }),
        resumed: conn.map(|c| c.resumed),
        ..RequestLine::default()
    };
    let (rendered, fields) = match conn {
        // Over TLS: rendered by the connection's first line, copied by the others.
        Some(c) => (
            Some(c.log_fields(|| connection().connection_json())),
            RequestLine::default(),
        ),
        None => (None, connection()),
    };
    RequestLine {
        event: "request",
        connection: rendered,
        method: Some(req.method.as_str()),
        host: request_host(req),
        path,
        status: (status > 0).then_some(status),
        bytes_in: Some(session.body_bytes_read() as u64),
        bytes_out: Some(session.body_bytes_sent() as u64),
        duration_ms: Some((elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
        upstream: ctx.upstream,
        pool,
        upstream_status: ctx.upstream_status,
        request_id: ctx.request_id.as_ref().map(RequestId::as_str),
        refusal: ctx.refusal,
        ..fields
    }
}
