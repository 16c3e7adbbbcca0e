//! The feeds the maintenance service follows, assembled from the config: tenant changes over
//! LISTEN on the application's database, and (several hosts) what the other hosts announce.
//! LISTEN events become `Change`s: a notified name, or a resync after a reconnection; a
//! challenge announcement goes to the challenge store.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::allow::decision::NameList;
use crate::certs::challenge::Challenges;
use crate::certs::maintain::{Change, Feed, Inputs};
use crate::config::Config;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::pg::listen::{listen, Event, FeedKind, Listen, NotificationOutcome};
use crate::server::edge::Edge;
use crate::shared::challenges::CHALLENGES_CHANNEL;
use crate::shared::feed::follow;

/// The feeds and the name list of `edge`: tenant changes and the periodic scan (with a
/// database), certificates issued and challenges published on other hosts (with a shared
/// store).
pub fn maintenance_inputs(config: &Config, edge: &Edge) -> Inputs {
    let mut inputs = Inputs::default();
    if let (Some(db), Some(settings)) = (&edge.database, &config.allow.database) {
        let how = Listen {
            url: settings.url.clone(),
            channels: vec![settings.notify_channel.clone()],
            kind: FeedKind::Tenants,
            probe: settings.notify_probe,
            tls_root: settings.tls_root.clone(),
        };
        let metrics = edge.metrics.clone();
        let feed: Feed = Box::new(move |changes| {
            let (how, metrics) = (how.clone(), metrics.clone());
            Box::pin(async move {
                let (events, rx) = mpsc::channel(4096);
                tokio::select! {
                    () = listen(how, events, metrics.clone()) => {}
                    () = forward(rx, changes, None, metrics) => {}
                }
            })
        });
        inputs.tenant_changes = Some(feed);
        inputs.scan = Some((db.clone() as Arc<dyn NameList>, settings.scan_interval));
    }
    if let (Some(store), Some(settings)) = (&edge.shared, &config.shared_store) {
        let (store, settings) = (store.clone(), settings.clone());
        let (metrics, challenges) = (edge.metrics.clone(), edge.challenges.clone());
        let feed: Feed = Box::new(move |changes| {
            let (store, settings) = (store.clone(), settings.clone());
            let (metrics, challenges) = (metrics.clone(), challenges.clone());
            Box::pin(async move {
                let (events, rx) = mpsc::channel(4096);
                let probe = settings.notify_probe;
                tokio::select! {
                    () = follow(store, settings, probe, events, metrics.clone()) => {}
                    () = forward(rx, changes, Some(challenges.clone()), metrics) => {}
                }
                challenges.set_hearing(false);
            })
        });
        inputs.issued_elsewhere = Some(feed);
    }
    inputs
}

/// Turn LISTEN events into changes until either side is gone.
async fn forward(
    mut events: mpsc::Receiver<Event>,
    changes: mpsc::Sender<Change>,
    challenges: Option<Arc<Challenges>>,
    metrics: Arc<Metrics>,
) {
    while let Some(event) = events.recv().await {
        let change = match event {
            Event::Connected => {
                if let Some(c) = &challenges {
                    // Hearing again once what was announced meanwhile is known.
                    let c = c.clone();
                    tokio::spawn(async move { c.resync().await });
                }
                Change::Resync
            }
            Event::Disconnected => {
                if let Some(c) = &challenges {
                    c.set_hearing(false);
                }
                continue;
            }
            Event::Message { channel, payload } if channel == CHALLENGES_CHANNEL => {
                if let Some(c) = &challenges {
                    c.announce(&payload);
                }
                continue;
            }
            Event::Message { channel, payload } => match Domain::parse(payload.trim()) {
                Ok(name) => {
                    metrics
                        .notifications
                        .with_label_values(&[NotificationOutcome::Applied.label()])
                        .inc();
                    Change::Name(name)
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
                    continue;
                }
            },
        };
        if changes.send(change).await.is_err() {
            return;
        }
    }
}
