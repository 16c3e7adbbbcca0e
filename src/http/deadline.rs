//! Separate deadlines for an upstream's response head and for the gaps in its body.
//!
//! Pingora has one read timeout per upstream connection, for the head and every body read
//! alike. When a pool's `response_timeout` and `body_timeout` are equal (the default) that is
//! all it takes, and nothing here runs. When they differ, the connection gets the longer one as
//! its read timeout and a watchdog enforces the shorter one: it holds a duplicate of the
//! upstream socket and shuts the socket down when the head (or the next body byte) is late, so
//! Pingora's read fails at once. [`Deadline::fired`] then tells the error handler which
//! deadline passed (a late head is answered 504).

use std::net::TcpStream;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::task::AbortOnDrop;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    Head,
    Body,
}

struct Clock {
    start: Instant,
    head_received: AtomicBool,
    /// Milliseconds after `start` of the last body byte.
    last_body_ms: AtomicU64,
    /// 0: none, 1: head, 2: body.
    fired: AtomicU8,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// The watchdog of one upstream request; dropping it stops the watchdog and closes its
/// duplicate of the socket.
pub struct Deadline {
    clock: Arc<Clock>,
    _watchdog: AbortOnDrop,
}

impl Deadline {
    /// Watch the upstream socket `fd` (valid for this call): the head must come within
    /// `response_timeout`, then no gap in the body may exceed `body_timeout`. `None` when the
    /// socket cannot be duplicated (the connection's own read timeout still applies).
    pub fn watch(
        fd: RawFd,
        response_timeout: Duration,
        body_timeout: Duration,
    ) -> Option<Deadline> {
        // SAFETY: Pingora passes the upstream connection's open socket, valid for the duration
        // of `connected_to_upstream`, during which this runs; the duplicate is ours to close.
        let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .ok()?;
        let socket = TcpStream::from(owned);
        let clock = Arc::new(Clock {
            start: Instant::now(),
            head_received: AtomicBool::new(false),
            last_body_ms: AtomicU64::new(0),
            fired: AtomicU8::new(0),
        });
        let watched = clock.clone();
        let watchdog = tokio::spawn(async move {
            loop {
                let (late, due_ms) = if watched.head_received.load(Ordering::Acquire) {
                    let last = watched.last_body_ms.load(Ordering::Acquire);
                    (Late::Body, last + body_timeout.as_millis() as u64)
                } else {
                    (Late::Head, response_timeout.as_millis() as u64)
                };
                let now = watched.now_ms();
                if now >= due_ms {
                    watched
                        .fired
                        .store(if late == Late::Head { 1 } else { 2 }, Ordering::Release);
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(due_ms - now)).await;
            }
        });
        Some(Deadline {
            clock,
            _watchdog: AbortOnDrop(watchdog),
        })
    }

    /// The response head arrived: from now on the body gaps are timed.
    pub fn head_received(&self) {
        self.clock
            .last_body_ms
            .store(self.clock.now_ms(), Ordering::Release);
        self.clock.head_received.store(true, Ordering::Release);
    }

    /// A piece of the body arrived.
    pub fn body_received(&self) {
        self.clock
            .last_body_ms
            .store(self.clock.now_ms(), Ordering::Release);
    }

    /// Which deadline passed, if one did.
    pub fn fired(&self) -> Option<Late> {
        match self.clock.fired.load(Ordering::Acquire) {
            1 => Some(Late::Head),
            2 => Some(Late::Body),
            _ => None,
        }
    }
}
