//! `allow:`: platform domains, the database and the ask URL.

use crate::allow::ask::AskSettings;
use crate::allow::circuit::CircuitSettings;
use crate::allow::database::{
    DatabaseSettings, DEFAULT_ALLOW_QUERY, DEFAULT_LIST_QUERY, DEFAULT_NOTIFY_CHANNEL,
};
use crate::allow::list::DecisionSettings;
use crate::allow::pattern::NamePattern;
use crate::allow::AllowSettings;
use crate::config::raw;
use crate::config::values::{opt_duration, secs, Errors};

pub fn build(a: &raw::Allow, errs: &mut Errors<'_>) -> Option<AllowSettings> {
    let platform_domains: Vec<NamePattern> = a
        .platform_domains
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| errs.pattern(&format!("allow.platform_domains[{i}]"), v))
        .collect();
    let database = a.database.as_ref().and_then(|d| build_database(d, errs));
    let ask = a.ask.as_ref().and_then(|k| build_ask(k, errs));
    let allowed_ttl = opt_duration(errs, "allow.allowed_ttl", &a.allowed_ttl, secs(3600));
    let denied_ttl = opt_duration(errs, "allow.denied_ttl", &a.denied_ttl, secs(60));
    let stale_ttl = opt_duration(errs, "allow.stale_ttl", &a.stale_ttl, secs(30));
    if platform_domains.is_empty() && database.is_none() && ask.is_none() && errs.list.is_empty() {
        errs.push(
            "allow",
            None,
            "allows nothing: set platform_domains, database or ask (otherwise every handshake is refused)",
        );
    }
    Some(AllowSettings {
        platform_domains,
        database,
        ask,
        cache: DecisionSettings {
            allowed_ttl: allowed_ttl?,
            denied_ttl: denied_ttl?,
            stale_ttl: stale_ttl?,
        },
    })
}

fn build_database(d: &raw::Database, errs: &mut Errors<'_>) -> Option<DatabaseSettings> {
    let url = match &d.url {
        Some(v) => errs.url("allow.database.url", v, &["postgres", "postgresql"]),
        None => {
            errs.push(
                "allow.database.url",
                None,
                "is required, for example ${DATABASE_URL}",
            );
            None
        }
    };
    let query = d
        .query
        .as_ref()
        .map_or(Some(DEFAULT_ALLOW_QUERY.to_string()), |v| {
            let q = errs.string("allow.database.query", v)?;
            if !q.contains("$1") {
                errs.push(
                    "allow.database.query",
                    Some(v),
                    "must use $1 for the name being checked",
                );
                return None;
            }
            Some(q)
        });
    let timeout = opt_duration(errs, "allow.database.timeout", &d.timeout, secs(2));
    let pool_size = d.pool_size.as_ref().map_or(Some(4), |v| {
        errs.uint("allow.database.pool_size", v, 1, 256)
            .map(|n| n as usize)
    });
    let list_query = d
        .list_query
        .as_ref()
        .map_or(Some(DEFAULT_LIST_QUERY.to_string()), |v| {
            errs.string("allow.database.list_query", v)
        });
    let notify_channel =
        d.notify_channel
            .as_ref()
            .map_or(Some(DEFAULT_NOTIFY_CHANNEL.to_string()), |v| {
                let c = errs.string("allow.database.notify_channel", v)?;
                let ok = !c.is_empty()
                    && c.len() <= 63
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !c.as_bytes()[0].is_ascii_digit();
                if !ok {
                    errs.push(
                        "allow.database.notify_channel",
                        Some(v),
                        "expected a lowercase SQL identifier such as tenant_edge_domains",
                    );
                    return None;
                }
                Some(c)
            });
    let scan_interval = opt_duration(
        errs,
        "allow.database.scan_interval",
        &d.scan_interval,
        secs(600),
    );
    let notify_probe = opt_duration(
        errs,
        "allow.database.notify_probe",
        &d.notify_probe,
        secs(30),
    );
    let d_circuit = CircuitSettings::default();
    let circuit_failures = d
        .circuit_failures
        .as_ref()
        .map_or(Some(d_circuit.failures), |v| {
            errs.uint("allow.database.circuit_failures", v, 1, 1000)
                .map(|n| n as u32)
        });
    let circuit_probe = opt_duration(
        errs,
        "allow.database.circuit_probe",
        &d.circuit_probe,
        d_circuit.probe_interval,
    );
    let tls_root = d.tls_root.as_ref().map_or(Some(None), |v| {
        errs.path("allow.database.tls_root", v).map(Some)
    });
    Some(DatabaseSettings {
        tls_root: tls_root?,
        circuit: CircuitSettings {
            failures: circuit_failures?,
            probe_interval: circuit_probe?,
        },
        url: url?,
        query: query?,
        list_query: list_query?,
        notify_channel: notify_channel?,
        scan_interval: scan_interval?,
        notify_probe: notify_probe?,
        timeout: timeout?,
        pool_size: pool_size?,
    })
}

fn build_ask(k: &raw::Ask, errs: &mut Errors<'_>) -> Option<AskSettings> {
    let url = match &k.url {
        Some(v) => errs.url("allow.ask.url", v, &["http", "https"]),
        None => {
            errs.push("allow.ask.url", None, "is required");
            None
        }
    };
    let timeout = opt_duration(errs, "allow.ask.timeout", &k.timeout, secs(2));
    Some(AskSettings {
        url: url?,
        timeout: timeout?,
    })
}
