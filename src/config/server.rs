//! `server:`: Pingora's process options.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw;
use crate::config::values::{default_threads, opt_duration, secs, Errors};

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub error_log: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
}

pub fn build(s: &raw::Server, errs: &mut Errors<'_>) -> Option<ServerSettings> {
    let threads = s.threads.as_ref().map_or(Some(default_threads()), |v| {
        errs.uint("server.threads", v, 1, 1024).map(|n| n as usize)
    });
    let grace_period = opt_duration(errs, "server.grace_period", &s.grace_period, secs(5));
    let graceful_shutdown_timeout = opt_duration(
        errs,
        "server.graceful_shutdown_timeout",
        &s.graceful_shutdown_timeout,
        secs(5),
    );
    // Default: in the data directory (filled in by the caller), never in /tmp, where anyone
    // could place a socket or pid file first.
    let pid_file = s
        .pid_file
        .as_ref()
        .map_or(Some(PathBuf::new()), |v| errs.path("server.pid_file", v));
    let upgrade_sock = s.upgrade_sock.as_ref().map_or(Some(PathBuf::new()), |v| {
        errs.path("server.upgrade_sock", v)
    });
    let error_log = s
        .error_log
        .as_ref()
        .and_then(|v| errs.path("server.error_log", v));
    let user = s.user.as_ref().and_then(|v| errs.string("server.user", v));
    let group = s
        .group
        .as_ref()
        .and_then(|v| errs.string("server.group", v));
    Some(ServerSettings {
        threads: threads?,
        grace_period: grace_period?,
        graceful_shutdown_timeout: graceful_shutdown_timeout?,
        pid_file: pid_file?,
        upgrade_sock: upgrade_sock?,
        error_log,
        user,
        group,
    })
}
