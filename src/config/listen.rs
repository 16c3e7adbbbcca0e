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

pub fn build(raw: &raw::Listen, errs: &mut Errors<'_>) -> Option<Listen> {
    let https = match &raw.https {
        Some(v) => errs.addrs("listen.https", v),
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
        .map(|v| errs.addrs("listen.http", v))
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
