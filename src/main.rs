//! The `tenant-edge` binary: a table of contents. Every command lives in `tenant_edge::cli`,
//! one file each; the edge itself is assembled in `tenant_edge::server`.

use std::process::ExitCode;

use clap::Parser;
use tenant_edge::cli::{self, Cli, Command};

/// mimalloc instead of glibc's malloc: a proxied request makes dozens of small short-lived
/// allocations across threads, which mimalloc serves from thread-local pages (fewer cycles per
/// request, and memory given back after a burst of slow clients).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
