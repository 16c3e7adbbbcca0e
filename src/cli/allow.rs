//! `tenant-edge allow NAME -c FILE`: is NAME allowed, by which rule, or why not (exit 0 when
//! allowed, 1 when not, 2 when the command could not run).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::allow::explain::explain;
use crate::config::Config;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::server::edge::allow_list;

#[derive(Args)]
pub struct AllowArgs {
    pub name: String,
    #[arg(short, long)]
    pub config: PathBuf,
}

pub fn main(args: AllowArgs) -> ExitCode {
    match allow(&args.name, &args.config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tenant-edge: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn allow(name: &str, path: &std::path::Path) -> anyhow::Result<bool> {
    let config = Config::load(path)?;
    let domain = match Domain::parse(name) {
        Ok(d) => d,
        Err(e) => {
            println!("{name:?} is refused before any lookup: {e}");
            return Ok(false);
        }
    };
    let list = allow_list(&config, &Arc::new(Metrics::new()?))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let verdict = runtime.block_on(explain(&list, &domain));
    println!("{}", verdict.sentence(&domain));
    Ok(verdict.is_allowed())
}
