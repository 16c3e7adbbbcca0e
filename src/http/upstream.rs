//! Upstream pools (kamal-proxy instances): selection, health checks, routing by Host suffix.
//!
//! Each pool is a `pingora-load-balancing` `LoadBalancer` whose health check runs as a Pingora
//! background service; the proxy only calls `select`. Data (which backend) is kept apart from
//! the time-driven loop (the background service), as in Pingora's own split.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::background_service;
use pingora::server::Server;
use prometheus::{Histogram, IntCounter};

use crate::domain::Domain;
use crate::metrics::{status_class_index, Metrics, STATUS_CLASSES};

/// `upstreams:`: pools of backends and the routes that pick one by Host.
#[derive(Debug, Clone)]
pub struct UpstreamsSettings {
    pub pools: Vec<PoolSettings>,
    /// Index into `pools`.
    pub default_pool: usize,
    /// Longest suffix first.
    pub routes: Vec<RouteSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub name: String,
    pub backends: Vec<SocketAddr>,
    pub selection: Selection,
    pub connect_timeout: Duration,
    /// How long the response head may take (then 504).
    pub response_timeout: Duration,
    /// How long a response body may go without a byte (streamed responses, SSE).
    pub body_timeout: Duration,
    /// How long an upgraded connection (WebSocket) may be idle, in either direction.
    pub upgrade_timeout: Duration,
    pub health_check: Option<HealthCheckSettings>,
}

#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        host: String,
        /// The statuses that pass, inclusive (default 200-299).
        expected_status: (u16, u16),
        /// Extra request headers (for example `X-Forwarded-Proto: https` for an app that
        /// redirects plain HTTP).
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark a backend healthy again.
    pub rise: usize,
    /// Consecutive failures to mark a backend unhealthy.
    pub fall: usize,
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Requests whose Host is this name or below it go to `pool`.
    pub suffix: Domain,
    /// Index into `UpstreamsSettings::pools`.
    pub pool: usize,
}

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Hash(Arc<LoadBalancer<Consistent>>),
}

pub struct Pool {
    pub name: String,
    balancer: Balancer,
    /// The backends and whether each passes its health check (round robin reads it).
    health: Arc<BackendHealth>,
    /// Round robin's next turn.
    next: AtomicUsize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub body_timeout: Duration,
    pub upgrade_timeout: Duration,
    /// Unix seconds of the last forced re-probe (all backends were down).
    last_reprobe: AtomicI64,
    /// This pool's series of the per-request metrics, looked up once.
    pub metrics: PoolMetrics,
}

/// One pool's series of `upstream_requests_total`, `request_duration_seconds` and
/// `upstream_retries_total`: resolved when the pool is built, so a request counts itself
/// without hashing label values under the family's lock.
pub struct PoolMetrics {
    /// By status class, in `STATUS_CLASSES` order.
    requests: [IntCounter; STATUS_CLASSES.len()],
    duration: Histogram,
    pub retries: IntCounter,
}

impl PoolMetrics {
    fn new(pool: &str, metrics: &Metrics) -> PoolMetrics {
        PoolMetrics {
            requests: STATUS_CLASSES
                .map(|class| metrics.upstream_requests.with_label_values(&[pool, class])),
            duration: metrics.request_duration.with_label_values(&[pool]),
            retries: metrics.upstream_retries.with_label_values(&[pool]),
        }
    }

    /// A request of this pool ended with `status` (0: none was sent) after `seconds`.
    pub fn request(&self, status: u16, seconds: f64) {
        self.requests[status_class_index(status)].inc();
        self.duration.observe(seconds);
    }
}

impl Pool {
    /// Probe every backend now (at most once a second), so that a backend that is back is
    /// marked healthy without waiting for the next interval.
    fn reprobe(&self) {
        let now = crate::util::time::unix_now();
        let last = self.last_reprobe.load(Ordering::Relaxed);
        if now <= last
            || self
                .last_reprobe
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        log::warn!(
            "every backend of pool {} is marked unhealthy; trying one anyway and probing all now",
            self.name
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        match &self.balancer {
            Balancer::RoundRobin(lb) => {
                let lb = lb.clone();
                runtime.spawn(async move { lb.backends().run_health_check(true).await });
            }
            Balancer::Hash(lb) => {
                let lb = lb.clone();
                runtime.spawn(async move { lb.backends().run_health_check(true).await });
            }
        }
    }
}

pub struct Upstreams {
    pools: Vec<Pool>,
    default_pool: usize,
    /// (suffix, pool index), longest suffix first.
    routes: Vec<(Domain, usize)>,
}

#[derive(Debug, thiserror::Error)]
#[error("upstreams.pools.{pool}: {message}")]
pub struct UpstreamError {
    pool: String,
    message: String,
}

/// A pool's backends, in configuration order, and the health-check verdict of each: the
/// health checks' observer writes it, round robin reads it (a few loads per request instead
/// of the load balancer's per-backend hash lookups).
struct BackendHealth {
    addrs: Vec<SocketAddr>,
    up: Vec<AtomicBool>,
}

impl BackendHealth {
    fn new(addrs: &[SocketAddr]) -> BackendHealth {
        BackendHealth {
            addrs: addrs.to_vec(),
            // Healthy until a check says otherwise, as Pingora's load balancer starts them.
            up: addrs.iter().map(|_| AtomicBool::new(true)).collect(),
        }
    }

    fn set(&self, addr: Option<&SocketAddr>, healthy: bool) {
        if let Some(i) = self.addrs.iter().position(|a| Some(a) == addr) {
            self.up[i].store(healthy, Ordering::Relaxed);
        }
    }

    fn healthy(&self) -> usize {
        self.up.iter().filter(|u| u.load(Ordering::Relaxed)).count()
    }
}

/// Keeps the health table and `tenant_edge_upstream_backends_healthy{pool}` in step with
/// health flips.
struct HealthGauge {
    health: Arc<BackendHealth>,
    gauge: prometheus::IntGauge,
    pool: String,
}

#[async_trait]
impl HealthObserve for HealthGauge {
    async fn observe(&self, target: &Backend, healthy: bool) {
        self.health.set(target.addr.as_inet(), healthy);
        self.gauge.set(self.health.healthy() as i64);
        if healthy {
            log::info!(
                "upstream {} in pool {} is healthy again",
                target.addr,
                self.pool
            );
        } else {
            log::warn!(
                "upstream {} in pool {} failed its health check",
                target.addr,
                self.pool
            );
        }
    }
}

fn health_check(
    pool: &PoolSettings,
    hc: &HealthCheckSettings,
    observer: HealthGauge,
) -> Box<dyn HealthCheck + Send + Sync> {
    match &hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.consecutive_success = hc.rise;
            check.consecutive_failure = hc.fall;
            check.health_changed_callback = Some(Box::new(observer));
            check
        }
        HealthCheckKind::Http {
            path,
            host,
            expected_status,
            headers,
        } => {
            let mut check = HttpHealthCheck::new(host, false);
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.consecutive_success = hc.rise;
            check.consecutive_failure = hc.fall;
            check.health_changed_callback = Some(Box::new(observer));
            if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                let base_ok = req.insert_header("Host", host.as_str()).is_ok()
                    && req
                        .insert_header("User-Agent", "tenant-edge-health-check")
                        .is_ok();
                let extra_ok = headers
                    .iter()
                    .all(|(k, v)| req.insert_header(k.clone(), v.as_str()).is_ok());
                if base_ok && extra_ok {
                    check.req = req;
                }
            }
            let (lo, hi) = *expected_status;
            let pool = pool.name.clone();
            check.validator = Some(Box::new(move |resp| {
                let status = resp.status.as_u16();
                if (lo..=hi).contains(&status) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unexpected health check status", status),
                        format!("pool {pool}: expected {lo}-{hi}"),
                    )
                }
            }));
            Box::new(check)
        }
    }
}

fn build_lb<S>(
    pool: &PoolSettings,
    metrics: &Metrics,
    health: &Arc<BackendHealth>,
) -> Result<LoadBalancer<S>, UpstreamError>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut lb = LoadBalancer::<S>::try_from_iter(pool.backends.iter().copied()).map_err(|e| {
        UpstreamError {
            pool: pool.name.clone(),
            message: e.to_string(),
        }
    })?;
    metrics.preinit_pool(&pool.name);
    let count = pool.backends.len() as i64;
    metrics
        .upstream_backends
        .with_label_values(&[&pool.name])
        .set(count);
    let gauge = metrics.upstream_healthy.with_label_values(&[&pool.name]);
    gauge.set(count);
    if let Some(hc) = &pool.health_check {
        let observer = HealthGauge {
            health: health.clone(),
            gauge,
            pool: pool.name.clone(),
        };
        lb.set_health_check(health_check(pool, hc, observer));
        lb.health_check_frequency = Some(hc.interval);
        lb.parallel_health_check = true;
    }
    Ok(lb)
}

impl Upstreams {
    /// Build every pool and register its health-check loop as a background service of `server`.
    pub fn build(
        cfg: &UpstreamsSettings,
        metrics: &Metrics,
        server: &mut Server,
    ) -> Result<Upstreams, UpstreamError> {
        let mut pools = Vec::with_capacity(cfg.pools.len());
        for p in &cfg.pools {
            let name = format!("health check {}", p.name);
            let health = Arc::new(BackendHealth::new(&p.backends));
            let balancer = match p.selection {
                Selection::RoundRobin => {
                    let service =
                        background_service(&name, build_lb::<RoundRobin>(p, metrics, &health)?);
                    let lb = service.task();
                    server.add_service(service);
                    Balancer::RoundRobin(lb)
                }
                Selection::ConsistentHash => {
                    let service =
                        background_service(&name, build_lb::<Consistent>(p, metrics, &health)?);
                    let lb = service.task();
                    server.add_service(service);
                    Balancer::Hash(lb)
                }
            };
            pools.push(Pool {
                name: p.name.clone(),
                balancer,
                health,
                next: AtomicUsize::new(0),
                connect_timeout: p.connect_timeout,
                response_timeout: p.response_timeout,
                body_timeout: p.body_timeout,
                upgrade_timeout: p.upgrade_timeout,
                last_reprobe: AtomicI64::new(0),
                metrics: PoolMetrics::new(&p.name, metrics),
            });
        }
        Ok(Upstreams {
            pools,
            default_pool: cfg.default_pool,
            routes: cfg
                .routes
                .iter()
                .map(|r| (r.suffix.clone(), r.pool))
                .collect(),
        })
    }

    /// The pool index for a request's Host: the longest matching route, else the default.
    pub fn pool_for(&self, host: &Domain) -> usize {
        self.routes
            .iter()
            .find(|(suffix, _)| host.is_under(suffix))
            .map_or(self.default_pool, |(_, pool)| *pool)
    }

    pub fn pool(&self, index: usize) -> &Pool {
        &self.pools[index]
    }

    /// A healthy backend of `pool` other than `skip` (round robin, or consistent hashing on
    /// `host`). When every backend is unhealthy, one of them anyway (a health check is only
    /// as fresh as its interval: a restarted kamal-proxy is back before its next check) and
    /// every backend is probed again at once. `None` when `skip` is the only backend.
    pub fn select(&self, pool: usize, host: &str, skip: Option<SocketAddr>) -> Option<SocketAddr> {
        let p = &self.pools[pool];
        let pick = |healthy_only: bool| match &p.balancer {
            Balancer::RoundRobin(_) => {
                let h = &p.health;
                let n = h.addrs.len();
                let start = p.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| (start.wrapping_add(i)) % n)
                    .find(|&i| {
                        (!healthy_only || h.up[i].load(Ordering::Relaxed))
                            && skip != Some(h.addrs[i])
                    })
                    .map(|i| h.addrs[i])
            }
            Balancer::Hash(lb) => {
                let untried = |b: &Backend| b.addr.as_inet().is_some_and(|a| skip != Some(*a));
                let accept = |b: &Backend, healthy: bool| (healthy || !healthy_only) && untried(b);
                lb.select_with(host.as_bytes(), 64, accept)
                    .and_then(|b| b.addr.as_inet().copied())
            }
        };
        if let Some(addr) = pick(true) {
            return Some(addr);
        }
        let addr = pick(false)?;
        p.reprobe();
        Some(addr)
    }
}
