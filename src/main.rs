//! The `tenant-edge` binary: parse the command line, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use tenant_edge::check::{check, Level, Probes};
use tenant_edge::config::Config;
use tenant_edge::decision::Source;
use tenant_edge::domain::Domain;
use tenant_edge::metrics::Metrics;
use tenant_edge::server::{allow_list, build_server, RunOptions};

#[derive(Parser)]
#[command(
    name = "tenant-edge",
    version,
    about = "TLS front door with on-demand certificates, in front of kamal-proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Run in the background (Pingora daemon mode).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listeners of a running instance (graceful upgrade; then SIGQUIT the old one).
        #[arg(short, long)]
        upgrade: bool,
        /// Build everything, then exit: proves the new binary can start before an upgrade.
        #[arg(short, long)]
        test: bool,
    },
    /// Validate the file and probe its listen ports, data directory and upstreams.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Validate the file only; probe nothing.
        #[arg(long)]
        syntax_only: bool,
    },
    /// Stored certificates: list, show, issue, remove, warm, import-caddy.
    Certs {
        #[command(subcommand)]
        command: tenant_edge::certs_cli::CertsCommand,
        /// The configuration file (required).
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
    },
    /// Say whether NAME is allowed, by which source, or why not.
    Allow {
        name: String,
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Create or upgrade the shared PostgreSQL tables (`store.shared`, several hosts).
    Migrate {
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tenant_edge::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            daemon,
            upgrade,
            test,
        } => match run(
            &config,
            RunOptions {
                daemon,
                upgrade,
                test,
            },
        ) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("tenant-edge: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            config,
            syntax_only,
        } => {
            let probes = if syntax_only {
                Probes::SYNTAX_ONLY
            } else {
                Probes::ALL
            };
            let findings = check(&config, probes);
            for f in &findings {
                println!("{f}");
            }
            if findings.iter().any(|f| f.level == Level::Error) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Certs { command, config } => {
            tenant_edge::certs_cli::run(command, config.as_deref())
        }
        Command::Allow { name, config } => match allow(&name, &config) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("tenant-edge: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Migrate { config } => match migrate(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tenant-edge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn migrate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let Some(store) = tenant_edge::server::shared_store(&config)? else {
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
    Ok(())
}

fn run(path: &std::path::Path, opts: RunOptions) -> anyhow::Result<std::convert::Infallible> {
    let config = Config::load(path)?;
    // An upgrade takes the sockets over from the running process, and `--test` binds nothing.
    if !opts.upgrade && !opts.test {
        tenant_edge::server::ensure_listen_addresses_free(&config).context("cannot start")?;
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
            config.data_dir.join(tenant_edge::issuer::CA_CERT).display()
        );
    }
    server.run_forever()
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
    let list = allow_list(&config, &std::sync::Arc::new(Metrics::new()?))?;
    if let Some(pattern) = list.platform_match(&domain) {
        println!("{domain} is allowed by platform (allow.platform_domains: {pattern})");
        return Ok(true);
    }
    let patterns: Vec<String> = config
        .allow
        .platform_domains
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut why = vec![if patterns.is_empty() {
        "allow.platform_domains is empty".to_string()
    } else {
        format!(
            "no entry of allow.platform_domains matches ({})",
            patterns.join(", ")
        )
    }];
    if !list.has_sources() {
        why.push("no database or ask URL is configured".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (source, answer) in runtime.block_on(list.explain(&domain)) {
        match answer {
            Ok(true) => {
                println!("{domain} is allowed by {}", source.kind());
                return Ok(true);
            }
            Ok(false) => why.push(match source {
                Source::Database => {
                    "the database query finds no active company with this name".to_string()
                }
                _ => format!("the {} source says no", source.kind()),
            }),
            Err(e) => why.push(format!(
                "{} could not answer: {e} (the edge refuses never-seen names then)",
                source.kind()
            )),
        }
    }
    println!("{domain} is not allowed: {}", why.join("; "));
    Ok(false)
}
