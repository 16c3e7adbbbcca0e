//! LISTEN on PostgreSQL channels and hand every notification to a channel of [`Event`]s:
//! tenant changes (`deploy/postgres/notify.sql` installs a trigger on `companies` that sends
//! one NOTIFY per affected name, old and new `dns_names`, whenever `dns_names` or `active`
//! change), certificates issued on another host and challenges published by another host
//! (`shared`).
//!
//! The connection is dedicated (LISTEN state belongs to one session), opened inside the
//! service's runtime, probed with a round trip every `probe` (a connection that silently died
//! is noticed and replaced, not trusted for ever), and re-opened with backoff after any error;
//! the backoff starts over once a connection has stayed up for a minute. Each (re)connection is
//! announced with [`Event::Connected`], because notifications sent while it was down are lost:
//! the receiver re-checks what it may have missed. Owns no policy: it only forwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::metrics::{label_set, Metrics};
use crate::util::task::AbortOnDrop;

label_set! {
    /// `tenant_edge_notifications_total{outcome}`: a notified name was forwarded, or its
    /// payload was not a DNS name.
    pub enum NotificationOutcome {
        Applied => "applied",
        Ignored => "ignored",
    }
}

label_set! {
    /// `tenant_edge_notify_connected{feed}`: which LISTEN connection.
    pub enum FeedKind {
        Tenants => "tenants",
        Certificates => "certificates",
    }
}

/// What a LISTEN connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// LISTEN is in place (again): notifications sent before now may have been missed.
    Connected,
    /// The connection was lost (a reconnection follows): notifications are missed until the
    /// next `Connected`.
    Disconnected,
    /// A notification on `channel`.
    Message { channel: String, payload: String },
}

/// How a LISTEN connection is run.
#[derive(Debug, Clone)]
pub struct Listen {
    pub url: String,
    pub channels: Vec<String>,
    pub kind: FeedKind,
    /// A round trip on the connection this often; no answer within the connect timeout means
    /// the connection is dead.
    pub probe: Duration,
    /// PEM roots for TLS (`sslmode` in the URL); `None`: the system's.
    pub tls_root: Option<std::path::PathBuf>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTHY: Duration = Duration::from_secs(60);

/// Run until `events` is closed: connect, LISTEN, forward; reconnect with backoff on errors.
pub async fn listen(listen: Listen, events: mpsc::Sender<Event>, metrics: Arc<Metrics>) {
    let connected = metrics
        .notify_connected
        .with_label_values(&[listen.kind.label()]);
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let ended = session(&listen, &events, &connected).await;
        connected.set(0);
        match ended {
            Ok(()) => return,
            Err(e) => {
                if events.send(Event::Disconnected).await.is_err() {
                    return;
                }
                if started.elapsed() >= HEALTHY {
                    backoff = Duration::from_millis(250);
                }
                log::warn!(
                    "LISTEN {}: {e}; reconnecting in {backoff:?}",
                    listen.channels.join(", ")
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if events.is_closed() {
            return;
        }
    }
}

/// One connection's life. `Ok(())` only when the receiver is gone.
async fn session(
    listen: &Listen,
    events: &mpsc::Sender<Event>,
    connected: &prometheus::IntGauge,
) -> Result<(), String> {
    let (mut config, tls) = crate::pg::connect_settings(&listen.url, listen.tls_root.as_deref())
        .map_err(|e| crate::pg::redact_url(&listen.url, e))?;
    crate::pg::harden(&mut config, CONNECT_TIMEOUT);
    let (client, mut connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect failed: {e}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(String, String), String>>();
    // The connection must be polled for the LISTEN below to complete and for notifications.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let message = (n.channel().to_string(), n.payload().to_string());
                    if tx.send(Ok(message)).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                None => {
                    let _ = tx.send(Err("the connection closed".into()));
                    return;
                }
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    for channel in &listen.channels {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.batch_execute(&format!("LISTEN {channel}")),
        )
        .await
        .map_err(|_| "LISTEN timed out".to_string())?
        .map_err(|e| format!("LISTEN failed: {e}"))?;
    }
    connected.set(1);
    log::info!("listening on {}", listen.channels.join(", "));
    if events.send(Event::Connected).await.is_err() {
        return Ok(());
    }
    let mut probe = tokio::time::interval(listen.probe);
    probe.tick().await;
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else {
                    return Err("the connection closed".into());
                };
                let (channel, payload) = message?;
                if events.send(Event::Message { channel, payload }).await.is_err() {
                    return Ok(());
                }
            }
            _ = probe.tick() => {
                // A connection that died without a word (a firewall dropped it) never
                // delivers a notification again: ask it something.
                match tokio::time::timeout(CONNECT_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("the probe failed: {e}")),
                    Err(_) => return Err(format!("no answer to the probe within {CONNECT_TIMEOUT:?}")),
                }
            }
        }
    }
}
