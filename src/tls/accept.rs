//! What happens to an HTTPS connection before TLS (Pingora's pre-TLS callback, in the
//! connection's own task, before OpenSSL reads a byte), in order:
//! 1. **PROXY protocol**, on the listeners that opted in (`listen.https: [{address, proxy_protocol:
//!    true}]`): accepted only from `forwarding.trusted_proxies`; the header's source address
//!    becomes the connection's peer address, which every later step (limits, logs,
//!    `X-Forwarded-For`) sees. Anything else is refused.
//! 2. **Admission** (`limits::connections`): the total and per-client caps; the admitted
//!    connection is held by the socket itself and released when it closes.
//! 3. **The client gate** (`tls::gate`): never-seen names per client.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::upstreams::peer::{Tracer, Tracing};
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;

use crate::limits::connections::{CloseReason, Connection, Connections, Listener};
use crate::net::cidr::{canonical, Cidr};
use crate::net::proxy_protocol::{self, Parsed};
use crate::tls::gate::ClientGate;

/// Where the PROXY protocol is spoken, and by whom.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    /// Listen addresses that expect a PROXY header on every connection.
    pub listeners: Vec<SocketAddr>,
    /// Peers allowed to send one (`forwarding.trusted_proxies`).
    pub trusted: Vec<Cidr>,
    /// Longest wait for the whole header.
    pub timeout: Duration,
}

impl ProxyProtocol {
    /// Whether a connection accepted on `local` must start with a PROXY header.
    pub fn expected_on(&self, local: Option<SocketAddr>) -> bool {
        let Some(local) = local else { return false };
        let ip = canonical(local.ip());
        self.listeners.iter().any(|l| {
            let wildcard = l.ip().is_unspecified() && l.ip().is_ipv4() == ip.is_ipv4();
            l.port() == local.port() && (canonical(l.ip()) == ip || wildcard)
        })
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(peer))
    }
}

/// The key a connection is registered under: its socket digest, shared by every request of
/// the connection (HTTP/2 streams included) and unique while it lives.
pub fn connection_key(digest: &Arc<SocketDigest>) -> usize {
    Arc::as_ptr(digest) as usize
}

fn inet(addr: Option<&PeerAddr>) -> Option<SocketAddr> {
    addr.and_then(|a| a.as_inet()).copied()
}

/// Read the PROXY header from `stream`, which must come from a trusted peer, and make its
/// source the connection's peer address. Bytes read past the header are put back.
pub async fn accept_proxy_header(
    stream: &mut L4Stream,
    proxy: &ProxyProtocol,
) -> Result<(), CloseReason> {
    let peer = stream
        .get_socket_digest()
        .and_then(|d| inet(d.peer_addr()))
        .map(|a| a.ip());
    if !peer.is_some_and(|ip| proxy.trusts(ip)) {
        return Err(CloseReason::ProxyUntrusted);
    }
    let mut buf = vec![0u8; 256];
    let mut filled = 0;
    let deadline = tokio::time::Instant::now() + proxy.timeout;
    let (len, addresses, local) = loop {
        match proxy_protocol::parse(&buf[..filled]) {
            Parsed::Header {
                len,
                addresses,
                local,
            } => break (len, addresses, local),
            Parsed::Invalid(_) => return Err(CloseReason::ProxyInvalid),
            Parsed::Incomplete { need } => {
                if need > proxy_protocol::V2_MAX {
                    return Err(CloseReason::ProxyInvalid);
                }
                if buf.len() < need {
                    buf.resize(need.max(buf.len() * 2).min(proxy_protocol::V2_MAX), 0);
                }
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[filled..])).await {
            Ok(Ok(n)) if n > 0 => filled += n,
            _ => return Err(CloseReason::ProxyInvalid),
        }
    };
    stream.rewind(&buf[len..filled]);
    let addresses = match (addresses, local) {
        (Some(pair), _) => Some(pair),
        // The balancer's own connection (a health check): its address is the right one.
        (None, true) => None,
        // A client whose address the balancer did not know (`UNKNOWN`, `UNSPEC`): not the
        // balancer's, whose trust (forwarding headers) and limits it must not get.
        (None, false) => {
            let unknown = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
            let local = stream
                .get_socket_digest()
                .and_then(|d| inet(d.local_addr()))
                .unwrap_or(unknown);
            Some((unknown, local))
        }
    };
    if let Some((src, dst)) = addresses {
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(src)));
        let _ = digest.local_addr.set(Some(PeerAddr::Inet(dst)));
        stream.set_socket_digest(digest);
    }
    Ok(())
}

/// Holds an admitted connection for the life of the socket (Pingora drops the tracer with the
/// socket, whatever ends the connection).
#[derive(Debug)]
struct Held(Arc<Connection>);

impl Tracing for Held {
    fn on_connected(&self) {}
    fn on_disconnected(&self) {}
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Held(self.0.clone()))
    }
}

/// The pre-TLS callback of the HTTPS listeners.
pub struct Accept {
    pub connections: Arc<Connections>,
    pub proxy: ProxyProtocol,
    pub gate: Option<ClientGate>,
}

fn refused(reason: CloseReason) -> Box<Error> {
    Error::explain(ErrorType::Custom("connection refused"), reason.label())
}

#[async_trait]
impl PreTlsProcess for Accept {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| inet(d.local_addr()));
        if self.proxy.expected_on(local) {
            if let Err(reason) = accept_proxy_header(stream, &self.proxy).await {
                self.connections.count(reason);
                return Err(refused(reason));
            }
        }
        let Some(digest) = stream.get_socket_digest() else {
            return Ok(());
        };
        let Some(ip) = inet(digest.peer_addr()).map(|a| a.ip()) else {
            return Ok(());
        };
        let conn = self
            .connections
            .admit(ip, Listener::Https)
            .map_err(refused)?;
        conn.register(connection_key(&digest));
        stream.tracer = Some(Tracer(Box::new(Held(conn))));
        match &self.gate {
            Some(gate) => gate.process(stream).await,
            None => Ok(()),
        }
    }
}
