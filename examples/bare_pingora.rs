//! The floor for `make bench-load`: the smallest Pingora TLS proxy that does the same job as the
//! edge in the benchmark (one static certificate, HTTP/2 and HTTP/1.1 to clients, one upstream
//! over kept-alive HTTP/1.1, the same `X-Forwarded-*` headers) and nothing else: no certificate
//! callback, no allow-list, no metrics, no health checks. The same headers are
//! `X-Forwarded-For`, `-Proto` and `-Host`, as nginx and HAProxy set them in the benchmark
//! (`bench/`); tenant-edge sends `X-Request-Id` besides.
//!
//! scripts/bench-load.sh runs it beside nginx and tenant-edge (the `pingora` rows), so the table
//! separates what Pingora itself costs per request from what tenant-edge adds on top of it.
//!
//! ```text
//! cargo run --release --example bare_pingora -- LISTEN CERT.pem KEY.pem UPSTREAM [THREADS [steal|nosteal|percore [lean] [timeouts]]]
//! ```
//!
//! `nosteal` runs Pingora's per-thread runtimes without work stealing (`ServerConf::work_stealing`);
//! `percore` runs THREADS services of one thread each, each on its own `SO_REUSEPORT` socket,
//! as tenant-edge does (`tenant_edge::server::listen::core_address`);
//! `lean` uses tenant-edge's listener buffers (no Pingora read buffer under TLS, OpenSSL
//! read-ahead: `tenant_edge::tls::handshake::listener_buffers`) instead of Pingora's defaults;
//! `timeouts` arms the timeouts tenant-edge arms on every request, with its defaults: the
//! client's body read and send (`timeouts.body`, `timeouts.send`) and the upstream's connect and
//! read (`upstreams.pools.*.connect_timeout`, `read_timeout`), as nginx does too
//! (`client_body_timeout`, `send_timeout`, `proxy_connect_timeout`, `proxy_read_timeout`): the
//! same settings, so that the instruction counts compare like with like.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{ListenerConfig, Listeners, TcpSocketOptions};
use pingora::prelude::{HttpPeer, Opt, Server, Session};
use pingora::proxy::ProxyHttp;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use pingora::Result;

/// The same allocator as tenant-edge, so that the two differ only in what tenant-edge does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    /// `timeouts`: the body-read and send timeouts, tenant-edge's defaults (`timeouts.body`
    /// and `timeouts.send`, 30 s each).
    timeouts: Option<Duration>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if let Some(t) = self.timeouts {
            session.set_read_timeout(Some(t));
            session.set_write_timeout(Some(t));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.timeouts.is_some() {
            // tenant-edge's upstream defaults: `connect_timeout` 2 s, `read_timeout` 60 s.
            peer.options.connection_timeout = Some(Duration::from_secs(2));
            peer.options.read_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut pingora::http::RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
            req.insert_header("X-Forwarded-For", ip.ip().to_string())?;
        }
        req.insert_header("X-Forwarded-Proto", "https")?;
        // The host as the client sent it (Host, or HTTP/2's :authority), as tenant-edge, nginx
        // (`$http_host`) and HAProxy (`req.hdr(host)`) send it in this benchmark.
        let host = match req.headers.get(http::header::HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
        };
        if let Some(host) = host {
            req.insert_header("X-Forwarded-Host", host)?;
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, upstream, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: bare_pingora LISTEN CERT.pem KEY.pem UPSTREAM [THREADS [steal|nosteal|percore [lean] [timeouts]]]"
                .into(),
        );
    };
    let threads = match rest.first() {
        Some(t) => t.parse().map_err(|e| format!("THREADS {t:?}: {e}"))?,
        None => 2,
    };
    let (work_stealing, percore) = match rest.get(1).map(String::as_str) {
        None | Some("steal") => (true, false),
        Some("nosteal") => (false, false),
        Some("percore") => (false, true),
        Some(other) => {
            return Err(format!("expected steal, nosteal or percore, not {other:?}").into())
        }
    };
    let (mut lean, mut timeouts) = (false, None);
    for flag in rest.iter().skip(2) {
        match flag.as_str() {
            "lean" => lean = true,
            "timeouts" => timeouts = Some(Duration::from_secs(30)),
            other => return Err(format!("expected lean or timeouts, not {other:?}").into()),
        }
    }
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|e| format!("UPSTREAM {upstream:?}: {e}"))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("LISTEN {listen:?}: {e}"))?;

    let conf = ServerConf {
        threads,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    let services = if percore { threads } else { 1 };
    for core in 0..services {
        let mut tls = TlsSettings::intermediate(cert, key)?;
        tls.enable_h2();
        let mut endpoint = if percore {
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            ListenerConfig::tcp(tenant_edge::server::listen::core_address(&listen, core))
                .tcp_socket_options(options)
        } else {
            ListenerConfig::tcp(listen.to_string())
        };
        if lean {
            tls.set_read_ahead(true);
            endpoint = endpoint.l4_buffer(tenant_edge::tls::handshake::listener_buffers());
        }
        let mut listeners = Listeners::new();
        listeners.add_listener(endpoint.tls(tls));
        let mut service = Service::with_listeners(
            format!("bare pingora {core}"),
            listeners,
            pingora::proxy::http_proxy(&server.configuration, Bare { upstream, timeouts }),
        );
        if percore {
            service.threads = Some(1);
        }
        server.add_service(service);
    }
    server.bootstrap();
    server.run_forever()
}
