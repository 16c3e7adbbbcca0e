//! The small connection pool both PostgreSQL users share: the allow-list lookups
//! (`allow::database`) and the multi-host store (`shared`). Each keeps its own connection type
//! (the allow-list's carries a prepared statement) and its own errors; this holds what is the
//! same: a bound on connections in use, idle connections kept for reuse (at most `MAX_IDLE`),
//! broken ones dropped, all idle ones dropped after a timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// A pooled connection knows when its socket is gone.
pub trait Pooled {
    fn is_closed(&self) -> bool;
}

/// At most `size` connections in use at a time (a slot each), idle ones kept for the next user.
/// The lock is never held across an await.
pub struct Pool<C> {
    idle: Mutex<Vec<(C, Instant)>>,
    slots: Semaphore,
}

/// An idle connection older than this is closed rather than reused: a firewall or NAT may have
/// forgotten it, and finding out costs a whole timeout.
pub const MAX_IDLE: Duration = Duration::from_secs(60);

/// The pool was closed (it never is while its owner lives; kept as an error, not a panic).
pub struct PoolClosed;

impl<C: Pooled> Pool<C> {
    /// A pool of at most `size` connections in use (at least one).
    pub fn new(size: usize) -> Pool<C> {
        Pool {
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1)),
        }
    }

    /// Wait for a slot; hold it while using a connection.
    pub async fn slot(&self) -> Result<SemaphorePermit<'_>, PoolClosed> {
        self.slots.acquire().await.map_err(|_| PoolClosed)
    }

    /// An idle connection that is still open and was used within `MAX_IDLE`, if any (others
    /// are dropped on the way).
    pub fn take(&self) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if !conn.is_closed() && since.elapsed() < MAX_IDLE {
                return Some(conn);
            }
        }
        None
    }

    /// Keep a connection for reuse, unless it is closed.
    pub fn put_back(&self, conn: C) {
        if !conn.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((conn, Instant::now()));
        }
    }

    /// Drop every idle connection: one of them just timed out, the others probably went the
    /// same way (a network path that silently drops traffic), and each would cost a timeout.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Idle connections kept right now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Fake(Arc<AtomicBool>);

    impl Pooled for Fake {
        fn is_closed(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn closed_connections_are_neither_kept_nor_handed_out() {
        let pool = Pool::new(2);
        let open = Arc::new(AtomicBool::new(false));
        let dying = Arc::new(AtomicBool::new(false));
        pool.put_back(Fake(open.clone()));
        pool.put_back(Fake(dying.clone()));
        pool.put_back(Fake(Arc::new(AtomicBool::new(true))));
        assert_eq!(pool.idle_count(), 2, "a closed connection is not kept");
        // The most recent one closes while idle: take() skips it and drops it.
        dying.store(true, Ordering::SeqCst);
        let conn = pool.take().expect("the open connection");
        assert!(Arc::ptr_eq(&conn.0, &open));
        assert!(pool.take().is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn slots_bound_the_connections_in_use() {
        let pool: Pool<Fake> = Pool::new(1);
        let first = pool.slot().await.ok().expect("a slot");
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), pool.slot()).await;
        assert!(
            second.is_err(),
            "the second user waits while the only slot is held"
        );
        drop(first);
        assert!(pool.slot().await.is_ok());
    }
}
