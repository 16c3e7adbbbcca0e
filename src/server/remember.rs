//! The background service that keeps "allowed before" (`allow::remembered`) on disk and, with
//! several hosts, in the shared store: it learns the other hosts' names at start, then writes
//! what changed every few seconds and once more at shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::allow::list::AllowList;
use crate::allow::remembered::{RememberedStore, KEEP};
use crate::util::time::unix_now;

/// How often changes are written.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

pub struct RememberService {
    pub allow: Arc<AllowList>,
    pub shared: Option<Arc<dyn RememberedStore>>,
}

#[async_trait]
impl BackgroundService for RememberService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let remembered = self.allow.remembered().clone();
        let shared = self.shared.as_deref();
        let mut learned = shared.is_none();
        let mut failing = false;
        loop {
            if !learned {
                if let Some(store) = shared {
                    match store
                        .load_remembered(unix_now() - KEEP.as_secs() as i64)
                        .await
                    {
                        Ok(entries) => {
                            log::info!(
                                "learned {} allowed names from the shared store",
                                entries.len()
                            );
                            remembered.merge(entries);
                            learned = true;
                        }
                        Err(e) => log::debug!("cannot load the allowed names yet: {e}"),
                    }
                }
            }
            match remembered.flush(shared).await {
                Ok(()) if failing => {
                    log::info!("the allowed names are saved again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        log::warn!("{e}; kept in memory, retrying");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
            }
        }
        if let Err(e) = remembered.flush(shared).await {
            log::warn!("{e} at shutdown");
        }
    }
}
