//! The plain-HTTP listener (port 80).
//!
//! Port 80 does two things: answer ACME HTTP-01 challenges
//! (`/.well-known/acme-challenge/<token>`, RFC 8555 §8.3) from `Challenges`, and send
//! everything else to `https://` with a 308, keeping host, path and query. A token is checked
//! to be base64url before any lookup; nothing from the request is echoed into a response except
//! a validated host name in the redirect.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::certs::challenge::{is_valid_token, Challenges};
use crate::domain::Domain;
use crate::http::host::{request_host, strip_port};
use crate::metrics::{label_set, Metrics};

label_set! {
    /// `tenant_edge_http_requests_total{kind}`: what the plain-HTTP listener answered.
    pub enum PlainKind {
        Redirect => "redirect",
        ChallengeHit => "challenge_hit",
        ChallengeMiss => "challenge_miss",
        BadToken => "bad_token",
        BadHost => "bad_host",
    }
}

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub struct PlainHttp {
    challenges: Arc<Challenges>,
    /// Port written in redirects (omitted when 443).
    https_port: u16,
    metrics: Arc<Metrics>,
}

impl PlainHttp {
    pub fn new(challenges: Arc<Challenges>, https_port: u16, metrics: Arc<Metrics>) -> PlainHttp {
        PlainHttp {
            challenges,
            https_port,
            metrics,
        }
    }

    fn text(&self, kind: PlainKind, status: StatusCode, body: &str) -> Response<Vec<u8>> {
        self.metrics
            .http_requests
            .with_label_values(&[kind.label()])
            .inc();
        Response::builder()
            .status(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len())
            .body(body.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// The response for a request, separated from the session for unit tests.
    pub async fn answer(&self, host: Option<&str>, path_and_query: &str) -> Response<Vec<u8>> {
        if let Some(token) = path_and_query.strip_prefix(CHALLENGE_PREFIX) {
            if !is_valid_token(token) {
                return self.text(
                    PlainKind::BadToken,
                    StatusCode::BAD_REQUEST,
                    "invalid ACME token\n",
                );
            }
            return match self.challenges.find_http01(token).await {
                Some(key_authorization) => {
                    self.text(PlainKind::ChallengeHit, StatusCode::OK, &key_authorization)
                }
                None => self.text(
                    PlainKind::ChallengeMiss,
                    StatusCode::NOT_FOUND,
                    "no such ACME challenge\n",
                ),
            };
        }
        let Some(host) = host.and_then(|h| Domain::parse(strip_port(h)).ok()) else {
            return self.text(
                PlainKind::BadHost,
                StatusCode::BAD_REQUEST,
                "a valid Host header is required\n",
            );
        };
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let location = format!("https://{host}{port}{path_and_query}");
        self.metrics
            .http_requests
            .with_label_values(&[PlainKind::Redirect.label()])
            .inc();
        Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header("Location", location)
            .header("Content-Length", 0)
            .body(Vec::new())
            .unwrap_or_default()
    }
}

#[async_trait]
impl ServeHttp for PlainHttp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let host = request_host(req).map(str::to_owned);
        let path = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        self.answer(host.as_deref(), &path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> (PlainHttp, crate::certs::challenge::ChallengeGuard) {
        let challenges = Arc::new(Challenges::default());
        let guard = challenges.publish_http01(
            "abcdefghijklmnopqrstuvwxyz012345_-ABCDEFGHI",
            "token.thumbprint".into(),
        );
        let app = PlainHttp::new(challenges, 8443, Arc::new(Metrics::new().unwrap()));
        (app, guard)
    }

    #[tokio::test]
    async fn redirects_keep_host_path_and_query() {
        let r = app()
            .0
            .answer(Some("Shop.Example.com:8880"), "/a/b?c=d&e")
            .await;
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers()["location"],
            "https://shop.example.com:8443/a/b?c=d&e"
        );
        let on_443 = PlainHttp::new(Arc::default(), 443, Arc::new(Metrics::new().unwrap()));
        assert_eq!(
            on_443.answer(Some("a.example"), "/").await.headers()["location"],
            "https://a.example/"
        );
    }

    #[tokio::test]
    async fn bad_hosts_are_not_redirected() {
        for host in [None, Some("evil.example/x"), Some("1.2.3.4"), Some("")] {
            assert_eq!(app().0.answer(host, "/").await.status(), 400, "{host:?}");
        }
    }

    #[tokio::test]
    async fn challenges_are_validated_then_looked_up() {
        let (a, _guard) = app();
        let hit = a
            .answer(
                Some("x.example"),
                "/.well-known/acme-challenge/abcdefghijklmnopqrstuvwxyz012345_-ABCDEFGHI",
            )
            .await;
        assert_eq!(hit.status(), 200);
        assert_eq!(hit.body(), b"token.thumbprint");
        let miss = a
            .answer(
                Some("x.example"),
                "/.well-known/acme-challenge/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            )
            .await;
        assert_eq!(miss.status(), 404);
        for bad in [
            "../../etc/passwd",
            "abc",
            "a%2Fbcdefghijklmnopqrstuvwxyz",
            "abcdefghijklmnop=qrstuv",
        ] {
            let r = a
                .answer(
                    Some("x.example"),
                    &format!("/.well-known/acme-challenge/{bad}"),
                )
                .await;
            assert_eq!(r.status(), 400, "{bad}");
        }
    }
}
