//! The idle timeout of HTTP/1.1 connections between requests, as one queue per listener
//! application instead of one timer per request.
//!
//! Every connection of an application waits the same `timeouts.idle` for its next request, so
//! the waits end in the order they began: a first-in first-out queue of deadlines is the whole
//! timer. A wait puts its deadline at the back and takes it out again when the request comes (a
//! lock, a push and a slot: a few hundred instructions, against a few thousand for a timer of
//! Pingora's or tokio's per request). One sweeper task per queue wakes the waits whose deadline
//! passed, at most once per [`tick`] (so a wait ends up to a tick late), and ends when the queue
//! is empty. Waits that ended early leave their entry behind until it reaches the front; the
//! queue is compacted when those outnumber the live ones, so its length stays within twice
//! the waiting connections (plus a few), and the slots within the most connections that ever
//! waited at once (bounded by `limits.connections.max`). Waits ended by the timeout are
//! counted where the connection closes (`tenant_edge_connections_closed_total{reason="idle_timeout"}`).
//!
//! The queue also ends every wait when the process shuts down ([`IdleQueue::shut_down`], from
//! one task per queue watching Pingora's shutdown signal), so that a wait for a request needs
//! no shutdown wait of its own (a registration with the signal and its removal per request).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// tokio's clock (the std one unless a test pauses time).
use tokio::time::Instant;

/// The deadlines of one application's idle waits.
pub struct IdleQueue {
    idle: Duration,
    inner: Mutex<Inner>,
    /// Set once, by `shut_down`: every wait ends at once, and every later one at its start.
    shut_down: AtomicBool,
    /// Whether a task watches the shutdown signal for this queue (`watch_shutdown`).
    watching: AtomicBool,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Deadline, slot and the slot's generation when the entry was made, oldest first.
    order: VecDeque<(Instant, u32, u32)>,
    live: usize,
    sweeping: bool,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    waiting: bool,
    expired: bool,
    waker: Option<Waker>,
}

/// How often the sweeper looks at most: a tenth of the timeout, at most 100 ms, at least 1 ms.
fn tick(idle: Duration) -> Duration {
    (idle / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

impl IdleQueue {
    pub fn new(idle: Duration) -> Arc<IdleQueue> {
        Arc::new(IdleQueue {
            idle,
            inner: Mutex::new(Inner::default()),
            shut_down: AtomicBool::new(false),
            watching: AtomicBool::new(false),
        })
    }

    /// Whether the process is shutting down (`shut_down` was called).
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// End every wait now, and every later one as it starts: the process is shutting down.
    pub fn shut_down(&self) {
        let mut wake = Vec::new();
        {
            let mut q = self.lock();
            self.shut_down.store(true, Ordering::Release);
            let Inner { slots, live, .. } = &mut *q;
            for s in slots.iter_mut().filter(|s| s.waiting) {
                s.waiting = false;
                s.expired = true;
                *live -= 1;
                wake.extend(s.waker.take());
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// The first call (per queue) spawns the task that calls `shut_down` when `shutdown`
    /// (Pingora's signal, the same for every connection) turns true; later calls do nothing.
    pub fn watch_shutdown(self: &Arc<Self>, shutdown: &tokio::sync::watch::Receiver<bool>) {
        if self.watching.load(Ordering::Relaxed) || self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let queue = Arc::downgrade(self);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Ends with the signal's sender too (the server is gone: nothing waits any more).
            if shutdown.wait_for(|&down| down).await.is_ok() {
                if let Some(queue) = queue.upgrade() {
                    queue.shut_down();
                }
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in here panics while the lock is held; a poisoned queue is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A wait of `timeouts.idle` from now, resolving when it passed (it does nothing until
    /// first polled, and takes its deadline out of the queue when dropped).
    pub fn wait(self: &Arc<Self>) -> IdleWait {
        IdleWait {
            queue: self.clone(),
            key: None,
        }
    }

    /// Waits queued and not ended (for tests and the compaction bound).
    #[cfg(test)]
    fn waiting(&self) -> (usize, usize) {
        let q = self.lock();
        (q.live, q.order.len())
    }

    fn add(self: &Arc<Self>, waker: &Waker) -> (u32, u32) {
        let deadline = Instant::now() + self.idle;
        let mut q = self.lock();
        let slot = match q.free.pop() {
            Some(slot) => slot,
            None => {
                q.slots.push(Slot::default());
                (q.slots.len() - 1) as u32
            }
        };
        let s = &mut q.slots[slot as usize];
        let generation = s.generation;
        if self.shut_down.load(Ordering::Acquire) {
            // Shut down between the wait's first look and here: it ends at once.
            s.waiting = false;
            s.expired = true;
            waker.wake_by_ref();
            return (slot, generation);
        }
        s.waiting = true;
        s.expired = false;
        s.waker = Some(waker.clone());
        q.order.push_back((deadline, slot, generation));
        q.live += 1;
        if !q.sweeping {
            q.sweeping = true;
            tokio::spawn(sweep(self.clone()));
        }
        (slot, generation)
    }

    fn poll_expired(&self, (slot, _): (u32, u32), waker: &Waker) -> bool {
        let mut q = self.lock();
        let s = &mut q.slots[slot as usize];
        if s.expired {
            return true;
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        false
    }

    fn remove(&self, (slot, _): (u32, u32)) {
        let mut q = self.lock();
        if q.slots[slot as usize].waiting {
            q.live -= 1;
        }
        let s = &mut q.slots[slot as usize];
        s.waiting = false;
        s.expired = false;
        s.waker = None;
        s.generation = s.generation.wrapping_add(1);
        q.free.push(slot);
        // Entries of ended waits stay until they reach the front; past twice the live ones
        // (and a few), keep only the live ones (amortised: each entry is moved at most once
        // per compaction that the same number of removals paid for).
        if q.order.len() > 2 * q.live + 64 {
            let Inner { order, slots, .. } = &mut *q;
            order.retain(|&(_, slot, generation)| {
                let s = &slots[slot as usize];
                s.generation == generation && s.waiting
            });
        }
    }

    /// Wake the waits whose deadline passed by `now`; the deadline of the next entry, or
    /// `None` when the queue is empty (the sweeper then ends).
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut wake = Vec::new();
        let next = {
            let mut q = self.lock();
            let Inner {
                order,
                slots,
                live,
                sweeping,
                ..
            } = &mut *q;
            loop {
                match order.front() {
                    None => {
                        *sweeping = false;
                        break None;
                    }
                    Some(&(deadline, _, _)) if deadline > now => break Some(deadline),
                    Some(&(_, slot, generation)) => {
                        order.pop_front();
                        let s = &mut slots[slot as usize];
                        if s.generation == generation && s.waiting {
                            s.waiting = false;
                            s.expired = true;
                            *live -= 1;
                            wake.extend(s.waker.take());
                        }
                    }
                }
            }
        };
        for w in wake {
            w.wake();
        }
        next
    }
}

async fn sweep(queue: Arc<IdleQueue>) {
    let tick = tick(queue.idle);
    let mut last = Instant::now();
    while let Some(next) = queue.expire(Instant::now()) {
        let at = next.max(last + tick);
        tokio::time::sleep_until(at).await;
        last = Instant::now();
    }
}

/// One idle wait; see [`IdleQueue::wait`].
pub struct IdleWait {
    queue: Arc<IdleQueue>,
    key: Option<(u32, u32)>,
}

impl Future for IdleWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.key {
            None if self.queue.is_shut_down() => Poll::Ready(()),
            None => {
                let key = self.queue.add(cx.waker());
                self.key = Some(key);
                Poll::Pending
            }
            Some(key) if self.queue.poll_expired(key, cx.waker()) => Poll::Ready(()),
            Some(_) => Poll::Pending,
        }
    }
}

impl Drop for IdleWait {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.queue.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_within_a_tick_after_its_deadline() {
        let q = IdleQueue::new(Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        q.wait().await;
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert!(took <= Duration::from_secs(10) + tick(q.idle), "{took:?}");
        assert_eq!(q.waiting(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_dropped_early_never_fires_and_its_slot_is_reused() {
        let q = IdleQueue::new(Duration::from_secs(1));
        // Ended by a request after 100 ms: a select like the head read's.
        tokio::select! {
            () = q.wait() => panic!("fired early"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert_eq!(q.waiting().0, 0);
        // The next wait takes the same slot under a new generation: the old entry, still
        // queued, must not end it.
        let started = tokio::time::Instant::now();
        q.wait().await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "ended by the old entry: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_waits_end_in_order_and_the_sweeper_stops() {
        let q = IdleQueue::new(Duration::from_secs(2));
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * i)).await;
                let started = tokio::time::Instant::now();
                q.wait().await;
                started.elapsed()
            }));
        }
        for t in tasks {
            let took = t.await.unwrap();
            assert!(took >= Duration::from_secs(2), "{took:?}");
            assert!(took <= Duration::from_secs(2) + tick(q.idle), "{took:?}");
        }
        assert_eq!(q.waiting(), (0, 0));
        assert!(!q.lock().sweeping, "the sweeper ends with the queue empty");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_every_wait_and_each_later_one_at_once() {
        let q = IdleQueue::new(Duration::from_secs(60));
        let (tx, rx) = tokio::sync::watch::channel(false);
        q.watch_shutdown(&rx);
        q.watch_shutdown(&rx); // once per queue: a second call spawns nothing
        let waits: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(q.waiting().0, 3);
        assert!(!q.is_shut_down());
        let started = tokio::time::Instant::now();
        tx.send(true).unwrap();
        for w in waits {
            w.await.unwrap();
        }
        assert!(q.is_shut_down());
        assert_eq!(q.waiting().0, 0);
        // Ended by the shutdown, not by their 60 s.
        assert!(started.elapsed() < Duration::from_secs(1));
        // A wait begun after the shutdown ends at its first poll, and leaves nothing queued.
        let waker = Waker::noop().clone();
        let mut late = Box::pin(q.wait());
        assert!(late
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
        drop(late);
        assert_eq!(q.waiting().0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_stays_within_twice_the_live_waits() {
        let q = IdleQueue::new(Duration::from_secs(60));
        let waker = Waker::noop().clone();
        // One connection waiting the whole time, and 10,000 requests on others that each end
        // their wait at once.
        let mut long = Box::pin(q.wait());
        assert!(long
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        for _ in 0..10_000 {
            let mut w = Box::pin(q.wait());
            assert!(w
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            drop(w);
            let (live, queued) = q.waiting();
            assert_eq!(live, 1);
            assert!(queued <= 2 * live + 65, "{queued} entries for {live} waits");
        }
        drop(long);
        assert_eq!(q.waiting().0, 0);
    }
}
