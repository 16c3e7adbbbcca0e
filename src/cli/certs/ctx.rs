//! What every `certs` command needs: the config, the disk store, and how it ends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::allow::decision::DecisionError;
use crate::allow::list::AllowList;
use crate::certs::disk::DiskStore;
use crate::certs::store::StoreError;
use crate::cli::certs::trigger::EdgeTarget;
use crate::config::errors::ConfigErrors;
use crate::config::Config;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::server::edge::allow_list;
use crate::server::error::BuildError;

/// Why a command could not run at all (as opposed to a refusal, which is a normal answer).
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    AllowList(#[from] BuildError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listen.https is empty: there is no edge to ask")]
    NoHttpsListener,
    #[error("the database cannot list its names: {0}")]
    ListNames(DecisionError),
    #[error("a background task failed: {0}")]
    Task(String),
}

/// How a command that ran ended: `Done` is exit 0, `Refused` exit 1 (an answer the operator
/// must act on: not allowed, not found, failed names). Errors (`CertsError`) are exit 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Refused,
}

/// What every command needs: the config, the store, and the file's path for messages.
pub struct Ctx {
    pub config: Config,
    pub path: PathBuf,
    pub store: DiskStore,
}

impl Ctx {
    /// The config of `path`; without `secrets`, variables that are not set are no error (the
    /// command uses none of them) and are named once.
    pub fn load(path: &Path, secrets: bool) -> Result<Ctx, CertsError> {
        let config = if secrets {
            Config::load(path)?
        } else {
            let (config, missing) = Config::load_without_secrets(path)?;
            if !missing.is_empty() {
                eprintln!(
                    "note: {} not set; what needs {} (the database's decisions) is shown as unknown",
                    missing.join(", "),
                    if missing.len() == 1 { "it" } else { "them" }
                );
            }
            config
        };
        let store = DiskStore::open(&config.data_dir)?;
        Ok(Ctx {
            config,
            path: path.to_path_buf(),
            store,
        })
    }

    pub fn allow_list(&self) -> Result<Arc<AllowList>, CertsError> {
        let metrics = Arc::new(Metrics::new()?);
        Ok(Arc::new(allow_list(&self.config, &metrics)?))
    }

    /// Where to reach the running edge: the first `listen.https` address (a wildcard address
    /// is reached over loopback).
    pub fn edge(&self) -> Result<EdgeTarget, CertsError> {
        let first = self
            .config
            .listen
            .https
            .first()
            .ok_or(CertsError::NoHttpsListener)?;
        let ip = match first.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(EdgeTarget {
            addr: SocketAddr::new(ip, first.port()),
            issue_timeout: self.config.tls.issue_timeout,
        })
    }

    pub fn not_running(&self, addr: SocketAddr) -> String {
        format!(
            "nothing listens on {addr} (listen.https): start the edge first: `tenant-edge run -c {}`",
            self.path.display()
        )
    }
}

pub fn parse_name(input: &str) -> Option<Domain> {
    match Domain::parse(input) {
        Ok(name) => Some(name),
        Err(e) => {
            println!("{input:?} is not a name the edge can serve: {e}");
            None
        }
    }
}
