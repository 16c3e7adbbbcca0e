//! `timeouts:`: how long a client may take. Every wait on a client is bounded; a connection past
//! a deadline is closed and counted in `tenant_edge_connections_closed_total{reason}`.
//! Defaults follow nginx and HAProxy.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutSettings {
    /// A whole request head (request line and headers, HTTP/1.1, also on port 80), from its
    /// first byte. Default 10s (HAProxy's `timeout http-request`); slowloris gets no further.
    pub header: Duration,
    /// Keep-alive: from the end of a response (or the handshake) to the first byte of the next
    /// request. Default 60s (nginx `keepalive_timeout` 75s, HAProxy `http-keep-alive`).
    pub idle: Duration,
    /// An HTTP/2 connection with no stream open. Default 60s.
    pub h2_idle: Duration,
    /// An HTTP/2 client that has not sent its connection preface. Default 10s.
    pub h2_preface: Duration,
    /// No byte of a request body for this long. Default 30s (nginx `client_body_timeout` 60s).
    pub body: Duration,
    /// Once a request body has been arriving for `body`, it must average at least this many
    /// bytes per second (Apache's `mod_reqtimeout` MinRate): a client trickling a byte just
    /// inside `body` forever is cut off with 408. Default 500; 0 disables.
    pub body_min_rate: u64,
    /// A client that stops reading the response: no progress writing for this long. Default
    /// 30s (nginx `send_timeout` 60s). Also the kernel's `TCP_USER_TIMEOUT`.
    pub send: Duration,
    /// TCP keepalive on client sockets: idle time before the first probe (dead peers are
    /// dropped after 5 unanswered probes 10 s apart). Default 60s.
    pub tcp_keepalive: Duration,
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        TimeoutSettings {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            h2_idle: Duration::from_secs(60),
            h2_preface: Duration::from_secs(10),
            body: Duration::from_secs(30),
            body_min_rate: 500,
            send: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}
