//! `listen:`: the addresses the edge binds.

use std::net::SocketAddr;

use serde_yaml::Value;

use crate::config::raw;
use crate::config::values::Errors;

#[derive(Debug, Clone)]
pub struct Listen {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// Port written into `http → https` redirects (omitted from the URL when 443).
    pub redirect_https_port: u16,
    /// The `https` and `http` addresses where every connection starts with a PROXY protocol
    /// header (`{address: ..., proxy_protocol: true}`).
    pub proxy_protocol: Vec<SocketAddr>,
}

impl Listen {
    /// Every listen address with its key (`listen.https`, `listen.http`, `listen.metrics`).
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &SocketAddr)> {
        self.https
            .iter()
            .map(|a| ("listen.https", a))
            .chain(self.http.iter().map(|a| ("listen.http", a)))
            .chain(self.metrics.iter().map(|a| ("listen.metrics", a)))
    }
}

/// One listener entry: `IP:port`, or `{address: IP:port, proxy_protocol: true}`.
fn entry(
    errs: &mut Errors<'_>,
    path: &str,
    v: &Value,
    proxy: &mut Vec<SocketAddr>,
) -> Option<SocketAddr> {
    let Value::Mapping(map) = v else {
        return errs.addr(path, v);
    };
    let mut addr = None;
    let mut with_proxy = false;
    for (k, val) in map {
        match k.as_str() {
            Some("address") => addr = errs.addr(&format!("{path}.address"), val),
            Some("proxy_protocol") => match val {
                Value::Bool(b) => with_proxy = *b,
                _ => errs.push(
                    &format!("{path}.proxy_protocol"),
                    Some(val),
                    "expected true or false",
                ),
            },
            _ => errs.push(
                &format!("{path}.{}", k.as_str().unwrap_or("?")),
                None,
                "unknown key (a listener has address and proxy_protocol)",
            ),
        }
    }
    if !map.contains_key("address") {
        errs.push(
            &format!("{path}.address"),
            None,
            "is required, for example 0.0.0.0:443",
        );
    }
    if let (Some(a), true) = (addr, with_proxy) {
        proxy.push(a);
    }
    addr
}

/// One entry or a list of them.
fn entries(
    errs: &mut Errors<'_>,
    path: &str,
    v: &Value,
    proxy: &mut Vec<SocketAddr>,
) -> Vec<SocketAddr> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| entry(errs, &format!("{path}[{i}]"), item, proxy))
            .collect(),
        _ => entry(errs, path, v, proxy).into_iter().collect(),
    }
}

pub fn build(raw: &raw::Listen, errs: &mut Errors<'_>) -> Option<Listen> {
    let mut proxy_protocol = Vec::new();
    let https = match &raw.https {
        Some(v) => entries(errs, "listen.https", v, &mut proxy_protocol),
        None => {
            errs.push(
                "listen.https",
                None,
                "is required (for example 0.0.0.0:443)",
            );
            Vec::new()
        }
    };
    let http = raw
        .http
        .as_ref()
        .map(|v| entries(errs, "listen.http", v, &mut proxy_protocol))
        .unwrap_or_default();
    let metrics = raw
        .metrics
        .as_ref()
        .and_then(|v| errs.addr("listen.metrics", v));
    let redirect_https_port = match &raw.redirect_https_port {
        Some(v) => errs
            .uint("listen.redirect_https_port", v, 1, 65535)
            .map(|p| p as u16),
        None => Some(https.first().map(|a| a.port()).unwrap_or(443)),
    };
    let listen = Listen {
        https,
        http,
        metrics,
        redirect_https_port: redirect_https_port.unwrap_or(443),
        proxy_protocol,
    };
    let mut seen = Vec::new();
    for (key, a) in listen.all() {
        if seen.contains(a) {
            errs.push(
                key,
                Some(&Value::String(a.to_string())),
                "address is used by another listener",
            );
        }
        seen.push(*a);
    }
    redirect_https_port.map(|_| listen)
}
