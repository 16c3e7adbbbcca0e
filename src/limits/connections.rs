//! Connection limits (`limits.connections`): how many connections the edge holds open in
//! total and per client address (IPv6: per /64), and what one connection may do (HTTP/2
//! streams, requests, client resets). One [`Connection`] per accepted socket, admitted before
//! any TLS work and released when it is dropped, whatever ends the connection; every refusal
//! and every close the edge decides is counted in `tenant_edge_connections_closed_total{reason}`.
//!
//! No Pingora here: `tls::accept` and `http::conn` hold a `Connection` for the socket's life.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};

use crate::domain::Domain;
use crate::metrics::{label_set, Metrics};
use crate::net::cidr::client_key;

/// Lock shards of the per-client and live-connection tables.
const SHARDS: usize = 16;

/// An odd 64-bit constant (2^64 / golden ratio) for multiplicative hashing.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hashes the keys of the live-connection table: the address of a connection's socket digest,
/// chosen by the allocator, never by a client, so one multiplication does instead of SipHash
/// (two per lookup, and HTTP/2 looks its connection up on every stream). The client addresses
/// of the per-client table keep the randomised hasher.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }
    fn write_usize(&mut self, n: usize) {
        // Addresses are aligned: the product's low bits alone would repeat; fold the high in.
        let m = (n as u64).wrapping_mul(GOLDEN);
        self.0 = m ^ (m >> 32);
    }
}

type KeyMap<V> = HashMap<usize, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The live-table shard of a connection key (the product's high bits: well mixed).
fn key_shard(key: usize) -> usize {
    ((key as u64).wrapping_mul(GOLDEN) >> 59) as usize % SHARDS
}

/// Tunables of [`Connections`]. `Default` is what production runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Open connections, all listeners together. Default 16,384 (keep it under the process's
    /// file-descriptor limit, `LimitNOFILE` in systemd).
    pub max: usize,
    /// Open connections per client address (IPv6: per `ipv6_prefix_len`). Default 256: a
    /// browser opens 6 per host, an office behind one NAT a few dozen.
    pub per_client: usize,
    /// IPv6 clients share a count per prefix of this length. Default 64.
    pub ipv6_prefix_len: u8,
    /// Concurrent streams per HTTP/2 connection. Default 100 (nginx 128, HAProxy 100).
    pub h2_streams: u32,
    /// Requests per connection: HTTP/1.1 keep-alive requests, HTTP/2 streams. Default 1,000
    /// (nginx's `keepalive_requests`). Beyond it HTTP/1.1 closes after the response and an
    /// HTTP/2 stream is refused with REFUSED_STREAM, which clients retry on a new connection.
    pub requests: u32,
    /// HTTP/2 streams a client may reset before its connection is closed. Default 200: a
    /// browser resets a few when a page is left; a rapid-reset loop resets thousands.
    pub resets: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            max: 16_384,
            per_client: 256,
            ipv6_prefix_len: 64,
            h2_streams: 100,
            requests: 1_000,
            resets: 200,
        }
    }
}

impl ConnectionSettings {
    /// Every problem with these values, as `(field, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("max", self.max as u64),
            ("per_client", self.per_client as u64),
            ("h2_streams", u64::from(self.h2_streams)),
            ("requests_per_connection", u64::from(self.requests)),
            ("resets_per_connection", u64::from(self.resets)),
        ] {
            if value == 0 {
                problems.push((field, "must be at least 1".to_string()));
            }
        }
        if self.per_client > self.max {
            problems.push(("per_client", format!("must not exceed max ({})", self.max)));
        }
        problems
    }
}

label_set! {
    /// `tenant_edge_connections_closed_total{reason}`: why the edge refused or closed a
    /// connection (a client that closes on its own is not counted).
    pub enum CloseReason {
        MaxConnections => "max_connections",
        MaxPerClient => "max_connections_per_client",
        ProxyUntrusted => "proxy_protocol_untrusted",
        ProxyInvalid => "proxy_protocol_invalid",
        HeaderTimeout => "header_timeout",
        IdleTimeout => "idle_timeout",
        BodyTimeout => "body_timeout",
        BodyTooSlow => "body_too_slow",
        SendTimeout => "send_timeout",
        H2PrefaceTimeout => "h2_preface_timeout",
        H2IdleTimeout => "h2_idle_timeout",
        ResetFlood => "reset_flood",
        NotAllowed => "not_allowed",
        Shutdown => "shutdown",
    }
}

impl CloseReason {
    fn index(self) -> u8 {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8
    }
}

label_set! {
    /// `tenant_edge_connections_open{listener}`.
    pub enum Listener {
        Https => "https",
        Http => "http",
    }
}

label_set! {
    /// `tenant_edge_connections_open{protocol}`: what a connection speaks once it is set up
    /// (`tls` until the handshake is done).
    pub enum Protocol {
        Tls => "tls",
        H1 => "http/1.1",
        H2 => "h2",
        Other => "other",
    }
}

/// The open connections of one edge.
pub struct Connections {
    settings: ConnectionSettings,
    open: AtomicUsize,
    hasher: RandomState,
    /// Open connections per client key; an entry is removed when its count reaches zero, so
    /// the table holds at most `max` entries.
    per_client: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    /// Live connections by the key `register` was given (HTTP/2 streams find their
    /// connection this way). At most `max` entries.
    live: [Mutex<KeyMap<Weak<Connection>>>; SHARDS],
    /// Upgraded connections (WebSockets) by the name they serve, so that a tenant no longer
    /// allowed loses them at once. Dead entries are dropped whenever a name is added.
    upgraded: Mutex<HashMap<Domain, Vec<Weak<Connection>>>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connections {
    pub fn new(settings: ConnectionSettings, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            settings,
            open: AtomicUsize::new(0),
            hasher: RandomState::new(),
            per_client: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            live: std::array::from_fn(|_| Mutex::new(KeyMap::default())),
            upgraded: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// `conn` carries an upgrade (WebSocket) for `name`.
    pub fn register_upgrade(&self, name: &Domain, conn: &Arc<Connection>) {
        let mut upgraded = lock(&self.upgraded);
        // Bounded by the open connections: dead entries go before a new one is added.
        upgraded.retain(|_, conns| {
            conns.retain(|w| w.strong_count() > 0);
            !conns.is_empty()
        });
        upgraded
            .entry(name.clone())
            .or_default()
            .push(Arc::downgrade(conn));
    }

    /// Whether `name` has upgraded connections open.
    pub fn has_upgraded(&self, name: &Domain) -> bool {
        lock(&self.upgraded)
            .get(name)
            .is_some_and(|conns| conns.iter().any(|w| w.strong_count() > 0))
    }

    /// Close every upgraded connection of `name` (the tenant is no longer allowed); returns
    /// how many.
    pub fn kill_upgraded(&self, name: &Domain) -> usize {
        let conns = lock(&self.upgraded).remove(name).unwrap_or_default();
        let mut killed = 0;
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.kill(CloseReason::NotAllowed);
            killed += 1;
        }
        killed
    }

    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admit one more connection from `ip` on `listener`, or say which cap it hits (counted).
    /// The connection counts until the returned value is dropped.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        listener: Listener,
    ) -> Result<Arc<Connection>, CloseReason> {
        let max = self.settings.max;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            self.count(CloseReason::MaxConnections);
            return Err(CloseReason::MaxConnections);
        }
        let key = client_key(ip, self.settings.ipv6_prefix_len);
        {
            let mut table = lock(&self.per_client[self.shard(&key)]);
            let count = table.entry(key).or_insert(0);
            if *count as usize >= self.settings.per_client {
                if *count == 0 {
                    table.remove(&key);
                }
                drop(table);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.count(CloseReason::MaxPerClient);
                return Err(CloseReason::MaxPerClient);
            }
            *count += 1;
        }
        self.metrics
            .connections_open
            .with_label_values(&[listener.label(), Protocol::Tls.label()])
            .inc();
        Ok(Arc::new(Connection {
            table: self.clone(),
            client: key,
            listener,
            protocol: OnceLock::new(),
            close: AtomicU8::new(0),
            requests: AtomicU32::new(0),
            resets: AtomicU32::new(0),
            killed: AtomicBool::new(false),
            kill: tokio::sync::Notify::new(),
            registered: AtomicUsize::new(0),
        }))
    }

    /// The live connection registered under `key` (see [`Connection::register`]).
    pub fn find(&self, key: usize) -> Option<Arc<Connection>> {
        lock(&self.live[key_shard(key)])
            .get(&key)
            .and_then(Weak::upgrade)
    }

    /// Count a refusal that happened before a connection was admitted (or without one).
    pub fn count(&self, reason: CloseReason) {
        self.metrics
            .connections_closed
            .with_label_values(&[reason.label()])
            .inc();
    }

    fn shard<K: std::hash::Hash>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn release(&self, conn: &Connection) {
        {
            let mut table = lock(&self.per_client[self.shard(&conn.client)]);
            if let Some(count) = table.get_mut(&conn.client) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    table.remove(&conn.client);
                }
            }
        }
        let key = conn.registered.load(Ordering::Acquire);
        if key != 0 {
            let mut live = lock(&self.live[key_shard(key)]);
            // Only our own entry: the key may already name a newer connection.
            if live
                .get(&key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), conn))
            {
                live.remove(&key);
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted connection. Dropped when the socket is done with; its drop releases the
/// counts and counts the close reason, if the edge set one.
pub struct Connection {
    table: Arc<Connections>,
    client: IpAddr,
    listener: Listener,
    protocol: OnceLock<Protocol>,
    /// 1 + the index of the `CloseReason`, 0 for none.
    close: AtomicU8,
    requests: AtomicU32,
    resets: AtomicU32,
    killed: AtomicBool,
    kill: tokio::sync::Notify,
    registered: AtomicUsize,
}

pin_project_lite::pin_project! {
    /// The wait of [`Connection::killed`]. It sits beside a whole connection (HTTP/1.1) or
    /// stream (HTTP/2) and is polled every time its task wakes, a few times per request: a poll
    /// with the waker it registered last is one atomic load, where polling the `Notified` again
    /// takes the `Notify`'s lock to compare wakers.
    pub struct Killed<'a> {
        conn: &'a Connection,
        #[pin]
        notified: tokio::sync::futures::Notified<'a>,
        // The waker the `Notified` holds, once it holds one.
        waker: Option<std::task::Waker>,
    }
}

impl std::future::Future for Killed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.conn.killed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // `kill` sets the flag, then wakes that waker.
            return Poll::Pending;
        }
        loop {
            // Created before the flag was read: a `kill` since then has woken it.
            match this.notified.as_mut().poll(cx) {
                Poll::Pending => {
                    *this.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) => {
                    // Woken with no kill (none is sent, but a spurious wake-up costs nothing):
                    // a new `Notified` first, then the flag, so that no `kill` falls between.
                    this.notified.set(this.conn.kill.notified());
                    if this.conn.killed.load(Ordering::Acquire) {
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("client", &self.client)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Make this connection findable under `key` (unique among live connections).
    pub fn register(self: &Arc<Self>, key: usize) {
        if key == 0 {
            return;
        }
        self.registered.store(key, Ordering::Release);
        let table = &self.table;
        lock(&table.live[key_shard(key)]).insert(key, Arc::downgrade(self));
    }

    /// What the connection speaks, once known (moves it in the open-connections gauge).
    pub fn set_protocol(&self, protocol: Protocol) {
        if self.protocol.set(protocol).is_ok() {
            let open = &self.table.metrics.connections_open;
            open.with_label_values(&[self.listener.label(), Protocol::Tls.label()])
                .dec();
            open.with_label_values(&[self.listener.label(), protocol.label()])
                .inc();
        }
    }

    /// Record why the edge is closing this connection (the first reason wins; counted when the
    /// connection is dropped).
    pub fn close_because(&self, reason: CloseReason) {
        let _ =
            self.close
                .compare_exchange(0, reason.index() + 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Close the connection from outside (every waiter on [`Connection::killed`] wakes).
    pub fn kill(&self, reason: CloseReason) {
        self.close_because(reason);
        self.killed.store(true, Ordering::Release);
        self.kill.notify_waiters();
    }

    /// Resolves when [`Connection::kill`] was called.
    pub fn killed(&self) -> Killed<'_> {
        Killed {
            conn: self,
            notified: self.kill.notified(),
            waker: None,
        }
    }

    /// Count one more request; `true` while it is within `requests_per_connection`.
    pub fn note_request(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        n <= self.table.settings.requests
    }

    /// Count one more stream the client reset; past `resets_per_connection` the connection is
    /// killed.
    pub fn note_reset(&self) {
        let n = self.resets.fetch_add(1, Ordering::AcqRel) + 1;
        if n > self.table.settings.resets {
            self.kill(CloseReason::ResetFlood);
        }
    }

    /// The key the client is counted under.
    pub fn client(&self) -> IpAddr {
        self.client
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let protocol = self.protocol.get().copied().unwrap_or(Protocol::Tls);
        self.table
            .metrics
            .connections_open
            .with_label_values(&[self.listener.label(), protocol.label()])
            .dec();
        let close = self.close.load(Ordering::Acquire);
        if let Some(reason) = close
            .checked_sub(1)
            .and_then(|i| CloseReason::ALL.get(usize::from(i)))
        {
            self.table.count(*reason);
        }
        self.table.release(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_connection_keys_spread_over_shards_and_buckets() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        // Addresses as the allocator hands them out: aligned, close together.
        let keys: Vec<usize> = (0..1600).map(|i| 0x7f00_0000_0000 + i * 192).collect();
        let mut shards = [0usize; SHARDS];
        for &k in &keys {
            shards[key_shard(k)] += 1;
        }
        assert!(
            shards.iter().all(|&n| (50..=150).contains(&n)),
            "{shards:?}"
        );
        // The low bits pick a bucket: 1,600 keys over 1,024 buckets leave few empty.
        let build = BuildHasherDefault::<KeyHasher>::default();
        let mut buckets = vec![0usize; 1024];
        for &k in &keys {
            buckets[(build.hash_one(k) as usize) % 1024] += 1;
        }
        let empty = buckets.iter().filter(|&&n| n == 0).count();
        assert!(empty < 400, "{empty} of 1024 buckets empty");
    }

    fn table(max: usize, per_client: usize) -> (Arc<Connections>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let settings = ConnectionSettings {
            max,
            per_client,
            ..ConnectionSettings::default()
        };
        (Connections::new(settings, metrics.clone()), metrics)
    }

    fn closed(m: &Metrics, reason: CloseReason) -> u64 {
        m.connections_closed
            .with_label_values(&[reason.label()])
            .get()
    }

    #[test]
    fn per_client_and_total_caps_hold_and_release() {
        let (t, m) = table(3, 2);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let a1 = t.admit(a, Listener::Https).unwrap();
        let a2 = t.admit(a, Listener::Https).unwrap();
        assert_eq!(
            t.admit(a, Listener::Https).err(),
            Some(CloseReason::MaxPerClient)
        );
        let b1 = t.admit(b, Listener::Http).unwrap();
        assert_eq!(
            t.admit(b, Listener::Http).err(),
            Some(CloseReason::MaxConnections)
        );
        assert_eq!(
            (
                closed(&m, CloseReason::MaxPerClient),
                closed(&m, CloseReason::MaxConnections)
            ),
            (1, 1)
        );
        assert_eq!(t.open(), 3);
        drop(a1);
        assert!(t.admit(a, Listener::Https).is_ok(), "a slot came back");
        drop((a2, b1));
        assert_eq!(t.open(), 0);
        assert!(
            t.per_client.iter().all(|s| lock(s).is_empty()),
            "no empty entries kept"
        );
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let (t, _) = table(10, 1);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _x = t.admit(x, Listener::Https).unwrap();
        assert!(t.admit(y, Listener::Https).is_err(), "same /64");
        assert!(t.admit(z, Listener::Https).is_ok());
    }

    #[tokio::test]
    async fn resets_past_the_cap_kill_and_count_once() {
        let (t, m) = table(10, 10);
        let c = t
            .admit("192.0.2.1".parse().unwrap(), Listener::Https)
            .unwrap();
        c.register(42);
        assert!(t.find(42).is_some());
        for _ in 0..ConnectionSettings::default().resets {
            c.note_reset();
        }
        assert!(!c.killed.load(Ordering::Acquire));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.killed().await })
        };
        tokio::task::yield_now().await;
        c.note_reset();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("killed wakes its waiters")
            .unwrap();
        c.close_because(CloseReason::IdleTimeout); // the first reason wins
        drop(c);
        assert!(t.find(42).is_none());
        assert_eq!(closed(&m, CloseReason::ResetFlood), 1);
        assert_eq!(closed(&m, CloseReason::IdleTimeout), 0);
    }

    /// Counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountingWaker>, std::task::Waker) {
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (w.clone(), std::task::Waker::from(w))
    }

    #[test]
    fn a_kill_wakes_the_waker_the_wait_was_polled_with_last() {
        use std::future::Future;
        let (t, _m) = table(10, 10);
        let c = t
            .admit("192.0.2.1".parse().unwrap(), Listener::Https)
            .unwrap();
        let (first, first_waker) = counting();
        let (second, second_waker) = counting();
        let mut wait = Box::pin(c.killed());
        // Polled again and again by one task: pending, nothing woken.
        for _ in 0..3 {
            let mut cx = Context::from_waker(&first_waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        // Moved to another task: that one's waker is the one to wake.
        let mut cx = Context::from_waker(&second_waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        c.kill(CloseReason::NotAllowed);
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the last waker is woken"
        );
        assert_eq!(first.0.load(Ordering::SeqCst), 0, "an earlier waker is not");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // A wait begun after the kill ends at once, and one created before it but never
        // polled ends on its first poll.
        let mut late = Box::pin(c.killed());
        assert!(late.as_mut().poll(&mut cx).is_ready());
        let c2 = t
            .admit("192.0.2.2".parse().unwrap(), Listener::Https)
            .unwrap();
        let mut early = Box::pin(c2.killed());
        c2.kill(CloseReason::NotAllowed);
        assert!(early.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn requests_are_counted_against_the_cap() {
        let (t, _) = table(10, 10);
        let c = t
            .admit("192.0.2.1".parse().unwrap(), Listener::Https)
            .unwrap();
        let allowed = (0..1_005).filter(|_| c.note_request()).count();
        assert_eq!(allowed, 1_000);
    }
}
