//! `tenant-edge check`: validate a config file and probe what it depends on, one line per
//! finding. It exists to catch the seed story's silent failures before they reach production:
//! a port already taken (kamal-proxy still on :443), an unwritable data directory, an upstream
//! that does not answer.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::server::unsupported;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Error,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok   ",
            Level::Warn => "warn ",
            Level::Error => "error",
        };
        write!(f, "{level} {}: {}", self.subject, self.message)
    }
}

fn finding(level: Level, subject: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        level,
        subject: subject.into(),
        message: message.into(),
    }
}

/// What to probe besides the file itself.
#[derive(Debug, Clone, Copy)]
pub struct Probes {
    /// Bind each listen address once (fails when something else holds it).
    pub ports: bool,
    /// Create and delete a file in the data directory.
    pub data_dir: bool,
    /// Connect to each upstream backend.
    pub upstreams: bool,
}

impl Probes {
    pub const ALL: Probes = Probes {
        ports: true,
        data_dir: true,
        upstreams: true,
    };
    pub const SYNTAX_ONLY: Probes = Probes {
        ports: false,
        data_dir: false,
        upstreams: false,
    };
}

/// Every finding for the file at `path`.
pub fn check(path: &Path, probes: Probes) -> Vec<Finding> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            return errors
                .errors
                .iter()
                .map(|e| {
                    let subject = if e.path.is_empty() {
                        path.display().to_string()
                    } else {
                        e.path.clone()
                    };
                    let message = match &e.value {
                        Some(v) => format!("{} (got {v})", e.message),
                        None => e.message.clone(),
                    };
                    finding(Level::Error, subject, message)
                })
                .collect();
        }
    };
    let mut out = vec![finding(
        Level::Ok,
        path.display().to_string(),
        "the configuration is valid",
    )];
    for section in unsupported(&config) {
        out.push(finding(
            Level::Error,
            section,
            "not supported by this version of tenant-edge yet: `run` refuses this file",
        ));
    }
    if probes.ports {
        let listeners = config
            .listen
            .https
            .iter()
            .map(|a| ("listen.https", a))
            .chain(config.listen.http.iter().map(|a| ("listen.http", a)))
            .chain(config.listen.metrics.iter().map(|a| ("listen.metrics", a)));
        for (key, addr) in listeners {
            out.push(probe_port(key, *addr));
        }
    }
    if probes.data_dir {
        out.push(probe_data_dir(&config.data_dir));
    }
    if probes.upstreams {
        for pool in &config.upstreams.pools {
            for (i, addr) in pool.backends.iter().enumerate() {
                let subject = format!("upstreams.pools.{}.backends[{i}] {addr}", pool.name);
                out.push(match TcpStream::connect_timeout(addr, Duration::from_secs(1)) {
                    Ok(_) => finding(Level::Ok, subject, "accepts connections"),
                    Err(e) => finding(
                        Level::Warn,
                        subject,
                        format!("does not accept connections ({e}); requests will get 502 until it does"),
                    ),
                });
            }
        }
    }
    out
}

fn probe_port(key: &str, addr: SocketAddr) -> Finding {
    let subject = format!("{key} {addr}");
    match TcpListener::bind(addr) {
        Ok(_) => finding(Level::Ok, subject, "the address is free"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => finding(
            Level::Error,
            subject,
            "already in use by another process (kamal-proxy or Caddy still bound to it? \
             Run kamal-proxy on 127.0.0.1:8080 with `ssl: false` behind tenant-edge; `ss -ltnp` shows the owner)",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => finding(
            Level::Error,
            subject,
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => finding(
            Level::Error,
            subject,
            "no network interface has this address",
        ),
        Err(e) => finding(Level::Error, subject, format!("cannot listen: {e}")),
    }
}

fn probe_data_dir(dir: &Path) -> Finding {
    let subject = format!("data_dir {}", dir.display());
    if dir.is_dir() {
        let probe = dir.join(format!(".check.{}", std::process::id()));
        return match std::fs::write(&probe, b"probe") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                finding(Level::Ok, subject, "writable")
            }
            Err(e) => finding(Level::Error, subject, format!("not writable: {e}")),
        };
    }
    if dir.exists() {
        return finding(Level::Error, subject, "exists but is not a directory");
    }
    // Not there yet: `run` creates it; check that it could, without creating anything.
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p.as_os_str().is_empty() {
            parent = Some(Path::new("."));
            continue;
        }
        if p.is_dir() {
            let writable = tempfile_in(p);
            return if writable {
                finding(
                    Level::Ok,
                    subject,
                    format!("will be created (in {}, which is writable)", p.display()),
                )
            } else {
                finding(
                    Level::Error,
                    subject,
                    format!("cannot be created: {} is not writable", p.display()),
                )
            };
        }
        parent = p.parent();
    }
    finding(Level::Error, subject, "no existing parent directory")
}

fn tempfile_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".tenant-edge-check.{}", std::process::id()));
    let ok = std::fs::write(&probe, b"probe").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
