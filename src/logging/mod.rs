//! Logging: `env_logger` behind a thin filter for Pingora's per-connection error lines, and
//! the access log (`access`: one JSON line per request, written by a thread of its own; `line`:
//! a line's fields and their JSON).
//!
//! Pingora logs one ERROR line for every failed TLS handshake, every connection the pre-TLS
//! step refused (limits, PROXY protocol, the client gate) and every HTTP/2 client that sent no
//! valid preface. Those are normal traffic for an on-demand edge (scanners, random SNI floods),
//! so they are logged at info, at most 10 per second, with a count of what was dropped; every
//! refusal is still counted in the metrics. All other lines, including Pingora's accept errors,
//! pass unchanged. `RUST_LOG` works as usual (default: `info`, with tokio-postgres' per-statement NOTICEs
//! kept at `warn`).

pub mod access;
pub mod line;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::time::unix_now;

/// At most `per_second` log lines per second; counts what it suppressed. Lock-free.
pub struct LogBudget {
    per_second: u64,
    /// (second << 32) | lines logged in that second.
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub fn new(per_second: u64) -> LogBudget {
        LogBudget {
            per_second,
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now (`n` lines were suppressed since the last one); `None`: stay quiet.
    pub fn take(&self) -> Option<u64> {
        let now = (unix_now() as u64) & 0xffff_ffff;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (cur >> 32, cur & 0xffff_ffff);
            let next = if sec == now {
                if count >= self.per_second {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                cur + 1
            } else {
                (now << 32) | 1
            };
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// What to append to a rate-limited line: ` (N similar lines not logged)`, or nothing.
pub fn suppressed(dropped: u64) -> String {
    if dropped == 0 {
        String::new()
    } else {
        format!(" ({dropped} similar lines not logged)")
    }
}

/// Pingora's line for something a client did: a connection refused or failed before it carried
/// a request, or a request the client broke off (stopped reading, reset, timed out).
fn is_client_noise(record: &log::Record<'_>) -> bool {
    let starts = |prefix: &str| {
        record.args().as_str().map_or_else(
            || record.args().to_string().starts_with(prefix),
            |s| s.starts_with(prefix),
        )
    };
    match record.target() {
        "pingora_core::services::listening" => starts("Downstream handshake"),
        "pingora_core::apps" => starts("H2 handshake error"),
        "pingora_proxy" => starts("Fail to proxy: Downstream"),
        _ => false,
    }
}

struct Filtered {
    inner: env_logger::Logger,
    handshakes: LogBudget,
}

impl log::Log for Filtered {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        if !is_client_noise(record) {
            return self.inner.log(record);
        }
        // A refused or failed handshake, or a client giving up on a request, is normal traffic
        // for an edge on the internet: logged at info, at a bounded rate, never at error (each
        // is counted in the metrics).
        if let Some(dropped) = self.handshakes.take() {
            let meta = log::Metadata::builder()
                .level(log::Level::Info)
                .target(record.target())
                .build();
            if self.inner.enabled(&meta) {
                self.inner.log(
                    &log::Record::builder()
                        .metadata(meta)
                        .args(format_args!("{}{}", record.args(), suppressed(dropped)))
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .build(),
                );
            }
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Install the logger once, at the start of `main`.
pub fn init() {
    let inner = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tokio_postgres=warn"),
    )
    .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Filtered {
        inner,
        handshakes: LogBudget::new(10),
    }))
    .is_ok()
    {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_caps_lines_per_second() {
        let b = LogBudget::new(3);
        let allowed = (0..100).filter(|_| b.take().is_some()).count();
        // The loop may straddle a second boundary: at most two windows' worth.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
