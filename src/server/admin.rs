//! The local admin channel of a running edge: a Unix socket at `<data_dir>/admin.sock` (mode
//! 0600, in the 0700 data directory, so only the edge's own user reaches it), one command per
//! connection, one line each way:
//!
//! - `evict NAME`: forget the in-memory copy of NAME's certificate (after `certs remove`); the
//!   next handshake loads it again, or issues it when the files are gone.
//! - `renew NAME`: renew NAME now through the edge's own renewal path (allow-list, limits, the
//!   issuance lock); the current certificate is served until the new one is stored.
//! - `renew-expiring`: the same for every certificate held whose renewal is due.
//!
//! Answers start with `ok ` or `error `. A line is at most 512 bytes and must arrive within 5 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::certs::manager::{CertManager, RenewOutcome};
use crate::domain::Domain;
use crate::util::time::unix_now;

/// The socket's name in the data directory.
pub const SOCKET: &str = "admin.sock";
const MAX_LINE: u64 = 512;

pub struct AdminService {
    pub manager: Arc<CertManager>,
    pub path: PathBuf,
    /// When a certificate is due for renewal: the fraction of its lifetime left.
    pub renew_fraction: f64,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = std::fs::remove_file(&self.path);
        let listener = match UnixListener::bind(&self.path) {
            Ok(l) => l,
            Err(e) => {
                log::warn!(
                    "cannot open the admin socket {} ({e}); `certs remove` and `certs renew` cannot reach this edge",
                    self.path.display()
                );
                return;
            }
        };
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (manager, fraction) = (self.manager.clone(), self.renew_fraction);
                    tokio::spawn(async move { serve(stream, &manager, fraction).await });
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(stream: UnixStream, manager: &Arc<CertManager>, fraction: f64) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE));
    let answer =
        match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
            Ok(Ok(_)) => run(line.trim(), manager, fraction).await,
            _ => "error no command within 5s".to_string(),
        };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
}

async fn run(command: &str, manager: &Arc<CertManager>, fraction: f64) -> String {
    let (verb, arg) = command.split_once(' ').unwrap_or((command, ""));
    let name = || Domain::parse(arg.trim()).map_err(|e| format!("error {arg:?}: {e}"));
    match verb {
        "evict" => match name() {
            Ok(name) => {
                manager.evict(&name);
                log::info!("{name}: evicted from memory (admin)");
                format!("ok evicted {name}")
            }
            Err(e) => e,
        },
        "renew" => match name() {
            Ok(name) => renew_one(manager, &name).await,
            Err(e) => e,
        },
        "renew-expiring" => {
            let now = unix_now();
            let mut due = Vec::new();
            for (name, ck) in manager.held_certificates().await {
                let left = ck.not_after - now;
                let life = (ck.not_after - ck.not_before).max(1);
                if (left as f64) < life as f64 * fraction {
                    due.push(name);
                }
            }
            let mut answers = Vec::new();
            for name in &due {
                answers.push(renew_one(manager, name).await);
            }
            if due.is_empty() {
                "ok nothing is due for renewal".to_string()
            } else {
                let failed = answers.iter().filter(|a| a.starts_with("error")).count();
                let prefix = if failed == 0 { "ok" } else { "error" };
                format!("{prefix} {}", answers.join("; "))
            }
        }
        _ => format!("error unknown command {verb:?} (evict NAME, renew NAME, renew-expiring)"),
    }
}

async fn renew_one(manager: &Arc<CertManager>, name: &Domain) -> String {
    let old = match manager.cached(name) {
        Some(ck) => ck,
        None => match manager
            .held_certificates()
            .await
            .into_iter()
            .find(|(n, _)| n == name)
        {
            Some((_, ck)) => ck,
            None => {
                return format!(
                    "error {name} has no certificate to renew (`certs issue` orders one)"
                )
            }
        },
    };
    // The old certificate stays in memory, and is served, until the new one replaces it.
    match manager.renew(name, &old).await {
        RenewOutcome::Renewed => match manager.cached(name) {
            Some(ck) => format!("ok renewed {name}, valid until {}", ck.not_after),
            None => format!("ok renewed {name}"),
        },
        RenewOutcome::Failed => {
            format!("error {name}: the renewal failed; the edge's log says why")
        }
        RenewOutcome::Deferred(limited) => format!("error {name}: not now: {limited}"),
        RenewOutcome::NotAllowed => format!("error {name} is no longer allowed; not renewed"),
    }
}
