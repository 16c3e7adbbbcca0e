//! The allow-list: may the edge serve (and issue for) a name?
//!
//! Order (DESIGN.md): platform domains from the config (in memory, no I/O), then each dynamic
//! `DecisionSource` in turn (PostgreSQL, a Caddy-style ask URL). The first source that says yes
//! wins; a name nobody allows is refused. This module owns policy only: it never touches
//! certificates, sockets or OpenSSL.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::NamePattern;
use crate::domain::Domain;
use crate::metrics::Metrics;

/// Which source answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Platform,
    Database,
    Ask,
}

impl Source {
    pub fn kind(self) -> &'static str {
        match self {
            Source::Platform => "platform",
            Source::Database => "database",
            Source::Ask => "ask",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(Source),
    /// No source allows the name.
    Denied,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DecisionError {
    #[error("{what} is unavailable: {message}")]
    Unavailable { what: &'static str, message: String },
}

impl DecisionError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecisionError::Unavailable { .. } => "unavailable",
        }
    }
}

/// A dynamic allow-list source (database, ask URL).
#[async_trait]
pub trait DecisionSource: Send + Sync {
    fn source(&self) -> Source;
    /// `Ok(true)`: this source allows `name`. `Ok(false)`: it does not (the next source is
    /// asked). `Err`: it could not answer; the caller fails closed for unknown names.
    async fn allows(&self, name: &Domain) -> Result<bool, DecisionError>;
}

pub struct AllowList {
    platform: Vec<NamePattern>,
    sources: Vec<Arc<dyn DecisionSource>>,
    metrics: Arc<Metrics>,
}

impl AllowList {
    pub fn new(
        platform: Vec<NamePattern>,
        sources: Vec<Arc<dyn DecisionSource>>,
        metrics: Arc<Metrics>,
    ) -> AllowList {
        AllowList {
            platform,
            sources,
            metrics,
        }
    }

    /// The platform-domain answer alone (no I/O): `Some(Platform)` when a config pattern matches.
    pub fn platform_match(&self, name: &Domain) -> Option<&NamePattern> {
        self.platform.iter().find(|p| p.matches(name))
    }

    /// Ask every source in order.
    pub async fn decide(&self, name: &Domain) -> Result<Decision, DecisionError> {
        if self.platform_match(name).is_some() {
            self.count(Source::Platform, "allowed");
            return Ok(Decision::Allowed(Source::Platform));
        }
        for source in &self.sources {
            match source.allows(name).await {
                Ok(true) => {
                    self.count(source.source(), "allowed");
                    return Ok(Decision::Allowed(source.source()));
                }
                Ok(false) => self.count(source.source(), "denied"),
                Err(e) => {
                    self.count(source.source(), "error");
                    return Err(e);
                }
            }
        }
        if self.sources.is_empty() {
            self.count(Source::Platform, "denied");
        }
        Ok(Decision::Denied)
    }

    fn count(&self, source: Source, result: &'static str) {
        self.metrics
            .decisions
            .with_label_values(&[source.kind(), result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    struct Fixed(bool);
    #[async_trait]
    impl DecisionSource for Fixed {
        fn source(&self) -> Source {
            Source::Database
        }
        async fn allows(&self, _: &Domain) -> Result<bool, DecisionError> {
            Ok(self.0)
        }
    }

    #[tokio::test]
    async fn platform_patterns_then_sources() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let platform = vec![
            NamePattern::Exact(d("example.com")),
            NamePattern::Below(d("localhost")),
        ];
        let list = AllowList::new(platform.clone(), vec![], metrics.clone());
        assert_eq!(
            list.decide(&d("example.com")).await.unwrap(),
            Decision::Allowed(Source::Platform)
        );
        assert_eq!(
            list.decide(&d("a.b.localhost")).await.unwrap(),
            Decision::Allowed(Source::Platform)
        );
        assert_eq!(
            list.decide(&d("localhost")).await.unwrap(),
            Decision::Denied
        );
        assert_eq!(
            list.decide(&d("www.example.com")).await.unwrap(),
            Decision::Denied
        );

        let with_db = AllowList::new(platform, vec![Arc::new(Fixed(true))], metrics.clone());
        assert_eq!(
            with_db.decide(&d("tenant.test")).await.unwrap(),
            Decision::Allowed(Source::Database)
        );
        let allowed = metrics
            .decisions
            .with_label_values(&["database", "allowed"])
            .get();
        assert_eq!(allowed, 1);
    }
}
