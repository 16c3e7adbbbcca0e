//! The Caddy-compatible ask-URL source: `GET <allow.ask.url>?domain=NAME`, 200 means yes.
//!
//! Owns one HTTP client (created on first use, redirects disabled, `allow.ask.timeout` per
//! request) and the reading of the endpoint's answer:
//! - `200` is yes; any other answer is no, as in Caddy;
//! - a `3xx` is a no that is also a configuration error: logged at error level with a hint and
//!   counted in `tenant_edge_ask_misconfigured_total{reason="redirect"}`. It is the seed story's
//!   silent failure (Rails' `force_ssl` redirecting the internal endpoint to HTTPS);
//! - another `2xx` (such as 204) is a no, counted as `reason="status"`: Caddy would accept it;
//! - a `5xx`, a timeout or a refused connection is no answer at all (`Err`): the allow-list
//!   keeps serving names allowed before and refuses new ones, instead of turning an app error
//!   into a TLS outage.
//!
//! Must not: follow redirects, cache answers (`allow::list::AllowList` does), or create its
//! client before the first request (Pingora forks after the server is built).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::allow::decision::{DecisionError, DecisionSource, Source};
use crate::domain::Domain;
use crate::logging::{suppressed, LogBudget};
use crate::metrics::{label_set, Metrics};
use crate::util::error::chain;

/// `allow.ask`.
#[derive(Debug, Clone)]
pub struct AskSettings {
    pub url: String,
    pub timeout: Duration,
}

label_set! {
    /// `tenant_edge_ask_misconfigured_total{reason}`.
    pub enum Misconfiguration {
        Redirect => "redirect",
        Status => "status",
        Unreachable => "unreachable",
    }
}

const WHAT: &str = "the ask URL";

/// How the endpoint answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Yes,
    No(u16),
    /// A redirect: a no, and a configuration error. `location` is empty when none was sent.
    Redirect {
        status: u16,
        location: String,
    },
}

pub struct AskUrl {
    url: String,
    /// The URL without its query string, for messages (a query may carry a token).
    shown: String,
    timeout: Duration,
    client: Mutex<Option<reqwest::Client>>,
    metrics: Arc<Metrics>,
    /// A misconfigured endpoint answers every name the same way: one line a second is plenty.
    log: LogBudget,
}

impl AskUrl {
    /// Remember the URL and timeout. Does not build a client or connect.
    pub fn new(config: &AskSettings, metrics: Arc<Metrics>) -> AskUrl {
        let shown = config
            .url
            .split(['?', '#'])
            .next()
            .unwrap_or(&config.url)
            .to_string();
        AskUrl {
            url: config.url.clone(),
            shown,
            timeout: config.timeout,
            client: Mutex::new(None),
            metrics,
            log: LogBudget::new(1),
        }
    }

    /// `<url>?domain=NAME`, or `<url>&domain=NAME` when the URL already has a query. A `Domain`
    /// is letters, digits, hyphens and dots: nothing to percent-encode.
    pub fn request_url(&self, name: &Domain) -> String {
        let separator = if self.url.ends_with(['?', '&']) {
            ""
        } else if self.url.contains('?') {
            "&"
        } else {
            "?"
        };
        format!("{}{separator}domain={name}", self.url)
    }

    /// Ask about `name` (for `tenant-edge check`, with a platform domain): anything but a plain
    /// 200 is an error that says what to change. Not counted in the metrics.
    pub async fn probe(&self, name: &Domain) -> Result<(), DecisionError> {
        match self.ask(name).await? {
            Answer::Yes => Ok(()),
            Answer::Redirect { status, location } => Err(DecisionError::Misconfigured {
                what: WHAT,
                message: self.redirect_hint(status, &location),
            }),
            Answer::No(status) => Err(DecisionError::Misconfigured {
                what: WHAT,
                message: format!(
                    "{} answered {status} for {name}; it must answer 200 for every name the edge should serve",
                    self.shown
                ),
            }),
        }
    }

    fn client(&self) -> Result<reqwest::Client, DecisionError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .build()
            .map_err(|e| DecisionError::Misconfigured {
                what: WHAT,
                message: format!("cannot build the HTTP client: {}", chain(&e)),
            })?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn ask(&self, name: &Domain) -> Result<Answer, DecisionError> {
        let client = self.client()?;
        let response = client
            .get(self.request_url(name))
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                let message = if e.is_timeout() {
                    format!(
                        "no answer from {} within {:?} (allow.ask.timeout)",
                        self.shown, self.timeout
                    )
                } else {
                    format!(
                        "cannot reach {}: {}; is the app running and allow.ask.url right?",
                        self.shown,
                        chain(&e)
                    )
                };
                DecisionError::Unavailable {
                    what: WHAT,
                    message,
                }
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::OK {
            return Ok(Answer::Yes);
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Ok(Answer::Redirect {
                status: status.as_u16(),
                location,
            });
        }
        if status.is_server_error() {
            return Err(DecisionError::Unavailable {
                what: WHAT,
                message: format!(
                    "{} answered {status} for {name}: the app failed, which is not a no",
                    self.shown
                ),
            });
        }
        Ok(Answer::No(status.as_u16()))
    }

    fn redirect_hint(&self, status: u16, location: &str) -> String {
        // Without its query, like `shown`: it usually repeats ours.
        let location = match location.split(['?', '#']).next() {
            Some(l) if !l.is_empty() => l,
            _ => "no Location header",
        };
        format!(
            "the ask endpoint {} redirects ({status}, Location: {location}); Rails' force_ssl or an HTTPS redirect in front of it? Point allow.ask.url at the app directly, e.g. http://127.0.0.1:8080/internal/allow_domain, or exempt the path from the redirect",
            self.shown
        )
    }

    fn misconfigured(&self, reason: Misconfiguration) {
        self.metrics
            .ask_misconfigured
            .with_label_values(&[reason.label()])
            .inc();
    }
}

#[async_trait]
impl DecisionSource for AskUrl {
    fn source(&self) -> Source {
        Source::Ask
    }

    async fn allows(&self, name: &Domain) -> Result<bool, DecisionError> {
        match self.ask(name).await {
            Ok(Answer::Yes) => Ok(true),
            Ok(Answer::No(status)) => {
                if (200..300).contains(&status) {
                    self.misconfigured(Misconfiguration::Status);
                    if let Some(dropped) = self.log.take() {
                        log::warn!(
                            "{} answered {status} for {name}: only 200 means yes, so this is a no{}",
                            self.shown,
                            suppressed(dropped)
                        );
                    }
                }
                Ok(false)
            }
            Ok(Answer::Redirect { status, location }) => {
                self.misconfigured(Misconfiguration::Redirect);
                if let Some(dropped) = self.log.take() {
                    log::error!(
                        "configuration error: {}; {name} is refused until then{}",
                        self.redirect_hint(status, &location),
                        suppressed(dropped)
                    );
                }
                Ok(false)
            }
            Err(e) => {
                if matches!(e, DecisionError::Unavailable { .. }) {
                    self.misconfigured(Misconfiguration::Unreachable);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(url: &str) -> AskUrl {
        let config = AskSettings {
            url: url.into(),
            timeout: Duration::from_secs(1),
        };
        AskUrl::new(&config, Arc::new(Metrics::new().unwrap()))
    }

    #[test]
    fn the_name_is_appended_as_a_query_parameter() {
        let name = Domain::parse("Shop.Tenant.test.").unwrap();
        let cases = [
            (
                "http://127.0.0.1:3000/internal/allow_domain",
                "http://127.0.0.1:3000/internal/allow_domain?domain=shop.tenant.test",
            ),
            (
                "http://app/allow?token=x",
                "http://app/allow?token=x&domain=shop.tenant.test",
            ),
            (
                "http://app/allow?",
                "http://app/allow?domain=shop.tenant.test",
            ),
            (
                "http://app/allow?a=1&",
                "http://app/allow?a=1&domain=shop.tenant.test",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(ask(url).request_url(&name), expected);
        }
    }

    #[test]
    fn messages_do_not_show_the_query_string() {
        let a = ask("http://app/allow?token=secret");
        assert_eq!(a.shown, "http://app/allow");
        assert!(a
            .redirect_hint(301, "https://app/allow")
            .contains("force_ssl"));
    }
}
