//! The closed label sets of every metric family, gathered from the enums that produce them, so
//! that `Metrics::preinit` creates a zero series for every value a counter can ever take.

use crate::allow::ask::Misconfiguration;
use crate::allow::database::QueryOutcome;
use crate::allow::decision::{DecidedBy, DecisionResult};
use crate::certs::certificate::BundleErrorKind;
use crate::certs::challenge::LookupResult;
use crate::certs::issuer::acme::settings::{ChallengeType, OrderOutcome};
use crate::certs::issuer::{IssueOutcome, IssuerKind};
use crate::certs::maintain::{ProvisionKind, ProvisionOutcome};
use crate::certs::manager::{CertSource, RefusalKind, RenewalOutcome};
use crate::http::plain::PlainKind;
use crate::http::proxy::RequestRefusal;
use crate::limits::connections::{CloseReason, Listener, Protocol};
use crate::limits::issuance::LimitKind;
use crate::metrics::ClosedSets;
use crate::pg::listen::{FeedKind, NotificationOutcome};
use crate::tls::handshake::HandshakeOutcome;

/// Every closed label set, from its enum.
pub fn closed_sets() -> ClosedSets {
    ClosedSets {
        handshake_outcomes: HandshakeOutcome::LABELS,
        cert_sources: CertSource::LABELS,
        refusals: RefusalKind::LABELS,
        decision_sources: DecidedBy::LABELS,
        decision_results: DecisionResult::LABELS,
        database_outcomes: QueryOutcome::LABELS,
        ask_misconfigurations: Misconfiguration::LABELS,
        limits: LimitKind::LABELS,
        challenges: ChallengeType::LABELS,
        order_outcomes: OrderOutcome::LABELS,
        issuers: IssuerKind::LABELS,
        issue_outcomes: IssueOutcome::LABELS,
        bundle_errors: BundleErrorKind::LABELS,
        request_refusals: RequestRefusal::LABELS,
        plain_http: PlainKind::LABELS,
        renewals: RenewalOutcome::LABELS,
        provision_kinds: ProvisionKind::LABELS,
        provision_outcomes: ProvisionOutcome::LABELS,
        notifications: NotificationOutcome::LABELS,
        connection_closes: CloseReason::LABELS,
        listeners: Listener::LABELS,
        protocols: Protocol::LABELS,
        feeds: FeedKind::LABELS,
        circuit_sources: &["database", "ask"],
        challenge_lookups: LookupResult::LABELS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// The exported series of `family` (full name), as their label text `{a="x",b="y"}`.
    fn series(text: &str, family: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(family)?;
                let labels = rest.split_once(' ')?.0;
                (labels.starts_with('{') || labels.is_empty()).then(|| labels.to_string())
            })
            .collect()
    }

    /// Every value of every closed set has a zero series in its family from the start: a new
    /// enum variant cannot be missed, and a family left out of `preinit` fails here.
    #[test]
    fn every_label_of_every_set_has_a_zero_series() {
        let metrics = Metrics::new().unwrap();
        let sets = closed_sets();
        metrics.preinit(&sets);
        let text = String::from_utf8(metrics.encode()).unwrap();
        let families: &[(&str, &str, &[&str])] = &[
            (
                "tenant_edge_tls_handshakes_total",
                "outcome",
                sets.handshake_outcomes,
            ),
            ("tenant_edge_tls_handshakes_total", "outcome", sets.refusals),
            (
                "tenant_edge_tls_handshakes_total",
                "source",
                sets.cert_sources,
            ),
            (
                "tenant_edge_decisions_total",
                "source",
                sets.decision_sources,
            ),
            (
                "tenant_edge_decisions_total",
                "result",
                sets.decision_results,
            ),
            (
                "tenant_edge_database_queries_total",
                "outcome",
                sets.database_outcomes,
            ),
            (
                "tenant_edge_ask_misconfigured_total",
                "reason",
                sets.ask_misconfigurations,
            ),
            ("tenant_edge_issuances_limited_total", "limit", sets.limits),
            (
                "tenant_edge_acme_orders_total",
                "challenge",
                sets.challenges,
            ),
            (
                "tenant_edge_acme_orders_total",
                "outcome",
                sets.order_outcomes,
            ),
            (
                "tenant_edge_acme_order_duration_seconds_count",
                "challenge",
                sets.challenges,
            ),
            ("tenant_edge_issuances_total", "issuer", sets.issuers),
            (
                "tenant_edge_issuances_total",
                "outcome",
                sets.issue_outcomes,
            ),
            (
                "tenant_edge_issuance_duration_seconds_count",
                "issuer",
                sets.issuers,
            ),
            (
                "tenant_edge_store_corrupt_files_total",
                "reason",
                sets.bundle_errors,
            ),
            (
                "tenant_edge_requests_refused_total",
                "reason",
                sets.request_refusals,
            ),
            ("tenant_edge_http_requests_total", "kind", sets.plain_http),
            ("tenant_edge_renewals_total", "outcome", sets.renewals),
            ("tenant_edge_provision_queue", "kind", sets.provision_kinds),
            (
                "tenant_edge_provisioned_total",
                "outcome",
                sets.provision_outcomes,
            ),
            (
                "tenant_edge_notifications_total",
                "outcome",
                sets.notifications,
            ),
        ];
        for (family, label, values) in families {
            let exported = series(&text, family);
            assert!(!values.is_empty(), "{family}{{{label}}}: an empty set");
            for value in *values {
                let want = format!("{label}=\"{value}\"");
                assert!(
                    exported.iter().any(|s| s.contains(&want)),
                    "{family} has no zero series with {want}; exported: {exported:?}"
                );
            }
        }
        let completed = series(&text, "tenant_edge_tls_handshakes_completed_total");
        for resumed in crate::metrics::RESUMED {
            for version in crate::metrics::TLS_VERSIONS {
                for alpn in crate::metrics::ALPNS {
                    let want =
                        format!("{{alpn=\"{alpn}\",resumed=\"{resumed}\",version=\"{version}\"}}");
                    assert!(completed.contains(&want), "no {want} in {completed:?}");
                }
            }
        }
        let waits = series(&text, "tenant_edge_issuance_limit_wait_seconds_count");
        for limit in crate::metrics::WAITED_LIMITS {
            let want = format!("{{limit=\"{limit}\"}}");
            assert!(waits.contains(&want), "no {want} in {waits:?}");
            assert!(
                LimitKind::from_label(limit).is_some(),
                "{limit} is not a LimitKind label"
            );
        }
        let build = series(&text, "tenant_edge_build_info");
        assert!(
            build.iter().any(|s| s.contains(env!("CARGO_PKG_VERSION"))),
            "{build:?}"
        );
        assert!(text.contains("\nprocess_open_fds "), "no process collector");
    }
}
