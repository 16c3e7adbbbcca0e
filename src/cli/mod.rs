//! The command line: one file per command, each with its `main`.
//!
//! - `run`: run the edge (Pingora's daemon, graceful-upgrade and test flags).
//! - `check`: validate a config file and probe what it names.
//! - `allow`: is a name allowed, by which rule, or why not.
//! - `certs`: the operator commands over stored certificates (one file per sub-command).
//! - `migrate`: create or upgrade the shared PostgreSQL tables.

pub mod allow;
pub mod certs;
pub mod check;
pub mod migrate;
pub mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tenant-edge",
    version,
    about = "TLS front door with on-demand certificates, in front of kamal-proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the edge.
    Run(run::RunArgs),
    /// Validate the file and probe its listen ports, data directory and upstreams.
    Check(check::CheckArgs),
    /// Stored certificates: list, show, issue, remove, warm, import-caddy.
    Certs(certs::CertsArgs),
    /// Say whether NAME is allowed, by which source, or why not.
    Allow(allow::AllowArgs),
    /// Create or upgrade the shared PostgreSQL tables (`store.shared`, several hosts).
    Migrate(migrate::MigrateArgs),
}

/// Set up logging; the first thing every command does.
pub fn init_logging() {
    crate::logging::init();
}
