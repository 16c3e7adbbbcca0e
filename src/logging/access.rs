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
//! `upstream_status`, `request_id`, `refusal` (built in `logging::line`).

use std::fmt::Display;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::logging::line::RequestLine;
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

/// The access log of the edge (a no-op when disabled, and until its writer starts).
pub struct AccessLog {
    settings: AccessLogSettings,
    sender: OnceLock<SyncSender<Vec<u8>>>,
    reopen: Arc<AtomicBool>,
    refusals: LogBudget,
    metrics: Arc<Metrics>,
    /// The client address of each recent ClientHello, by its client random: OpenSSL's
    /// callbacks, which refuse handshakes, do not know the socket, the pre-TLS step does.
    /// Bounded in size and age.
    hello_clients: moka::sync::Cache<[u8; 32], IpAddr>,
}

/// ClientHellos remembered at most (a handshake's callbacks run within seconds of it).
const HELLO_CLIENTS: u64 = 65_536;

/// The client random of the TLS record `record` if it starts with a ClientHello.
fn client_random(record: &[u8]) -> Option<[u8; 32]> {
    // Record header (type 22, version, length), handshake header (type 1, length), version.
    if record.first() != Some(&22) || record.get(5) != Some(&1) {
        return None;
    }
    record.get(11..43)?.try_into().ok()
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
            hello_clients: moka::sync::Cache::builder()
                .max_capacity(HELLO_CLIENTS)
                .time_to_live(Duration::from_secs(60))
                .build(),
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

    /// Remember which client sent the ClientHello that starts `record`, for the line of its
    /// handshake if the handshake is refused.
    pub fn note_client_hello(&self, record: &[u8], client: IpAddr) {
        if !self.settings.enabled {
            return;
        }
        if let Some(random) = client_random(record) {
            self.hello_clients.insert(random, client);
        }
    }

    /// The client that sent the ClientHello with `random` (see `note_client_hello`).
    pub fn client_of_hello(&self, random: &[u8; 32]) -> Option<IpAddr> {
        self.hello_clients.get(random)
    }

    /// A refused handshake (at most `refusals_per_second` lines a second).
    pub fn refused_handshake(&self, client: Option<IpAddr>, tls_name: Option<&str>, refusal: &str) {
        if !self.settings.enabled || self.sender.get().is_none() || self.refusals.take().is_none() {
            return;
        }
        self.send(&RequestLine {
            event: "handshake_refused",
            client: client.as_ref().map(|c| c as &dyn Display),
            tls_name,
            refusal: Some(refusal),
            ..RequestLine::default()
        });
    }

    fn send(&self, line: &RequestLine<'_>) {
        let Some(sender) = self.sender.get() else {
            return;
        };
        let mut bytes = line.json_bytes();
        bytes.push(b'\n');
        match sender.try_send(bytes) {
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

/// How often the writer drains the queue. Requests never wake it: a blocked receiver would
/// make every line a futex wake-up and a context switch (measured: a third of the CPU of a
/// keep-alive request on two cores); a writer that drains every 50 ms makes a line cost a
/// queue slot, and the disk one write per batch.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Write what is queued every `DRAIN_EVERY`, one flush per batch; reopen when asked.
fn write_lines(target: LogTarget, lines: Receiver<Vec<u8>>, reopen: Arc<AtomicBool>) {
    let mut out = match open(&target) {
        Ok(w) => std::io::BufWriter::with_capacity(64 * 1024, w),
        Err(e) => {
            log::error!("cannot open the access log {target:?}: {e}; access lines are dropped");
            return;
        }
    };
    loop {
        if reopen.swap(false, Ordering::AcqRel) {
            let _ = out.flush();
            match open(&target) {
                Ok(w) => {
                    out = std::io::BufWriter::with_capacity(64 * 1024, w);
                    log::info!("access log reopened ({target:?})");
                }
                Err(e) => log::error!("cannot reopen the access log {target:?}: {e}"),
            }
        }
        let mut wrote = false;
        let closed = loop {
            match lines.try_recv() {
                Ok(line) => {
                    // The line ends with its newline.
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote || closed {
            let _ = out.flush();
        }
        if closed {
            return;
        }
        std::thread::sleep(DRAIN_EVERY);
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
