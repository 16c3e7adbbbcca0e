//! Tasks that must not outlive their owner.

/// Aborts a spawned task when dropped: a connection's driver, a lease keep-alive, a LISTEN
/// loop. Without it such a task would run on after its owner is gone (a connection stuck on a
/// dead peer lives until TCP gives up).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
