//! `tenant-edge migrate -c FILE`: create or upgrade the shared PostgreSQL tables.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Config;
use crate::server::edge::shared_store;

#[derive(Args)]
pub struct MigrateArgs {
    #[arg(short, long)]
    pub config: PathBuf,
}

pub fn main(args: MigrateArgs) -> ExitCode {
    match migrate(&args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenant-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let Some(store) = shared_store(&config)? else {
        anyhow::bail!(
            "{}: store.shared is not configured; one host needs no migration",
            path.display()
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let applied = runtime.block_on(store.migrate())?;
    if applied.is_empty() {
        println!("the shared store at {} is up to date", store.target());
    } else {
        println!(
            "applied migration(s) {applied:?} to the shared store at {}",
            store.target()
        );
    }
    let encrypted = runtime.block_on(store.encrypt_plaintext_rows())?;
    if encrypted > 0 {
        println!("encrypted {encrypted} row(s) written before the encryption key was set");
    }
    Ok(())
}
