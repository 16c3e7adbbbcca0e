//! What another host did that this one must hear about: a certificate issued or renewed
//! (LISTEN on `locks::CERTS_CHANNEL`: each host drops its memory copy and loads the new one
//! instead of ordering) and a challenge published (`challenges::CHALLENGES_CHANNEL`: only
//! announced challenges are looked up in the shared store). The schema is migrated first when
//! `migrate_on_start` allows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::pg::listen::{listen, Event, FeedKind, Listen};
use crate::shared::challenges::CHALLENGES_CHANNEL;
use crate::shared::locks::CERTS_CHANNEL;
use crate::shared::migrate::migrate_with_retry;
use crate::shared::store::SharedStore;
use crate::shared::SharedSettings;

/// Migrate (when allowed), then forward every announcement of another host to `events`,
/// until `events` is closed.
pub async fn follow(
    store: Arc<SharedStore>,
    settings: SharedSettings,
    probe: Duration,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    if settings.migrate_on_start {
        migrate_with_retry(&store).await;
    }
    let channels = vec![CERTS_CHANNEL.to_string(), CHALLENGES_CHANNEL.to_string()];
    let how = Listen {
        url: settings.url.clone(),
        channels,
        kind: FeedKind::Certificates,
        probe,
        tls_root: settings.tls_root.clone(),
    };
    listen(how, events, metrics).await;
}
