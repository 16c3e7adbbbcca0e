//! The metrics listener: `/metrics` in the Prometheus text format.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::certs::manager::CertManager;

/// `/metrics` in the Prometheus text format; gauges about the cache are refreshed per scrape.
pub struct MetricsApp {
    manager: Arc<CertManager>,
}

impl MetricsApp {
    pub fn new(manager: Arc<CertManager>) -> MetricsApp {
        MetricsApp { manager }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() != "/metrics" {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("Content-Length", 10)
                .body(b"not found\n".to_vec())
                .unwrap_or_default();
        }
        self.manager.update_gauges();
        let body = self.manager.metrics().encode();
        Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .header("Content-Length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
