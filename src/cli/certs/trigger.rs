//! Asking the running edge to issue: a TLS handshake with the name as SNI (so every limit of
//! the edge applies), then waiting for the certificate to appear in the store.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use crate::certs::disk::DiskStore;
use crate::cli::certs::inspect::usable;
use crate::domain::Domain;

/// Pingora gives up on a whole TLS handshake after 60 s; no single attempt waits longer.
const HANDSHAKE_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct EdgeTarget {
    pub addr: SocketAddr,
    /// How long the edge's handshake waits for an issuance (`tls.issue_timeout`).
    pub issue_timeout: Duration,
}

impl EdgeTarget {
    pub fn is_listening(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok()
    }
}

/// How hard `trigger` tries.
#[derive(Debug, Clone, Copy)]
pub enum Patience {
    /// `issue`: one retry, only when the first handshake ran into the edge's issue timeout.
    RetryOnceAfterTimeout,
    /// `warm`: also retry quick refusals (rate limits, the client gate) with backoff, until the
    /// deadline. Each retry costs the CA nothing: the edge's own limits decide.
    UntilDeadline,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("nothing listens on {0}")]
    NotListening(SocketAddr),
    #[error("the edge refused the handshake after {took:.1?} ({tls}); the edge's log says why (an issuance limit, a per-name backoff after a failed order, a failed order)")]
    Refused { took: Duration, tls: String },
    #[error(
        "no certificate after {0:?}; the order may still be running in the edge: its log says"
    )]
    TimedOut(Duration),
    #[error("{0}")]
    Task(String),
}

pub enum HandshakeError {
    Connect(std::io::Error),
    Tls(String),
}

/// One TLS handshake with `name` as SNI and no verification: the edge's certificate callback
/// runs its whole lookup (decision, cache, store, issuance) as for any client.
pub fn handshake(addr: SocketAddr, name: &str, wait: Duration) -> Result<(), HandshakeError> {
    let tcp = TcpStream::connect_timeout(&addr, wait.min(Duration::from_secs(5)))
        .map_err(HandshakeError::Connect)?;
    let tls = |e: &dyn std::fmt::Display| HandshakeError::Tls(e.to_string());
    tcp.set_read_timeout(Some(wait)).map_err(|e| tls(&e))?;
    tcp.set_write_timeout(Some(wait)).map_err(|e| tls(&e))?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls(&e))?;
    builder.set_verify(SslVerifyMode::NONE);
    let config = builder
        .build()
        .configure()
        .map_err(|e| tls(&e))?
        .verify_hostname(false);
    let mut stream = config.connect(name, tcp).map_err(|e| tls(&e))?;
    let _ = stream.shutdown();
    Ok(())
}

/// Make the running edge obtain a certificate for `name`, and wait (at most `deadline`) until
/// it is stored. Returns whether the edge completed a handshake (`false`: the certificate
/// appeared in the store after a handshake had given up).
pub async fn trigger(
    store: &DiskStore,
    edge: EdgeTarget,
    name: &Domain,
    deadline: Duration,
    patience: Patience,
) -> Result<bool, TriggerError> {
    let start = Instant::now();
    let mut retried_after_timeout = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(TriggerError::TimedOut(deadline));
        }
        let attempt = Instant::now();
        let sni = name.to_string();
        let addr = edge.addr;
        let wait = left.min(HANDSHAKE_CAP);
        let result = tokio::task::spawn_blocking(move || handshake(addr, &sni, wait))
            .await
            .map_err(|e| TriggerError::Task(e.to_string()))?;
        let took = attempt.elapsed();
        let tls = match result {
            Ok(()) => return Ok(true),
            Err(HandshakeError::Connect(e))
                if e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Err(TriggerError::NotListening(addr))
            }
            Err(HandshakeError::Connect(e)) => format!("connect to {addr}: {e}"),
            Err(HandshakeError::Tls(e)) => e,
        };
        // The issuance goes on in the edge after its handshake gave up: the store tells.
        if usable(store, name).await.is_some() {
            return Ok(false);
        }
        let timed_out = took + Duration::from_millis(500) >= edge.issue_timeout;
        if timed_out && !retried_after_timeout {
            retried_after_timeout = true;
            if wait_for_store(
                store,
                name,
                edge.issue_timeout.min(left_of(start, deadline)),
            )
            .await
            {
                return Ok(false);
            }
            continue;
        }
        match patience {
            Patience::RetryOnceAfterTimeout if timed_out => {
                return Err(TriggerError::TimedOut(start.elapsed()))
            }
            Patience::RetryOnceAfterTimeout => return Err(TriggerError::Refused { took, tls }),
            Patience::UntilDeadline => {
                let pause = backoff.min(left_of(start, deadline));
                if pause.is_zero() {
                    return Err(TriggerError::Refused { took, tls });
                }
                if wait_for_store(store, name, pause).await {
                    return Ok(false);
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
                if left_of(start, deadline).is_zero() {
                    return Err(TriggerError::Refused { took, tls });
                }
            }
        }
    }
}

pub fn left_of(start: Instant, deadline: Duration) -> Duration {
    deadline.saturating_sub(start.elapsed())
}

/// Poll the store for a usable certificate for up to `wait`.
pub async fn wait_for_store(store: &DiskStore, name: &Domain, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        if usable(store, name).await.is_some() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
    }
}
