//! `tenant-edge certs …`: the operator commands over stored certificates, one file per
//! sub-command (`list`, `show`, `issue`, `remove`, `warm`, `import_caddy`), with what they share:
//! `ctx` (the config, the disk store, errors), `inspect` (reading a stored entry as the edge
//! would), `x509` (printing certificates), `trigger` (asking a running edge to issue),
//! `progress`.
//!
//! Owns: reading and explaining what `certs::disk::DiskStore` holds, importing a Caddy data
//! directory into it, and asking a *running* edge to issue (a TLS handshake with the name as
//! SNI, so that every limit of the edge applies: the allow-list, the issuance rate limit and
//! backoff, the one-order-per-name lock).
//!
//! Must not: issue certificates itself or talk to a CA (the edge does, under its limits),
//! change anything outside `<data_dir>/certs` (every write goes through `DiskStore::save`, which
//! is atomic, so the commands are safe while the edge runs), overwrite a stored certificate
//! that expires later than the one being imported, or hide why a name was skipped: every error
//! names the file or the value.

pub mod admin;
pub mod ctx;
pub mod import_caddy;
pub mod inspect;
pub mod issue;
pub mod list;
pub mod progress;
pub mod remove;
pub mod show;
pub mod trigger;
pub mod warm;
pub mod x509;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cli::certs::ctx::{parse_name, CertsError, Ctx, Outcome};

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
    /// The configuration file (required).
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
}

/// `tenant-edge certs <command> -c FILE`.
#[derive(Debug, Clone, Subcommand)]
pub enum CertsCommand {
    /// Table of stored certificates: dates, status, and whether the name is still allowed.
    List,
    /// One certificate in detail: chain, SANs, key type, files and meta.json.
    Show { name: String },
    /// Have the running edge issue a certificate for NAME (the allow-list and limits apply).
    Issue {
        name: String,
        /// Longest wait for the edge, retries included.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Delete the stored certificate of NAME (and the running edge's copy in memory).
    Remove { name: String },
    /// Have the running edge renew NAME now (or, with --all-expiring, every certificate due);
    /// the current certificate is served until the new one is stored.
    Renew {
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        all_expiring: bool,
        /// Longest wait for the edge.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Have the running edge issue every allowed name that has no valid certificate yet.
    Warm {
        /// Names issued at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Longest wait for one name, retries included.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Import certificates and keys from a Caddy data directory (DIR/certificates/...).
    ImportCaddy { dir: PathBuf },
}

/// Run one `certs` command against the config at `config`. `-c FILE` is a global option of
/// `certs` (so it may follow the subcommand) and clap cannot require global options: a missing
/// one is reported here, the way clap reports a missing argument.
pub fn main(args: CertsArgs) -> ExitCode {
    let (command, config) = (args.command, args.config.as_deref());
    let Some(config) = config else {
        eprintln!("error: the following required arguments were not provided:\n  --config <CONFIG>\n\nUsage: tenant-edge certs <COMMAND> -c <CONFIG>");
        return ExitCode::from(2);
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CertsError::Runtime)
        .and_then(|rt| rt.block_on(dispatch(command, config)));
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tenant-edge certs: {e}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: CertsCommand, path: &Path) -> Result<Outcome, CertsError> {
    // Reading and removing files needs no secret: an unset ${DATABASE_URL} is no error there.
    let needs_secrets = matches!(
        command,
        CertsCommand::Issue { .. } | CertsCommand::Warm { .. } | CertsCommand::Renew { .. }
    );
    let ctx = Ctx::load(path, needs_secrets)?;
    match command {
        CertsCommand::List => list::list(&ctx).await,
        CertsCommand::Show { name } => match parse_name(&name) {
            Some(name) => show::show(&ctx, &name).await,
            None => Ok(Outcome::Refused),
        },
        CertsCommand::Issue { name, timeout } => match parse_name(&name) {
            Some(name) => issue::issue(&ctx, &name, timeout).await,
            None => Ok(Outcome::Refused),
        },
        CertsCommand::Remove { name } => match parse_name(&name) {
            Some(name) => remove::remove(&ctx, &name).await,
            None => Ok(Outcome::Refused),
        },
        CertsCommand::Warm {
            concurrency,
            timeout,
        } => warm::warm(&ctx, usize::from(concurrency), timeout).await,
        CertsCommand::ImportCaddy { dir } => import_caddy::import_caddy(&ctx, &dir).await,
        CertsCommand::Renew {
            name,
            all_expiring,
            timeout,
        } => renew(&ctx, name.as_deref(), all_expiring, timeout),
    }
}

/// `certs renew NAME | --all-expiring`, through the running edge (its limits apply).
fn renew(
    ctx: &Ctx,
    name: Option<&str>,
    all_expiring: bool,
    timeout: Duration,
) -> Result<Outcome, CertsError> {
    let command = match (name, all_expiring) {
        (Some(name), false) => match parse_name(name) {
            Some(name) => format!("renew {name}"),
            None => return Ok(Outcome::Refused),
        },
        (None, true) => "renew-expiring".to_string(),
        _ => {
            println!("name one certificate, or give --all-expiring");
            return Ok(Outcome::Refused);
        }
    };
    match admin::ask(&ctx.config.data_dir, &command, timeout) {
        Ok(answer) => {
            println!(
                "{}",
                answer
                    .trim_start_matches("ok ")
                    .trim_start_matches("error ")
            );
            Ok(if answer.starts_with("ok") {
                Outcome::Done
            } else {
                Outcome::Refused
            })
        }
        Err(e) => {
            println!("{e}; `certs renew` asks the running edge, which applies its limits");
            Ok(Outcome::Refused)
        }
    }
}
