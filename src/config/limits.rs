//! `limits:`: issuance limits and the per-client limit on never-seen names.

use serde_yaml::Value;

use crate::config::raw;
use crate::config::values::{duration_or_off, opt_duration, Errors};
use crate::limits::clients::ClientGateSettings;
use crate::limits::connections::ConnectionSettings;
use crate::limits::issuance::LimitSettings;
use crate::limits::orders::AccountBudget;

/// Abuse limits on new orders and on never-seen names per client (`limits:`).
#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    pub issuance: LimitSettings,
    /// `None`: the pre-TLS client gate is off (`limits.clients.enabled: false`).
    pub clients: Option<ClientGateSettings>,
    pub connections: ConnectionSettings,
}

pub fn build(raw: &raw::Limits, errs: &mut Errors<'_>) -> Option<LimitsConfig> {
    let issuance = match &raw.issuance {
        Some(i) => build_issuance(i, errs),
        None => Some(LimitSettings::default()),
    };
    let clients = match &raw.clients {
        Some(c) => build_clients(c, errs),
        None => Ok(Some(ClientGateSettings::default())),
    };
    let connections = match &raw.connections {
        Some(c) => build_connections(c, errs),
        None => Some(ConnectionSettings::default()),
    };
    Some(LimitsConfig {
        issuance: issuance?,
        clients: clients.ok()?,
        connections: connections?,
    })
}

/// `limits.issuance`; `None` when a value is wrong (each error pushed).
fn build_issuance(i: &raw::IssuanceLimits, errs: &mut Errors<'_>) -> Option<LimitSettings> {
    let mut ok = true;
    let mut issuance = LimitSettings::default();
    let base = "limits.issuance";
    let d = issuance.clone();
    let interval = duration_or_off(errs, &format!("{base}.interval"), &i.interval, d.interval);
    let burst = i.burst.as_ref().map_or(Some(d.burst), |v| {
        errs.uint(&format!("{base}.burst"), v, 1, 1_000_000)
            .map(|n| n as u32)
    });
    let max_concurrent = i
        .max_concurrent
        .as_ref()
        .map_or(Some(d.max_concurrent), |v| {
            errs.uint(&format!("{base}.max_concurrent"), v, 1, 10_000)
                .map(|n| n as usize)
        });
    let backoff_initial = duration_or_off(
        errs,
        &format!("{base}.backoff_initial"),
        &i.backoff_initial,
        d.backoff_initial,
    );
    let backoff_max = opt_duration(
        errs,
        &format!("{base}.backoff_max"),
        &i.backoff_max,
        d.backoff_max,
    );
    let budget_per_week = match &i.budget_per_week {
        None => Some(d.budget_per_week),
        Some(Value::String(s)) if s.trim() == "off" => Some(None),
        Some(Value::Bool(false)) => Some(None),
        Some(v) => errs
            .uint(&format!("{base}.budget_per_week"), v, 1, 1_000_000)
            .map(|n| Some(n as u32)),
    };
    let account = build_account(i, d.account, errs);
    match (
        interval,
        burst,
        max_concurrent,
        backoff_initial,
        backoff_max,
        budget_per_week,
    ) {
        (
            Some(interval),
            Some(burst),
            Some(max_concurrent),
            Some(backoff_initial),
            Some(backoff_max),
            Some(budget_per_week),
        ) => {
            issuance = LimitSettings {
                interval,
                burst,
                max_concurrent,
                backoff_initial,
                backoff_max,
                budget_per_week,
                account: account?,
                ..d
            };
            for (field, message) in issuance.validate() {
                errs.push(&format!("{base}.{field}"), None, message);
                ok = false;
            }
        }
        _ => ok = false,
    }
    ok.then_some(issuance)
}

/// `limits.issuance.orders_per_3h` (or `off`) and `renewal_reserve`.
fn build_account(
    i: &raw::IssuanceLimits,
    default: Option<AccountBudget>,
    errs: &mut Errors<'_>,
) -> Option<Option<AccountBudget>> {
    let base = "limits.issuance";
    let d = default.unwrap_or_default();
    let limit = match &i.orders_per_3h {
        None => Some(default.map(|a| a.limit)),
        Some(Value::String(s)) if s.trim() == "off" => Some(None),
        Some(Value::Bool(false)) => Some(None),
        Some(v) => errs
            .uint(&format!("{base}.orders_per_3h"), v, 1, 1_000_000)
            .map(|n| Some(n as u32)),
    };
    let reserve = i.renewal_reserve.as_ref().map_or(Some(None), |v| {
        errs.uint(&format!("{base}.renewal_reserve"), v, 0, 1_000_000)
            .map(|n| Some(n as u32))
    });
    let (limit, reserve) = (limit?, reserve?);
    Some(limit.map(|limit| AccountBudget {
        limit,
        // A fifth of the limit unless set.
        renewal_reserve: reserve.unwrap_or(if i.orders_per_3h.is_some() {
            limit / 5
        } else {
            d.renewal_reserve
        }),
        window: d.window,
    }))
}

/// `limits.clients`: `Ok(None)` when disabled, `Err(())` when a value is wrong (each error
/// pushed).
fn build_clients(
    c: &raw::ClientLimits,
    errs: &mut Errors<'_>,
) -> Result<Option<ClientGateSettings>, ()> {
    let mut ok = true;
    let base = "limits.clients";
    let d = ClientGateSettings::default();
    let enabled = match &c.enabled {
        None => Some(true),
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            errs.push(
                &format!("{base}.enabled"),
                Some(v),
                "expected true or false",
            );
            None
        }
    };
    let burst = c.new_names_burst.as_ref().map_or(Some(d.burst), |v| {
        errs.uint(&format!("{base}.new_names_burst"), v, 1, 1_000_000)
            .map(|n| n as u32)
    });
    let refill_interval = opt_duration(
        errs,
        &format!("{base}.new_names_interval"),
        &c.new_names_interval,
        d.refill_interval,
    );
    let ipv6_prefix_len = c
        .ipv6_prefix_len
        .as_ref()
        .map_or(Some(d.ipv6_prefix_len), |v| {
            errs.uint(&format!("{base}.ipv6_prefix_len"), v, 1, 128)
                .map(|n| n as u8)
        });
    let clients = match (enabled, burst, refill_interval, ipv6_prefix_len) {
        (Some(false), ..) => None,
        (Some(true), Some(burst), Some(refill_interval), Some(ipv6_prefix_len)) => {
            let settings = ClientGateSettings {
                burst,
                refill_interval,
                ipv6_prefix_len,
                ..d
            };
            for (field, message) in settings.validate() {
                errs.push(&format!("{base}.{field}"), None, message);
                ok = false;
            }
            Some(settings)
        }
        _ => {
            ok = false;
            None
        }
    };
    if ok {
        Ok(clients)
    } else {
        Err(())
    }
}

/// `limits.connections`.
fn build_connections(
    c: &raw::ConnectionLimits,
    errs: &mut Errors<'_>,
) -> Option<ConnectionSettings> {
    let base = "limits.connections";
    let d = ConnectionSettings::default();
    let mut num = |key: &str, v: &Option<Value>, default: u64, max: u64| {
        v.as_ref().map_or(Some(default), |v| {
            errs.uint(&format!("{base}.{key}"), v, 1, max)
        })
    };
    let max = num("max", &c.max, d.max as u64, 10_000_000);
    let per_client = num("per_client", &c.per_client, d.per_client as u64, 10_000_000);
    let prefix = num(
        "ipv6_prefix_len",
        &c.ipv6_prefix_len,
        u64::from(d.ipv6_prefix_len),
        128,
    );
    let h2_streams = num(
        "h2_streams",
        &c.h2_streams,
        u64::from(d.h2_streams),
        100_000,
    );
    let requests = num(
        "requests_per_connection",
        &c.requests_per_connection,
        u64::from(d.requests),
        u64::from(u32::MAX),
    );
    let resets = num(
        "resets_per_connection",
        &c.resets_per_connection,
        u64::from(d.resets),
        u64::from(u32::MAX),
    );
    let settings = ConnectionSettings {
        max: max? as usize,
        per_client: per_client? as usize,
        ipv6_prefix_len: prefix? as u8,
        h2_streams: h2_streams? as u32,
        requests: requests? as u32,
        resets: resets? as u32,
    };
    let problems = settings.validate();
    for (field, message) in &problems {
        errs.push(&format!("{base}.{field}"), None, message.clone());
    }
    problems.is_empty().then_some(settings)
}
