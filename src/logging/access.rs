//! `access_log:`: one JSON line per request, and one per refused handshake (rate-limited), to
//! stdout (journald, `docker logs`) or a file that is reopened on SIGUSR1 (logrotate).
//!
//! Lines are written by one thread of their own: a request appends its line to a buffer of
//! its thread (`Buffers`) and never waits for the disk; the writer takes every buffer's lines
//! each `DRAIN_EVERY`. A buffer holds at most `BUFFER_LIMIT` bytes: beyond, the line is
//! dropped and counted (`tenant_edge_access_log_dropped_total`). Lines of one thread keep
//! their order; lines of different threads may be up to `DRAIN_EVERY` out of order, as with
//! nginx's buffered log of several workers. Successful requests (status < 400) can be sampled
//! (`sample`); refusals and errors are always logged.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::logging::line::RequestLine;
use crate::logging::LogBudget;
use crate::metrics::Metrics;

/// Bytes of lines one buffer holds for the writer (some 10,000 lines); beyond, lines are
/// dropped (and counted).
const BUFFER_LIMIT: usize = 4 << 20;

/// Buffers of lines: a thread takes one, round robin, with its first line. More threads than
/// buffers share them (a lock each line takes for the time of writing it).
const BUFFERS: usize = 16;

/// A buffer's room kept between batches: a larger one (after a burst) is given back.
const KEEP_ROOM: usize = 1 << 20;

/// One buffer of lines, alone on its cache lines (two threads never write the same line of
/// memory for two buffers).
#[repr(align(128))]
#[derive(Default)]
struct Buffer(Mutex<Vec<u8>>);

/// The lines waiting for the writer, one buffer per thread (see the module comment). A line
/// costs no allocation and no queue operation: an uncontended lock and the bytes.
struct Buffers {
    slots: Box<[Buffer]>,
    /// Bytes a buffer holds at most (`BUFFER_LIMIT`).
    limit: usize,
    /// No writer will take the lines (the log could not be opened, or its thread started):
    /// each line is dropped, and counted, at once.
    closed: AtomicBool,
}

thread_local! {
    /// Which buffer this thread writes to (`usize::MAX`: none yet).
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The next buffer a thread takes.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

impl Buffers {
    fn new(limit: usize) -> Buffers {
        Buffers {
            slots: (0..BUFFERS).map(|_| Buffer::default()).collect(),
            limit,
            closed: AtomicBool::new(false),
        }
    }

    /// This thread's buffer.
    fn mine(&self) -> &Mutex<Vec<u8>> {
        let slot = SLOT.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed));
            }
            s.get()
        });
        &self.slots[slot % self.slots.len()].0
    }

    /// Append what `write` writes to this thread's buffer, unless it holds `limit` bytes
    /// already or no writer will take it: false then (the line is dropped).
    fn append(&self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut buf = self.mine().lock().unwrap_or_else(PoisonError::into_inner);
        if buf.len() >= self.limit {
            return false;
        }
        write(&mut buf);
        true
    }

    /// Write every buffer's lines to `out` (through `spare`, swapped with each buffer so the
    /// lock is held for a swap, never for the write); whether there were any.
    fn drain(&self, spare: &mut Vec<u8>, out: &mut impl Write) -> bool {
        let mut wrote = false;
        for slot in self.slots.iter() {
            {
                let mut buf = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
                if buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *buf, spare);
            }
            // Whole lines only: each line was appended under the lock, newline included.
            let _ = out.write_all(spare);
            wrote = true;
            spare.clear();
            if spare.capacity() > KEEP_ROOM {
                *spare = Vec::new();
            }
        }
        wrote
    }
}

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
    buffers: Arc<Buffers>,
    /// Whether the writer runs (lines are kept only then).
    started: AtomicBool,
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
            buffers: Arc::new(Buffers::new(BUFFER_LIMIT)),
            started: AtomicBool::new(false),
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
        if !self.settings.enabled || !self.started.load(Ordering::Relaxed) {
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
        if !self.settings.enabled
            || !self.started.load(Ordering::Relaxed)
            || self.refusals.take().is_none()
        {
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
        if !self.started.load(Ordering::Relaxed) {
            return;
        }
        let kept = self.buffers.append(|o| {
            line.write_json(o);
            o.push(b'\n');
        });
        if !kept {
            self.metrics.access_log_dropped.inc();
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

/// How often the writer drains the buffers. Requests never wake it: a blocked writer would
/// make every line a futex wake-up and a context switch (measured: a third of the CPU of a
/// keep-alive request on two cores); a writer that drains every 50 ms makes a line cost its
/// bytes in a buffer, and the disk one write per batch.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Write what is buffered every `DRAIN_EVERY`, one flush per batch; reopen when asked. Ends
/// when the access log is gone (after writing what it left).
fn write_lines(target: LogTarget, lines: Arc<Buffers>, reopen: Arc<AtomicBool>) {
    let mut out = match open(&target) {
        Ok(w) => std::io::BufWriter::with_capacity(64 * 1024, w),
        Err(e) => {
            log::error!("cannot open the access log {target:?}: {e}; access lines are dropped");
            lines.closed.store(true, Ordering::Release);
            return;
        }
    };
    let mut spare = Vec::new();
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
        // The access log is gone: this drain is the last.
        let log_gone = Arc::strong_count(&lines) == 1;
        let wrote = lines.drain(&mut spare, &mut out);
        if wrote || log_gone {
            let _ = out.flush();
        }
        if log_gone {
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
        if self.log.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let (target, reopen) = (self.log.settings.target.clone(), self.log.reopen.clone());
        let lines = self.log.buffers.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(target, lines, reopen));
        let writer = match writer {
            Ok(w) => Mutex::new(Some(w)),
            Err(e) => {
                log::error!("cannot start the access log writer: {e}");
                self.log.buffers.closed.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u64) -> RequestLine<'static> {
        RequestLine {
            event: "request",
            status: Some(200),
            bytes_out: Some(n),
            ..RequestLine::default()
        }
    }

    /// Lines go to the buffer while the writer runs; once the buffer holds its limit, each
    /// further line is dropped and counted, and what was kept is whole lines.
    #[test]
    fn a_full_buffer_drops_lines_and_counts_them() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut log = AccessLog::new(AccessLogSettings::default(), metrics.clone());
        let log_mut = Arc::get_mut(&mut log).unwrap();
        log_mut.buffers = Arc::new(Buffers::new(1000));
        // Not started: nothing is kept, nothing counted.
        log.request(&line(0));
        let mut out = Vec::new();
        assert!(!log.buffers.drain(&mut Vec::new(), &mut out));
        log.started.store(true, Ordering::Relaxed);
        let one = line(7).to_json().len() + 1;
        let fits = 1000_usize.div_ceil(one);
        for n in 0..fits + 5 {
            log.request(&line(n as u64));
        }
        assert_eq!(metrics.access_log_dropped.get(), 5);
        assert!(log.buffers.drain(&mut Vec::new(), &mut out));
        let text = String::from_utf8(out).unwrap();
        let kept: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(kept.len(), fits);
        for (n, v) in kept.iter().enumerate() {
            assert_eq!(v["bytes_out"], n as u64);
        }
        // Drained: room again.
        log.request(&line(1));
        assert_eq!(metrics.access_log_dropped.get(), 5);
        // No writer will come (the file could not be opened): every line is dropped and
        // counted at once, none held.
        log.buffers.closed.store(true, Ordering::Relaxed);
        log.request(&line(2));
        log.request(&line(3));
        assert_eq!(metrics.access_log_dropped.get(), 7);
    }

    /// A log whose file cannot be opened drops and counts its lines instead of holding them.
    #[test]
    fn a_log_that_cannot_be_opened_drops_and_counts_its_lines() {
        let buffers = Arc::new(Buffers::new(BUFFER_LIMIT));
        let target = LogTarget::File("/nonexistent-dir/access.log".into());
        write_lines(target, buffers.clone(), Arc::default());
        assert!(!buffers.append(|o| o.extend_from_slice(b"x\n")));
    }

    /// Threads writing while the writer drains: every line comes out once, whole, and each
    /// thread's lines in the order it wrote them.
    #[test]
    fn draining_while_threads_write_loses_and_reorders_no_thread_s_lines() {
        let buffers = Arc::new(Buffers::new(BUFFER_LIMIT));
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let buffers = buffers.clone();
                std::thread::spawn(move || {
                    for n in 0..5000 {
                        assert!(buffers
                            .append(|o| { o.extend_from_slice(format!("{t} {n}\n").as_bytes()) }));
                    }
                })
            })
            .collect();
        let drainer = {
            let (buffers, done) = (buffers.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut spare, mut out) = (Vec::new(), Vec::new());
                while !done.load(Ordering::Acquire) {
                    buffers.drain(&mut spare, &mut out);
                }
                buffers.drain(&mut spare, &mut out);
                out
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        let out = String::from_utf8(drainer.join().unwrap()).unwrap();
        let mut next = [0u32; 4];
        for l in out.lines() {
            let (t, n) = l.split_once(' ').unwrap();
            let (t, n): (usize, u32) = (t.parse().unwrap(), n.parse().unwrap());
            assert_eq!(n, next[t], "thread {t}: line {n} after {}", next[t]);
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4]);
    }
}
