//! Certificates issued or renewed on another host: LISTEN on `locks::CERTS_CHANNEL` (after
//! migrating the schema when `migrate_on_start` allows), so each host drops its memory copy and
//! loads the new certificate instead of ordering one.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::pg::listen::listen;
use crate::shared::locks::CERTS_CHANNEL;
use crate::shared::migrate::migrate_with_retry;
use crate::shared::store::SharedStore;
use crate::shared::SharedSettings;

/// Migrate (when allowed), then forward every name another host announces to `names`, until
/// `names` is closed.
pub async fn follow_issued(
    store: Arc<SharedStore>,
    settings: SharedSettings,
    names: mpsc::Sender<Domain>,
    metrics: Arc<Metrics>,
) {
    if settings.migrate_on_start {
        migrate_with_retry(&store).await;
    }
    listen(
        settings.url.clone(),
        CERTS_CHANNEL.to_string(),
        names,
        metrics,
    )
    .await;
}
