//! The per-client limit on never-seen names (`limits.clients`): one client address (IPv6: one
//! /64) may try `burst` names the edge has never seen, one more every `refill_interval`. The
//! pre-TLS gate (`tls::gate`) decides what counts as never-seen and asks here; this module only
//! keeps the buckets, bounded in number.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::cidr::{client_key, describe_client};
use crate::util::bucket::TokenBucket;

/// One TLS record (5-byte header and 16 KiB of payload): the largest ClientHello the gate reads
/// by default.
pub const MAX_HELLO_RECORD: usize = 5 + 16_384;

/// Tunables of the per-client limit on never-seen names (`limits.clients`) and of the pre-TLS
/// gate that applies it (`tls::gate`). `Default` is what production runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGateSettings {
    /// Never-seen names one client may try at once (bucket capacity). Default 20: a browser
    /// opening a handful of connections to a brand-new tenant domain never notices.
    pub burst: u32,
    /// One more never-seen name per client every `refill_interval`. Default 1s.
    /// `Duration::ZERO` disables the gate's limit (it still parses, for nothing).
    pub refill_interval: Duration,
    /// Client addresses (or /64s) tracked at once; beyond that the least useful are forgotten
    /// (moka's TinyLFU), which only resets their buckets. Default 100,000 (a few MB). An
    /// address idle for `burst × refill_interval` is forgotten too: its bucket would be full.
    pub max_clients: u64,
    /// IPv6 clients share a bucket per prefix of this length (one subscriber usually gets a
    /// whole /64). Default 64. IPv4 (and IPv4-mapped IPv6) clients are keyed by address.
    pub ipv6_prefix_len: u8,
    /// Longest wait for a whole ClientHello. Default 500ms. A client that has sent nothing or
    /// only part of it by then is passed on (and takes a token, see the module docs).
    pub hello_timeout: Duration,
    /// Largest ClientHello the gate reads, in bytes (record headers included). Default 16,389:
    /// one full TLS record. Larger ones are passed on and take a token.
    pub max_hello_bytes: usize,
}

impl Default for ClientGateSettings {
    fn default() -> Self {
        ClientGateSettings {
            burst: 20,
            refill_interval: Duration::from_secs(1),
            max_clients: 100_000,
            ipv6_prefix_len: 64,
            hello_timeout: Duration::from_millis(500),
            max_hello_bytes: MAX_HELLO_RECORD,
        }
    }
}

impl ClientGateSettings {
    /// Every problem with these values, as `(field, message)`; empty when they are usable.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.burst == 0 {
            problems.push(("burst", "must be at least 1".to_string()));
        }
        if self.max_clients == 0 {
            problems.push(("max_clients", "must be at least 1".to_string()));
        }
        if self.ipv6_prefix_len > 128 {
            problems.push(("ipv6_prefix_len", "must be between 0 and 128".to_string()));
        }
        if self.hello_timeout.is_zero() || self.hello_timeout > Duration::from_secs(10) {
            problems.push((
                "hello_timeout",
                "must be more than 0 and at most 10s (it bounds the wait before TLS)".to_string(),
            ));
        }
        if self.max_hello_bytes < 512 {
            problems.push(("max_hello_bytes", "must be at least 512".to_string()));
        }
        problems
    }
}

/// A token bucket per client address, bounded to `max_clients` addresses.
pub struct ClientLimiter {
    settings: ClientGateSettings,
    clients: moka::sync::Cache<IpAddr, Arc<Mutex<TokenBucket>>>,
}

impl ClientLimiter {
    pub fn new(settings: ClientGateSettings) -> ClientLimiter {
        let idle = settings
            .refill_interval
            .saturating_mul(settings.burst.max(1))
            .clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600));
        let clients = moka::sync::Cache::builder()
            .max_capacity(settings.max_clients.max(1))
            .time_to_idle(idle)
            .build();
        ClientLimiter { settings, clients }
    }

    pub fn settings(&self) -> &ClientGateSettings {
        &self.settings
    }

    /// Take a token from the bucket of `ip`'s client; `Err(wait)` when it is empty.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let s = &self.settings;
        let key = client_key(ip, s.ipv6_prefix_len);
        let burst = s.burst.max(1);
        let bucket = self
            .clients
            .get_with(key, || Arc::new(Mutex::new(TokenBucket::full(burst, now))));
        let taken = bucket.lock().unwrap_or_else(|p| p.into_inner()).try_take(
            s.refill_interval,
            burst,
            now,
        );
        taken
    }

    /// The client `ip` counts as, for log lines: the address, or its `/64`.
    pub fn describe(&self, ip: IpAddr) -> String {
        describe_client(ip, self.settings.ipv6_prefix_len)
    }
}
