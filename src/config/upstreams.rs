//! `upstreams:`: pools of backends, health checks and routes.

use std::net::SocketAddr;

use serde_yaml::Value;

use crate::config::raw;
use crate::config::values::{opt_duration, secs, Errors};
use crate::http::upstream::{
    HealthCheckKind, HealthCheckSettings, PoolSettings, RouteSettings, Selection, UpstreamsSettings,
};

pub fn build(raw: &raw::Upstreams, errs: &mut Errors<'_>) -> Option<UpstreamsSettings> {
    let mut pools = Vec::new();
    let mut ok = true;
    match &raw.pools {
        None => {
            errs.push(
                "upstreams.pools",
                None,
                "is required: at least one pool of backends (kamal-proxy)",
            );
            ok = false;
        }
        Some(map) if map.is_empty() => {
            errs.push("upstreams.pools", None, "must define at least one pool");
            ok = false;
        }
        Some(map) => {
            for (name, p) in map {
                match build_pool(name, p, errs) {
                    Some(pool) => pools.push(pool),
                    None => ok = false,
                }
            }
        }
    }
    let names: Vec<&str> = raw
        .pools
        .iter()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let pool_index = |errs: &mut Errors<'_>, path: &str, v: &Value| -> Option<usize> {
        let name = errs.string(path, v)?;
        match names.iter().position(|n| *n == name) {
            Some(i) => Some(i),
            None => {
                errs.push(
                    path,
                    Some(v),
                    format!("no such pool; defined pools: {}", names.join(", ")),
                );
                None
            }
        }
    };
    let default_pool = match &raw.default_pool {
        Some(v) => pool_index(errs, "upstreams.default_pool", v),
        None if names.len() == 1 => Some(0),
        None if names.is_empty() => None,
        None => {
            errs.push(
                "upstreams.default_pool",
                None,
                "is required when there is more than one pool",
            );
            None
        }
    };
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().flatten().enumerate() {
        let suffix = match &r.suffix {
            Some(v) => errs.domain(&format!("upstreams.routes[{i}].suffix"), v),
            None => {
                errs.push(
                    &format!("upstreams.routes[{i}].suffix"),
                    None,
                    "is required",
                );
                None
            }
        };
        let pool = match &r.pool {
            Some(v) => pool_index(errs, &format!("upstreams.routes[{i}].pool"), v),
            None => {
                errs.push(&format!("upstreams.routes[{i}].pool"), None, "is required");
                None
            }
        };
        if let (Some(suffix), Some(pool)) = (suffix, pool) {
            routes.push(RouteSettings { suffix, pool });
        } else {
            ok = false;
        }
    }
    // Longest suffix first, so `a.b.example` beats `b.example`.
    routes.sort_by_key(|r| std::cmp::Reverse(r.suffix.as_str().len()));
    if !ok {
        return None;
    }
    Some(UpstreamsSettings {
        pools,
        default_pool: default_pool?,
        routes,
    })
}

fn build_pool(name: &str, p: &raw::Pool, errs: &mut Errors<'_>) -> Option<PoolSettings> {
    let base = format!("upstreams.pools.{name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        errs.push(
            &base,
            None,
            "pool names use letters, digits, '-' and '_' only",
        );
    }
    let backends: Vec<SocketAddr> = match &p.backends {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| errs.addr(&format!("{base}.backends[{i}]"), v))
            .collect(),
        _ => {
            errs.push(
                &format!("{base}.backends"),
                None,
                "needs at least one IP:port (kamal-proxy, e.g. 127.0.0.1:8080)",
            );
            Vec::new()
        }
    };
    let selection = p
        .selection
        .as_ref()
        .map_or(Some(Selection::RoundRobin), |v| {
            errs.choice(
                &format!("{base}.selection"),
                v,
                &[
                    ("round_robin", Selection::RoundRobin),
                    ("consistent_hash", Selection::ConsistentHash),
                ],
            )
        });
    let connect_timeout = opt_duration(
        errs,
        &format!("{base}.connect_timeout"),
        &p.connect_timeout,
        secs(2),
    );
    // `read_timeout` is the older name of both response_timeout and body_timeout.
    let read_timeout = opt_duration(
        errs,
        &format!("{base}.read_timeout"),
        &p.read_timeout,
        secs(60),
    );
    for (key, v) in [
        ("response_timeout", &p.response_timeout),
        ("body_timeout", &p.body_timeout),
    ] {
        if v.is_some() && p.read_timeout.is_some() {
            errs.push(
                &format!("{base}.{key}"),
                v.as_ref(),
                "set either read_timeout (both timeouts) or response_timeout/body_timeout",
            );
        }
    }
    let response_timeout = read_timeout.and_then(|d| {
        opt_duration(
            errs,
            &format!("{base}.response_timeout"),
            &p.response_timeout,
            d,
        )
    });
    let body_timeout = read_timeout
        .and_then(|d| opt_duration(errs, &format!("{base}.body_timeout"), &p.body_timeout, d));
    let upgrade_timeout = opt_duration(
        errs,
        &format!("{base}.upgrade_timeout"),
        &p.upgrade_timeout,
        secs(3600),
    );
    let health_check = match &p.health_check {
        None => Some(None),
        Some(h) => build_health_check(&format!("{base}.health_check"), h, errs).map(Some),
    };
    if backends.is_empty() {
        return None;
    }
    Some(PoolSettings {
        name: name.to_string(),
        backends,
        selection: selection?,
        connect_timeout: connect_timeout?,
        response_timeout: response_timeout?,
        body_timeout: body_timeout?,
        upgrade_timeout: upgrade_timeout?,
        health_check: health_check?,
    })
}

/// `200`, or a range `200-399`.
fn status_range(key: &str, v: &serde_yaml::Value, errs: &mut Errors<'_>) -> Option<(u16, u16)> {
    if let Some(n) = v.as_u64() {
        if (100..=599).contains(&n) {
            return Some((n as u16, n as u16));
        }
    }
    let parsed = v.as_str().and_then(|s| {
        let (lo, hi) = s.split_once('-')?;
        let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        (100 <= lo && lo <= hi && hi <= 599).then_some((lo, hi))
    });
    if parsed.is_none() {
        errs.push(
            key,
            Some(v),
            "expected a status such as 200 or a range such as 200-399",
        );
    }
    parsed
}

fn build_health_check(
    base: &str,
    h: &raw::HealthCheck,
    errs: &mut Errors<'_>,
) -> Option<HealthCheckSettings> {
    #[derive(Clone, Copy)]
    enum K {
        Tcp,
        Http,
    }
    let kind = h.kind.as_ref().map_or(Some(K::Http), |v| {
        errs.choice(
            &format!("{base}.type"),
            v,
            &[("http", K::Http), ("tcp", K::Tcp)],
        )
    });
    let interval = opt_duration(errs, &format!("{base}.interval"), &h.interval, secs(5));
    let timeout = opt_duration(errs, &format!("{base}.timeout"), &h.timeout, secs(1));
    let rise = h.rise.as_ref().map_or(Some(1), |v| {
        errs.uint(&format!("{base}.rise"), v, 1, 100)
            .map(|n| n as usize)
    });
    let fall = h.fall.as_ref().map_or(Some(1), |v| {
        errs.uint(&format!("{base}.fall"), v, 1, 100)
            .map(|n| n as usize)
    });
    let kind = match kind? {
        K::Tcp => {
            if h.headers.is_some() {
                errs.push(
                    &format!("{base}.headers"),
                    None,
                    "only applies to type: http",
                );
            }
            for (key, v) in [
                ("path", &h.path),
                ("host", &h.host),
                ("expected_status", &h.expected_status),
            ] {
                if v.is_some() {
                    errs.push(
                        &format!("{base}.{key}"),
                        v.as_ref(),
                        "only applies to type: http",
                    );
                }
            }
            HealthCheckKind::Tcp
        }
        K::Http => {
            let path = h.path.as_ref().map_or(Some("/up".to_string()), |v| {
                let p = errs.string(&format!("{base}.path"), v)?;
                if !p.starts_with('/')
                    || p.bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    errs.push(
                        &format!("{base}.path"),
                        Some(v),
                        "expected an absolute path such as /up",
                    );
                    return None;
                }
                Some(p)
            });
            let host = h.host.as_ref().map_or(Some("localhost".to_string()), |v| {
                errs.domain(&format!("{base}.host"), v)
                    .map(|d| d.to_string())
            });
            let expected_status = h.expected_status.as_ref().map_or(Some((200, 299)), |v| {
                status_range(&format!("{base}.expected_status"), v, errs)
            });
            let mut headers = Vec::new();
            for (k, v) in h.headers.iter().flatten() {
                let key = format!("{base}.headers.{}", k.as_str().unwrap_or("?"));
                let name = k
                    .as_str()
                    .and_then(|n| http::header::HeaderName::from_bytes(n.as_bytes()).ok());
                let value = errs
                    .string(&key, v)
                    .filter(|s| http::header::HeaderValue::from_str(s).is_ok());
                match (name, value) {
                    (Some(name), Some(value)) if name != http::header::HOST => {
                        headers.push((name.as_str().to_string(), value));
                    }
                    (Some(_), Some(_)) => {
                        errs.push(&key, Some(v), "set the Host with health_check.host")
                    }
                    _ => errs.push(&key, Some(v), "expected a header name and a text value"),
                }
            }
            HealthCheckKind::Http {
                path: path?,
                host: host?,
                expected_status: expected_status?,
                headers,
            }
        }
    };
    Some(HealthCheckSettings {
        kind,
        interval: interval?,
        timeout: timeout?,
        rise: rise?,
        fall: fall?,
    })
}
