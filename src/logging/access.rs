//! `access_log:`: one JSON line per request, and one per refused handshake (rate-limited), to
//! stdout (journald, `docker logs`) or a file that is reopened on SIGUSR1 (logrotate).
//!
//! Lines are written by one thread of their own: a request hands its line to a bounded queue
//! and never waits for the disk; when the queue is full the line is dropped and counted
//! (`tenant_edge_access_log_dropped_total`). Successful requests (status < 400) can be
//! sampled (`sample`); refusals and errors are always logged.
//!
//! Fields, in this order (absent ones are `null`): `time` (RFC 3339, UTC), `event` (`request`
//! or `handshake_refused`), `client` (the address after the PROXY protocol), `tls_name`,
//! `tls_version`, `alpn`, `resumed`, `method`, `host`, `path` (without the query unless
//! `query: true`), `status`, `bytes_in`, `bytes_out`, `duration_ms`, `upstream`, `pool`,
//! `upstream_status`, `request_id`, `refusal`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::logging::LogBudget;
use crate::metrics::Metrics;

/// Lines waiting for the writer; beyond that, lines are dropped (and counted).
const QUEUE: usize = 65_536;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

/// `access_log:`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    /// Default true.
    pub enabled: bool,
    /// Default stdout.
    pub target: LogTarget,
    /// The share of successful requests (status below 400) logged, 0 to 1. Default 1.
    pub sample: f64,
    /// Log the query string with the path. Default false (queries carry tokens and emails).
    pub query: bool,
    /// Refused handshakes logged per second at most. Default 100.
    pub refusals_per_second: u32,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            enabled: true,
            target: LogTarget::Stdout,
            sample: 1.0,
            query: false,
            refusals_per_second: 100,
        }
    }
}

/// One request, as the proxy saw it.
#[derive(Debug, Default, Serialize)]
pub struct RequestLine<'a> {
    pub time: String,
    pub event: &'static str,
    pub client: Option<String>,
    pub tls_name: Option<&'a str>,
    pub tls_version: Option<&'a str>,
    pub alpn: Option<&'static str>,
    pub resumed: Option<bool>,
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub status: Option<u16>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub duration_ms: Option<f64>,
    pub upstream: Option<String>,
    pub pool: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub request_id: Option<&'a str>,
    pub refusal: Option<&'a str>,
}

/// The access log of the edge (a no-op when disabled, and until its writer starts).
pub struct AccessLog {
    settings: AccessLogSettings,
    sender: OnceLock<SyncSender<String>>,
    reopen: Arc<AtomicBool>,
    refusals: LogBudget,
    metrics: Arc<Metrics>,
}

/// Now, RFC 3339 in UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

impl AccessLog {
    pub fn new(settings: AccessLogSettings, metrics: Arc<Metrics>) -> Arc<AccessLog> {
        let per_second = settings.refusals_per_second.max(1);
        Arc::new(AccessLog {
            settings,
            sender: OnceLock::new(),
            reopen: Arc::default(),
            refusals: LogBudget::new(u64::from(per_second)),
            metrics,
        })
    }

    pub fn settings(&self) -> &AccessLogSettings {
        &self.settings
    }

    /// Whether a request with `status` is logged (refusals and errors always are).
    pub fn wants(&self, status: u16) -> bool {
        if !self.settings.enabled || self.sender.get().is_none() {
            return false;
        }
        status >= 400 || self.settings.sample >= 1.0 || rand::random::<f64>() < self.settings.sample
    }

    /// Queue one request line.
    pub fn request(&self, line: &RequestLine<'_>) {
        self.send(line);
    }

    /// A refused handshake (at most `refusals_per_second` lines a second).
    pub fn refused_handshake(&self, client: Option<String>, tls_name: Option<&str>, refusal: &str) {
        if !self.settings.enabled || self.sender.get().is_none() || self.refusals.take().is_none() {
            return;
        }
        self.send(&RequestLine {
            time: now_rfc3339(),
            event: "handshake_refused",
            client,
            tls_name,
            refusal: Some(refusal),
            ..RequestLine::default()
        });
    }

    fn send(&self, line: &RequestLine<'_>) {
        let Some(sender) = self.sender.get() else {
            return;
        };
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        match sender.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

/// The Pingora background service that owns the writer thread and reopens the file on SIGUSR1.
pub struct AccessLogWriter {
    pub log: Arc<AccessLog>,
}

fn open(target: &LogTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        LogTarget::Stdout => Box::new(std::io::stdout()),
        LogTarget::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

/// Write lines as they come, flushing when the queue is empty; reopen when asked.
fn write_lines(target: LogTarget, lines: Receiver<String>, reopen: Arc<AtomicBool>) {
    let mut out = match open(&target) {
        Ok(w) => std::io::BufWriter::with_capacity(64 * 1024, w),
        Err(e) => {
            log::error!("cannot open the access log {target:?}: {e}; access lines are dropped");
            return;
        }
    };
    let mut pending = false;
    loop {
        if reopen.swap(false, Ordering::AcqRel) {
            let _ = out.flush();
            match open(&target) {
                Ok(w) => out = std::io::BufWriter::with_capacity(64 * 1024, w),
                Err(e) => log::error!("cannot reopen the access log {target:?}: {e}"),
            }
        }
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = out.write_all(line.as_bytes());
                let _ = out.write_all(b"\n");
                pending = true;
                // Keep filling the buffer while lines are queued; flush once idle.
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
        if pending {
            let _ = out.flush();
            pending = false;
        }
    }
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.log.settings.enabled {
            return;
        }
        let (tx, rx) = sync_channel(QUEUE);
        if self.log.sender.set(tx).is_err() {
            return;
        }
        let (target, reopen) = (self.log.settings.target.clone(), self.log.reopen.clone());
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(target, rx, reopen));
        let writer = match writer {
            Ok(w) => Mutex::new(Some(w)),
            Err(e) => {
                log::error!("cannot start the access log writer: {e}");
                return;
            }
        };
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async {
                    match &mut usr1 {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.log.reopen.store(true, Ordering::Release);
                    log::info!("SIGUSR1: reopening the access log");
                }
            }
        }
        // The lines of requests still draining go on being written until the process exits.
        drop(writer);
    }
}
