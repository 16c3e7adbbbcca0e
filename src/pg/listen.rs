//! LISTEN on a PostgreSQL channel and hand every notified name to a channel: tenant changes
//! (`deploy/postgres/notify.sql` installs a trigger on `companies` that sends one NOTIFY per
//! affected name, old and new `dns_names`, whenever `dns_names` or `active` change) and
//! certificates issued on another host (`shared`). The payload is the name; anything that does
//! not parse as a `Domain` is ignored (and counted).
//!
//! The connection is dedicated (LISTEN state belongs to one session), opened inside the
//! maintenance service's runtime, and re-opened with backoff after any error, so a database
//! restart costs nothing but the notifications sent while it was down (the decision TTLs and the
//! periodic scan cover those). Owns no policy: it only forwards names.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::domain::Domain;
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

/// Run forever: connect, LISTEN, forward names to `names`; reconnect with backoff on errors.
/// Returns when `names` is closed (the maintenance loop stopped).
pub async fn listen(
    url: String,
    channel: String,
    names: mpsc::Sender<Domain>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&url, &channel, &names, &metrics).await {
            Ok(()) => return,
            Err(e) => {
                metrics.notify_connected.set(0);
                log::warn!("LISTEN {channel}: {e}; reconnecting in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if names.is_closed() {
            return;
        }
    }
}

/// One connection's life. `Ok(())` only when the receiver is gone.
async fn session(
    url: &str,
    channel: &str,
    names: &mpsc::Sender<Domain>,
    metrics: &Metrics,
) -> Result<(), String> {
    let (client, mut connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect failed: {e}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<String, String>>();
    // The connection must be polled for the LISTEN below to complete and for notifications.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n.payload().to_string())).is_err() {
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
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| format!("LISTEN failed: {e}"))?;
    metrics.notify_connected.set(1);
    log::info!("listening for tenant changes on channel {channel}");
    while let Some(message) = rx.recv().await {
        let payload = message?;
        match Domain::parse(payload.trim()) {
            Ok(name) => {
                metrics
                    .notifications
                    .with_label_values(&[NotificationOutcome::Applied.label()])
                    .inc();
                if names.send(name).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                metrics
                    .notifications
                    .with_label_values(&[NotificationOutcome::Ignored.label()])
                    .inc();
                let shown: String = payload.escape_debug().take(80).collect();
                log::warn!(
                    "ignoring a notification on {channel}: \"{shown}\" is not a DNS name ({e})"
                );
            }
        }
    }
    Err("the connection closed".into())
}
