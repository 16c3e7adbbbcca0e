//! `tenant-edge run -c FILE [-d] [-u] [-t]`: build the server and run it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use anyhow::Context;

use crate::certs::issuer::internal::CA_CERT;
use crate::config::Config;
use crate::server::listen::ensure_listen_addresses_free;
use crate::server::{build_server, RunOptions};

#[derive(Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Run in the background (Pingora daemon mode).
    #[arg(short, long)]
    pub daemon: bool,
    /// Take over the listeners of a running instance (graceful upgrade; then SIGQUIT the old one).
    #[arg(short, long)]
    pub upgrade: bool,
    /// Build everything, then exit: proves the new binary can start before an upgrade.
    #[arg(short, long)]
    pub test: bool,
}

pub fn main(args: RunArgs) -> ExitCode {
    let opts = RunOptions {
        daemon: args.daemon,
        upgrade: args.upgrade,
        test: args.test,
    };
    match run(&args.config, opts) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("tenant-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, opts: RunOptions) -> anyhow::Result<std::convert::Infallible> {
    let config = Config::load(path)?;
    // An upgrade takes the sockets over from the running process, and `--test` binds nothing.
    if !opts.upgrade && !opts.test {
        ensure_listen_addresses_free(&config).context("cannot start")?;
    }
    let (mut server, edge) = build_server(&config, opts).context("cannot start")?;
    server.bootstrap();
    let https: Vec<String> = config.listen.https.iter().map(|a| a.to_string()).collect();
    log::info!(
        "tenant-edge {} serving https on {}{}{}",
        env!("CARGO_PKG_VERSION"),
        https.join(", "),
        if config.listen.http.is_empty() {
            String::new()
        } else {
            format!(", http on {:?}", config.listen.http)
        },
        config.listen.metrics.map_or(String::new(), |m| format!(
            ", metrics on http://{m}/metrics"
        )),
    );
    if edge.internal_ca.is_some() {
        log::info!(
            "certificates come from the internal CA; clients trust {}",
            config.data_dir.join(CA_CERT).display()
        );
    }
    server.run_forever()
}
