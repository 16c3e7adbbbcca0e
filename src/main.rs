//! The `tenant-edge` binary: a table of contents. Every command lives in `tenant_edge::cli`,
//! one file each; the edge itself is assembled in `tenant_edge::server`.

use std::process::ExitCode;

use clap::Parser;
use tenant_edge::cli::{self, Cli, Command};

fn main() -> ExitCode {
    cli::init_logging();
    match Cli::parse().command {
        Command::Run(args) => cli::run::main(args),
        Command::Check(args) => cli::check::main(args),
        Command::Certs(args) => cli::certs::main(args),
        Command::Allow(args) => cli::allow::main(args),
        Command::Migrate(args) => cli::migrate::main(args),
    }
}
