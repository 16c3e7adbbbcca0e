//! `forwarding:`: the peers whose forwarding and PROXY protocol headers are believed.

use std::time::Duration;

use crate::config::raw;
use crate::config::values::{opt_duration, secs, Errors};
use crate::http::forwarded::ForwardingSettings;
use crate::net::cidr::Cidr;

/// `forwarding:`, and how long a trusted balancer may take to send its PROXY header.
pub fn build(f: &raw::Forwarding, errs: &mut Errors<'_>) -> Option<(ForwardingSettings, Duration)> {
    let mut ok = true;
    let mut trusted_proxies = Vec::new();
    for (i, v) in f.trusted_proxies.iter().flatten().enumerate() {
        let path = format!("forwarding.trusted_proxies[{i}]");
        let Some(s) = errs.string(&path, v) else {
            ok = false;
            continue;
        };
        match s.parse::<Cidr>() {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => {
                errs.push(&path, Some(v), e.to_string());
                ok = false;
            }
        }
    }
    let timeout = opt_duration(
        errs,
        "forwarding.proxy_protocol_timeout",
        &f.proxy_protocol_timeout,
        secs(5),
    );
    ok.then_some((ForwardingSettings { trusted_proxies }, timeout?))
}
