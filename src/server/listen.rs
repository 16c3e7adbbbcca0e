//! Listen sockets: refuse to start on a taken port, IPv6 sockets IPv6-only.

use std::time::Duration;

use pingora::listeners::TcpSocketOptions;
use pingora::protocols::TcpKeepalive;

use crate::config::Config;
use crate::http::timeouts::TimeoutSettings;
use crate::server::error::BuildError;

/// The options of every client socket: TCP keepalive (dead peers are noticed), the kernel's
/// `TCP_USER_TIMEOUT` (a peer that stops acknowledging what we send), and IPv6 sockets
/// IPv6-only, so that `0.0.0.0:443` and `[::]:443` can both be listed (a dual-stack `[::]`
/// would collide with the IPv4 one).
pub fn socket_options(addr: &std::net::SocketAddr, timeouts: &TimeoutSettings) -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.ipv6_only = addr.is_ipv6().then_some(true);
    options.tcp_keepalive = Some(TcpKeepalive {
        idle: timeouts.tcp_keepalive,
        interval: Duration::from_secs(10),
        count: 5,
        #[cfg(target_os = "linux")]
        user_timeout: timeouts.send,
    });
    options
}

/// The text under which HTTPS service number `core` listens on `addr`: the address itself for
/// the first, the same address with `core` leading zeros in the port for the others
/// (`127.0.0.1:0443`). Pingora keys its listening sockets by this text: one socket per text,
/// opened with `SO_REUSEPORT` so that each single-threaded service accepts on a socket of its
/// own (the kernel spreads new connections over them, nothing is closed twice), and handed to
/// the new process by the same text on a graceful upgrade.
pub fn core_address(addr: &std::net::SocketAddr, core: usize) -> String {
    let host = match addr {
        std::net::SocketAddr::V4(a) => a.ip().to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!("{host}:{}{}", "0".repeat(core), addr.port())
}

/// Every listen address can be bound right now, checked before Pingora starts so that the
/// error names the address and whoever holds it (a port taken by kamal-proxy or Caddy is the
/// seed story's classic). Not used for a graceful upgrade, where the old process hands its
/// sockets over.
pub fn ensure_listen_addresses_free(config: &Config) -> Result<(), BuildError> {
    for (key, addr) in config.listen.all() {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    format!(" ({})", crate::util::ports::taken_port_message(*addr))
                }
                std::io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
                }
                _ => String::new(),
            };
            return Err(BuildError::Listener {
                addr: format!("{key} {addr}"),
                message: format!("{e}{hint}"),
            });
        }
    }
    Ok(())
}
