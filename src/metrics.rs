//! Prometheus metrics: one `Metrics` value per edge, with its own registry (no global state).
//!
//! Every label value comes from a closed set: a `label_set!` enum owned by the module that
//! counts (its `label()` at the call site, its `LABELS` in [`ClosedSets`]), or a pool name from
//! the config file; never a domain, a tenant, a path or an address taken from traffic. Families
//! are created here and only incremented elsewhere.
//!
//! `new` is longer than 120 lines because it registers every family in one place, name and
//! help text beside the field, so that the families read as one table.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// A closed set of metric label values: a fieldless enum with `label()` and `LABELS` (every
/// variant's label, in declaration order). Adding a variant adds its label to `LABELS`, so the
/// zero series created from it (`Metrics::preinit`) can never miss one.
macro_rules! label_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value of this set, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every label of this set, in declaration order.
            pub const LABELS: &'static [&'static str] = &[$($label),+];

            /// The metric label of this value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            /// The value whose label is `label`.
            #[allow(dead_code)]
            pub fn from_label(label: &str) -> Option<$name> {
                match label { $($label => Some($name::$variant),)+ _ => None }
            }
        }
    };
}
pub(crate) use label_set;

/// The closed label sets of every family, taken from the enums that produce them (the server
/// assembly fills it in, since this module imports nothing above it).
#[derive(Debug, Clone, Copy)]
pub struct ClosedSets {
    /// `tls_handshakes_total{outcome}` when a certificate was found.
    pub handshake_outcomes: &'static [&'static str],
    /// Where a served certificate came from (`tls_handshakes_total{source}`).
    pub cert_sources: &'static [&'static str],
    /// Why a handshake got no certificate (`tls_handshakes_total{source="none"}`).
    pub refusals: &'static [&'static str],
    pub decision_sources: &'static [&'static str],
    pub decision_results: &'static [&'static str],
    pub database_outcomes: &'static [&'static str],
    pub ask_misconfigurations: &'static [&'static str],
    pub limits: &'static [&'static str],
    pub challenges: &'static [&'static str],
    pub order_outcomes: &'static [&'static str],
    pub issuers: &'static [&'static str],
    pub issue_outcomes: &'static [&'static str],
    pub bundle_errors: &'static [&'static str],
    pub request_refusals: &'static [&'static str],
    pub plain_http: &'static [&'static str],
    pub renewals: &'static [&'static str],
    pub provision_kinds: &'static [&'static str],
    pub provision_outcomes: &'static [&'static str],
    pub notifications: &'static [&'static str],
    pub connection_closes: &'static [&'static str],
    pub listeners: &'static [&'static str],
    pub protocols: &'static [&'static str],
    pub feeds: &'static [&'static str],
    /// `source_circuit_open{source}`: the dynamic sources.
    pub circuit_sources: &'static [&'static str],
    pub challenge_lookups: &'static [&'static str],
}

/// `tls_handshakes_total{source}` of a handshake that got no certificate.
pub const NO_SOURCE: &str = "none";

/// `tls_handshakes_completed_total{resumed}`.
pub const RESUMED: [&str; 2] = ["true", "false"];

/// `tls_handshakes_completed_total{version}`: the negotiated protocol version.
pub const TLS_VERSIONS: [&str; 3] = ["TLSv1.3", "TLSv1.2", "other"];

/// `tls_handshakes_completed_total{alpn}`: the negotiated application protocol (`none` when the
/// client offered none we speak).
pub const ALPNS: [&str; 5] = ["h2", "http/1.1", "acme-tls/1", "none", "other"];

/// `tls_handshakes_completed_total{version}` of an OpenSSL version string.
pub fn tls_version_label(version: &str) -> &'static str {
    TLS_VERSIONS
        .iter()
        .find(|v| **v == version)
        .copied()
        .unwrap_or("other")
}

/// `tls_handshakes_completed_total{alpn}` of a negotiated ALPN protocol.
pub fn alpn_label(alpn: Option<&[u8]>) -> &'static str {
    match alpn {
        None => "none",
        Some(b"h2") => "h2",
        Some(b"http/1.1") => "http/1.1",
        Some(b"acme-tls/1") => "acme-tls/1",
        Some(_) => "other",
    }
}

/// Waits for an issuance limit that are observed (`issuance_limit_wait_seconds{limit}`): the
/// limits a new order waits out rather than being refused at once.
pub const WAITED_LIMITS: [&str; 2] = ["rate", "concurrency"];

pub struct Metrics {
    registry: Registry,
    /// outcome: served | a refusal kind; source: memory | disk | issued | none.
    pub handshakes: IntCounterVec,
    /// Completed handshakes, by whether the session was resumed (resumption skips the
    /// callback), protocol version and ALPN.
    pub handshakes_completed: IntCounterVec,
    /// Time a certificate order waited for an issuance limit before it was placed (or gave up).
    /// limit: rate | concurrency.
    pub limit_wait: HistogramVec,
    /// 1, labelled with the version and commit the binary was built from.
    pub build_info: IntGaugeVec,
    /// source: platform | database | ask | cache; result: allowed | denied | error |
    /// stale_allowed (source failed, a previous yes was used) | fail_closed (source failed,
    /// name never allowed before, refused).
    pub decisions: IntCounterVec,
    /// Queries the database allow-list ran. outcome: ok | error | timeout.
    pub database_queries: IntCounterVec,
    /// Ask-URL answers that are configuration errors. reason: redirect | status | unreachable.
    pub ask_misconfigured: IntCounterVec,
    /// New orders held back. limit: rate | concurrency | backoff | budget | client.
    pub issuances_limited: IntCounterVec,
    /// ACME orders. challenge: http-01 | tls-alpn-01; outcome: valid | invalid | error.
    pub acme_orders: IntCounterVec,
    /// ACME accounts registered again because the CA no longer knew ours.
    pub acme_accounts_replaced: IntCounter,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    pub acme_order_duration: HistogramVec,
    /// Background renewals. outcome: renewed | failed | skipped_not_allowed.
    pub renewals: IntCounterVec,
    /// Names waiting for background issuance. kind: renewal | new.
    pub provision_queue: IntGaugeVec,
    /// Background issuance results. outcome: issued | already_valid | not_allowed | failed.
    pub provisioned: IntCounterVec,
    /// Tenant-change notifications (LISTEN). outcome: applied | ignored.
    pub notifications: IntCounterVec,
    /// 1 while the LISTEN connection to PostgreSQL is up. feed: tenants | certificates.
    pub notify_connected: IntGaugeVec,
    /// 1 while a dynamic source's circuit is open (not asked). source: database | ask.
    pub source_circuit_open: IntGaugeVec,
    /// issuer: internal | acme; outcome: success | failure.
    pub issuances: IntCounterVec,
    pub issuance_duration: HistogramVec,
    pub certificates_cached: IntGauge,
    pub soonest_expiry: Gauge,
    /// reason: a `BundleError` kind; a corrupt, truncated or mismatched file treated as absent.
    pub store_corrupt: IntCounterVec,
    /// pool, class: 1xx..5xx | error.
    pub upstream_requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_retries: IntCounterVec,
    /// pool: backends currently passing their health check / configured.
    pub upstream_healthy: IntGaugeVec,
    pub upstream_backends: IntGaugeVec,
    /// reason: misdirected | no_host | not_allowed.
    pub requests_refused: IntCounterVec,
    /// The plain-HTTP listener. kind: redirect | challenge_hit | challenge_miss | bad_token | bad_host.
    pub http_requests: IntCounterVec,
    /// Where a CA's validation request found its answer. result: local | shared_hit |
    /// shared_miss | skipped (not announced, not looked up).
    pub challenge_lookups: IntCounterVec,
    /// Connections the edge refused or closed. reason: a `CloseReason` label.
    pub connections_closed: IntCounterVec,
    /// Connections open now. listener: https | http; protocol: tls | http/1.1 | h2 | other.
    pub connections_open: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        fn counter(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(format!("tenant_edge_{name}"), help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        fn histogram(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
            buckets: &[f64],
        ) -> prometheus::Result<HistogramVec> {
            let opts =
                HistogramOpts::new(format!("tenant_edge_{name}"), help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, labels)?;
            r.register(Box::new(h.clone()))?;
            Ok(h)
        }
        fn gauges(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(format!("tenant_edge_{name}"), help), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        }
        let certificates_cached = IntGauge::new(
            "tenant_edge_certificates_cached",
            "Certificates held in memory, ready for handshakes",
        )?;
        r.register(Box::new(certificates_cached.clone()))?;
        let soonest_expiry = Gauge::new(
            "tenant_edge_certificate_soonest_expiry_timestamp_seconds",
            "Unix time of the earliest notAfter among certificates held in memory (0 when none)",
        )?;
        r.register(Box::new(soonest_expiry.clone()))?;
        let acme_accounts_replaced = IntCounter::new(
            "tenant_edge_acme_accounts_replaced_total",
            "ACME accounts registered again because the CA no longer knew the one in use",
        )?;
        r.register(Box::new(acme_accounts_replaced.clone()))?;
        let access_log_dropped = IntCounter::new(
            "tenant_edge_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind",
        )?;
        r.register(Box::new(access_log_dropped.clone()))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        const LATENCY: &[f64] = &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        const ISSUANCE: &[f64] = &[
            0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        let metrics = Metrics {
            handshakes: counter(
                &r,
                "tls_handshakes_total",
                "Certificate selections at handshake time, by outcome and certificate source",
                &["outcome", "source"],
            )?,
            handshakes_completed: counter(
                &r,
                "tls_handshakes_completed_total",
                "TLS handshakes completed, by session resumption, protocol version and ALPN",
                &["resumed", "version", "alpn"],
            )?,
            limit_wait: histogram(
                &r,
                "issuance_limit_wait_seconds",
                "Time a certificate order waited for an issuance limit (rate, concurrency)",
                &["limit"],
                ISSUANCE,
            )?,
            build_info: gauges(
                &r,
                "build_info",
                "Always 1; labelled with the version and commit of the running binary",
                &["version", "commit"],
            )?,
            decisions: counter(
                &r,
                "decisions_total",
                "Allow-list decisions, by source and result",
                &["source", "result"],
            )?,
            database_queries: counter(
                &r,
                "database_queries_total",
                "Allow-list queries sent to PostgreSQL, by outcome",
                &["outcome"],
            )?,
            ask_misconfigured: counter(
                &r,
                "ask_misconfigured_total",
                "Ask-URL answers that indicate a configuration error, by reason",
                &["reason"],
            )?,
            issuances_limited: counter(
                &r,
                "issuances_limited_total",
                "New certificate orders held back by an abuse limit, by limit",
                &["limit"],
            )?,
            renewals: counter(
                &r,
                "renewals_total",
                "Background certificate renewals, by outcome",
                &["outcome"],
            )?,
            provision_queue: gauges(
                &r,
                "provision_queue",
                "Names waiting for background issuance, by kind",
                &["kind"],
            )?,
            provisioned: counter(
                &r,
                "provisioned_total",
                "Background issuance results (pre-provisioning and renewal), by outcome",
                &["outcome"],
            )?,
            notifications: counter(
                &r,
                "notifications_total",
                "Tenant-change notifications received over LISTEN, by outcome",
                &["outcome"],
            )?,
            notify_connected: gauges(
                &r,
                "notify_connected",
                "1 while the LISTEN connection to PostgreSQL is up and answering its probes",
                &["feed"],
            )?,
            source_circuit_open: gauges(
                &r,
                "source_circuit_open",
                "1 while an allow-list source is not asked after repeated failures (a probe runs)",
                &["source"],
            )?,
            acme_orders: counter(
                &r,
                "acme_orders_total",
                "ACME orders, by challenge type and outcome",
                &["challenge", "outcome"],
            )?,
            acme_order_duration: histogram(
                &r,
                "acme_order_duration_seconds",
                "Time from new order to downloaded certificate",
                &["challenge"],
                ISSUANCE,
            )?,
            issuances: counter(
                &r,
                "issuances_total",
                "Certificate issuance attempts, by issuer and outcome",
                &["issuer", "outcome"],
            )?,
            issuance_duration: histogram(
                &r,
                "issuance_duration_seconds",
                "Time to issue one certificate",
                &["issuer"],
                ISSUANCE,
            )?,
            certificates_cached,
            acme_accounts_replaced,
            access_log_dropped,
            soonest_expiry,
            store_corrupt: counter(
                &r,
                "store_corrupt_files_total",
                "Stored files found corrupt, truncated or mismatched (treated as absent)",
                &["reason"],
            )?,
            upstream_requests: counter(
                &r,
                "upstream_requests_total",
                "Proxied requests, by pool and response status class",
                &["pool", "class"],
            )?,
            request_duration: histogram(
                &r,
                "request_duration_seconds",
                "Time from request header to end of response",
                &["pool"],
                LATENCY,
            )?,
            upstream_retries: counter(
                &r,
                "upstream_retries_total",
                "Connect failures retried on another backend",
                &["pool"],
            )?,
            upstream_healthy: gauges(
                &r,
                "upstream_backends_healthy",
                "Backends passing their health check",
                &["pool"],
            )?,
            upstream_backends: gauges(&r, "upstream_backends", "Backends configured", &["pool"])?,
            requests_refused: counter(
                &r,
                "requests_refused_total",
                "HTTPS requests answered by the edge itself, by reason",
                &["reason"],
            )?,
            http_requests: counter(
                &r,
                "http_requests_total",
                "Requests on the plain-HTTP listener, by kind",
                &["kind"],
            )?,
            challenge_lookups: counter(
                &r,
                "challenge_lookups_total",
                "ACME challenge answers looked up for a validation request, by where",
                &["result"],
            )?,
            connections_closed: counter(
                &r,
                "connections_closed_total",
                "Connections the edge refused or closed (timeouts, limits), by reason",
                &["reason"],
            )?,
            connections_open: gauges(
                &r,
                "connections_open",
                "Client connections open now, by listener and protocol",
                &["listener", "protocol"],
            )?,
            registry: r,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("TENANT_EDGE_COMMIT")])
            .set(1);
        Ok(metrics)
    }

    /// Create the series of every closed label set at zero, so that every family is exported
    /// from the first scrape (dashboards and alert rules see 0, not "no data").
    pub fn preinit(&self, sets: &ClosedSets) {
        for outcome in sets.handshake_outcomes {
            for source in sets.cert_sources {
                self.handshakes.with_label_values(&[outcome, source]);
            }
        }
        for outcome in sets.refusals {
            self.handshakes.with_label_values(&[outcome, NO_SOURCE]);
        }
        for resumed in RESUMED {
            for version in TLS_VERSIONS {
                for alpn in ALPNS {
                    self.handshakes_completed
                        .with_label_values(&[resumed, version, alpn]);
                }
            }
        }
        for limit in WAITED_LIMITS {
            self.limit_wait.with_label_values(&[limit]);
        }
        for source in sets.decision_sources {
            for result in sets.decision_results {
                self.decisions.with_label_values(&[source, result]);
            }
        }
        zero(&self.database_queries, sets.database_outcomes);
        zero(&self.ask_misconfigured, sets.ask_misconfigurations);
        zero(&self.issuances_limited, sets.limits);
        for challenge in sets.challenges {
            self.acme_order_duration.with_label_values(&[challenge]);
            for outcome in sets.order_outcomes {
                self.acme_orders.with_label_values(&[challenge, outcome]);
            }
        }
        for issuer in sets.issuers {
            self.issuance_duration.with_label_values(&[issuer]);
            for outcome in sets.issue_outcomes {
                self.issuances.with_label_values(&[issuer, outcome]);
            }
        }
        zero(&self.store_corrupt, sets.bundle_errors);
        zero(&self.requests_refused, sets.request_refusals);
        zero(&self.http_requests, sets.plain_http);
        zero(&self.renewals, sets.renewals);
        for kind in sets.provision_kinds {
            self.provision_queue.with_label_values(&[kind]);
        }
        zero(&self.provisioned, sets.provision_outcomes);
        zero(&self.notifications, sets.notifications);
        zero(&self.connections_closed, sets.connection_closes);
        zero(&self.challenge_lookups, sets.challenge_lookups);
        for feed in sets.feeds {
            self.notify_connected.with_label_values(&[feed]);
        }
        for source in sets.circuit_sources {
            self.source_circuit_open.with_label_values(&[source]);
        }
        for listener in sets.listeners {
            for protocol in sets.protocols {
                self.connections_open
                    .with_label_values(&[listener, protocol]);
            }
        }
    }

    /// Create the per-pool series at zero (pool names come from the config).
    pub fn preinit_pool(&self, pool: &str) {
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "error"] {
            self.upstream_requests.with_label_values(&[pool, class]);
        }
        self.request_duration.with_label_values(&[pool]);
        self.upstream_retries.with_label_values(&[pool]);
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            log::error!("encoding metrics failed: {e}");
        }
        buf
    }
}

/// `2xx`-style class of an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// The `class` label values of `upstream_requests_total`, indexed by `status_class_index`.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Where `status` falls in `STATUS_CLASSES` (anything outside 100–599, 0 included: "error").
pub fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// Create the series of a one-label family at zero for every label of `labels`.
fn zero(family: &IntCounterVec, labels: &[&str]) {
    for label in labels {
        family.with_label_values(&[label]);
    }
}
