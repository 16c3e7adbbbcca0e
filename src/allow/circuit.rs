//! A circuit breaker around a dynamic source: after `failures` lookups in a row that found it
//! unavailable, the source is not asked again until a background probe gets an answer. While
//! the circuit is open a lookup fails at once (stale-if-error or fail-closed answers it from
//! memory), so a database brownout costs `failures` timeouts, not one per never-seen name.
//!
//! `tenant_edge_source_circuit_open{source}` is 1 while open. A misconfiguration (a query that
//! does not prepare) is not an outage and never opens the circuit.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::allow::decision::{DecisionError, DecisionSource, Source};
use crate::domain::Domain;
use crate::metrics::Metrics;

/// `allow.database.circuit_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive unavailable answers that open the circuit. Default 3.
    pub failures: u32,
    /// How often an open circuit probes the source. Default 1s.
    pub probe_interval: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failures: 3,
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// A name no tenant can own (RFC 2606 `.invalid`), asked by the probe.
const PROBE: &str = "circuit-probe.tenant-edge.invalid";

struct State {
    inner: Arc<dyn DecisionSource>,
    settings: CircuitSettings,
    failures: AtomicU32,
    open: AtomicBool,
    metrics: Arc<Metrics>,
}

pub struct Circuit {
    state: Arc<State>,
}

impl Circuit {
    pub fn new(
        inner: Arc<dyn DecisionSource>,
        settings: CircuitSettings,
        metrics: Arc<Metrics>,
    ) -> Circuit {
        Circuit {
            state: Arc::new(State {
                inner,
                settings,
                failures: AtomicU32::new(0),
                open: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// Whether lookups are short-circuited now.
    pub fn is_open(&self) -> bool {
        self.state.open.load(Ordering::Acquire)
    }
}

impl State {
    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
        self.metrics
            .source_circuit_open
            .with_label_values(&[self.inner.source().label()])
            .set(i64::from(open));
    }

    /// Open the circuit (once) and probe in the background until the source answers.
    fn trip(self: &Arc<Self>, error: &DecisionError) {
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        self.set_open(true);
        log::warn!(
            "{}: {} lookups in a row failed ({error}); answering from memory (stale-if-error, fail closed) and probing every {:?}",
            self.inner.source().label(),
            self.settings.failures,
            self.settings.probe_interval
        );
        let state = self.clone();
        tokio::spawn(async move {
            let Ok(probe) = Domain::parse(PROBE) else {
                return;
            };
            loop {
                tokio::time::sleep(state.settings.probe_interval).await;
                match state.inner.allows(&probe).await {
                    Err(DecisionError::Unavailable { .. }) => continue,
                    // An answer, or an error that is not an outage: the source is back.
                    _ => break,
                }
            }
            state.failures.store(0, Ordering::Release);
            state.set_open(false);
            log::info!(
                "{}: answering again; lookups resume",
                state.inner.source().label()
            );
        });
    }
}

#[async_trait]
impl DecisionSource for Circuit {
    fn source(&self) -> Source {
        self.state.inner.source()
    }

    async fn allows(&self, name: &Domain) -> Result<bool, DecisionError> {
        let state = &self.state;
        if state.open.load(Ordering::Acquire) {
            return Err(DecisionError::Unavailable {
                what: "the allow-list source",
                message: format!(
                    "{} is not asked: its last {} lookups failed and a probe has not answered yet",
                    state.inner.source().label(),
                    state.settings.failures
                ),
            });
        }
        let result = state.inner.allows(name).await;
        match &result {
            Err(e @ DecisionError::Unavailable { .. }) => {
                let failures = state.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= state.settings.failures {
                    state.trip(e);
                }
            }
            _ => state.failures.store(0, Ordering::Release),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A source that is down while `down` is set, and counts the calls it gets.
    struct Flaky {
        down: AtomicBool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl DecisionSource for Flaky {
        fn source(&self) -> Source {
            Source::Database
        }
        async fn allows(&self, _: &Domain) -> Result<bool, DecisionError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                Err(DecisionError::Unavailable {
                    what: "test",
                    message: "down".into(),
                })
            } else {
                Ok(true)
            }
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_closes_when_a_probe_answers() {
        let flaky = Arc::new(Flaky {
            down: AtomicBool::new(true),
            calls: AtomicUsize::new(0),
        });
        let metrics = Arc::new(Metrics::new().unwrap());
        let settings = CircuitSettings {
            failures: 3,
            probe_interval: Duration::from_millis(20),
        };
        let circuit = Circuit::new(flaky.clone(), settings, metrics.clone());
        let name = Domain::parse("shop.example").unwrap();
        for _ in 0..3 {
            assert!(circuit.allows(&name).await.is_err());
        }
        assert!(circuit.is_open());
        let asked = flaky.calls.load(Ordering::SeqCst);
        for _ in 0..100 {
            assert!(circuit.allows(&name).await.is_err());
        }
        // Only the probe (every 20 ms) reaches the source while the circuit is open.
        assert!(flaky.calls.load(Ordering::SeqCst) - asked < 5);
        let gauge = || {
            metrics
                .source_circuit_open
                .with_label_values(&["database"])
                .get()
        };
        assert_eq!(gauge(), 1);
        flaky.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!circuit.is_open());
        assert_eq!(gauge(), 0);
        assert!(circuit.allows(&name).await.unwrap());
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        let flaky = Arc::new(Flaky {
            down: AtomicBool::new(true),
            calls: AtomicUsize::new(0),
        });
        let metrics = Arc::new(Metrics::new().unwrap());
        let circuit = Circuit::new(flaky.clone(), CircuitSettings::default(), metrics);
        let name = Domain::parse("shop.example").unwrap();
        for _ in 0..2 {
            assert!(circuit.allows(&name).await.is_err());
        }
        flaky.down.store(false, Ordering::SeqCst);
        assert!(circuit.allows(&name).await.is_ok());
        flaky.down.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            assert!(circuit.allows(&name).await.is_err());
        }
        assert!(
            !circuit.is_open(),
            "two failures after a success do not open it"
        );
    }
}
