//! `tenant-edge check`: validate a config file and probe what it depends on, one line per
//! finding. It exists to catch the seed story's silent failures before they reach production:
//! a port already taken (kamal-proxy still on :443), an unwritable data directory, an upstream
//! that does not answer.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::allow::ask::AskUrl;
use crate::allow::database::PgAllowList;
use crate::allow::pattern::NamePattern;
use crate::certs::issuer::acme::account::Accounts;
use crate::certs::issuer::acme::settings::AcmeSettings;
use crate::certs::store::Store;
use crate::config::issuer::IssuerConfig;
use crate::config::Config;
use crate::http::upstream::{HealthCheckKind, HealthCheckSettings, PoolSettings};
use crate::metrics::Metrics;
use crate::server::edge::shared_store;
use crate::util::ports::taken_port_message;

#[derive(Args)]
pub struct CheckArgs {
    #[arg(short, long)]
    pub config: PathBuf,
    /// Validate the file only; probe nothing.
    #[arg(long)]
    pub syntax_only: bool,
}

pub fn main(args: CheckArgs) -> ExitCode {
    let probes = if args.syntax_only {
        Probes::SYNTAX_ONLY
    } else {
        Probes::ALL
    };
    let findings = check(&args.config, probes);
    for f in &findings {
        println!("{f}");
    }
    if findings.iter().any(|f| f.level == Level::Error) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Error,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok   ",
            Level::Warn => "warn ",
            Level::Error => "error",
        };
        write!(f, "{level} {}: {}", self.subject, self.message)
    }
}

fn finding(level: Level, subject: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        level,
        subject: subject.into(),
        message: message.into(),
    }
}

/// What to probe besides the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    /// Bind each listen address once (fails when something else holds it).
    pub ports: bool,
    /// Create and delete a file in the data directory.
    pub data_dir: bool,
    /// Connect to each upstream backend.
    pub upstreams: bool,
    /// Ask the database, the ask URL and the ACME directory.
    pub services: bool,
}

impl Probes {
    pub const ALL: Probes = Probes {
        ports: true,
        data_dir: true,
        upstreams: true,
        services: true,
    };
    pub const SYNTAX_ONLY: Probes = Probes {
        ports: false,
        data_dir: false,
        upstreams: false,
        services: false,
    };
}

/// Every finding for the file at `path`.
pub fn check(path: &Path, probes: Probes) -> Vec<Finding> {
    // A syntax check needs no secret: an unset variable is a warning there (`run` refuses it).
    let loaded = if probes == Probes::SYNTAX_ONLY {
        Config::load_without_secrets(path)
    } else {
        Config::load(path).map(|c| (c, Vec::new()))
    };
    let (config, missing) = match loaded {
        Ok(c) => c,
        Err(errors) => {
            return errors
                .errors
                .iter()
                .map(|e| {
                    let subject = if e.path.is_empty() {
                        path.display().to_string()
                    } else {
                        e.path.clone()
                    };
                    let message = match &e.value {
                        Some(v) => format!("{} (got {v})", e.message),
                        None => e.message.clone(),
                    };
                    finding(Level::Error, subject, message)
                })
                .collect();
        }
    };
    let mut out = vec![finding(
        Level::Ok,
        path.display().to_string(),
        "the configuration is valid",
    )];
    for name in missing {
        out.push(finding(
            Level::Warn,
            format!("${{{name}}}"),
            "the environment variable is not set: `run` and the probes of `check` need it",
        ));
    }
    out.extend(wildcard_warnings(&config));
    if probes.ports {
        for (key, addr) in config.listen.all() {
            out.push(probe_port(key, *addr));
        }
    }
    if probes.data_dir {
        out.push(probe_data_dir(&config.data_dir));
    }
    if probes.upstreams {
        for pool in &config.upstreams.pools {
            for (i, addr) in pool.backends.iter().enumerate() {
                let subject = format!("upstreams.pools.{}.backends[{i}] {addr}", pool.name);
                out.push(probe_backend(pool, *addr, subject));
            }
        }
    }
    if probes.services {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => out.extend(rt.block_on(probe_services(&config))),
            Err(e) => out.push(finding(
                Level::Error,
                "check",
                format!("cannot start a runtime: {e}"),
            )),
        }
    }
    out
}

/// A backend, checked the way its pool's health check does: a connection, and for an HTTP
/// check the same request and the same expected statuses. A redirect gets the `force_ssl` hint.
fn probe_backend(pool: &PoolSettings, addr: SocketAddr, subject: String) -> Finding {
    use std::io::{Read, Write};
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            return finding(
                Level::Warn,
                subject,
                format!("does not accept connections ({e}); requests will get 502 until it does"),
            )
        }
    };
    let Some(HealthCheckSettings {
        kind:
            HealthCheckKind::Http {
                path,
                host,
                expected_status: (lo, hi),
                headers,
            },
        ..
    }) = &pool.health_check
    else {
        return finding(Level::Ok, subject, "accepts connections");
    };
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tenant-edge-health-check\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let answered = stream.write_all(request.as_bytes()).and_then(|()| {
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    });
    let text = String::from_utf8_lossy(&head);
    let status: Option<u16> = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok());
    let location = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let key = format!("upstreams.pools.{}.health_check", pool.name);
    match (answered, status) {
        (Ok(()), Some(s)) if (*lo..=*hi).contains(&s) => finding(
            Level::Ok,
            subject,
            format!("answers GET {path} (Host: {host}) with {s}"),
        ),
        (Ok(()), Some(s)) if (300..400).contains(&s) => finding(
            Level::Error,
            subject,
            format!(
                "answers GET {path} with {s} (Location: {location}), not {lo}-{hi}: every backend would be marked down and every request get 502. Rails' force_ssl redirects plain HTTP: add `X-Forwarded-Proto: https` under {key}.headers, or exempt {path} from the redirect (config.ssl_options = {{ redirect: {{ exclude: ->(request) {{ request.path == \"{path}\" }} }} }})"
            ),
        ),
        (Ok(()), Some(s)) => finding(
            Level::Error,
            subject,
            format!("answers GET {path} with {s}, not {lo}-{hi} ({key}.expected_status): it would be marked down"),
        ),
        (Ok(()), None) => finding(
            Level::Error,
            subject,
            format!("accepts connections but gives no HTTP answer to GET {path}"),
        ),
        (Err(e), _) => finding(
            Level::Warn,
            subject,
            format!("accepts connections but the health check request failed ({e})"),
        ),
    }
}

/// A platform wildcard with an ACME issuer lets anyone make up names that become orders with
/// the CA: bounded by the per-client gate and the account budget, but worth knowing.
fn wildcard_warnings(config: &Config) -> Vec<Finding> {
    if !matches!(config.issuer, IssuerConfig::Acme(_)) {
        return Vec::new();
    }
    config
        .allow
        .platform_domains
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p, NamePattern::Below(_)))
        .map(|(i, p)| {
            finding(
                Level::Warn,
                format!("allow.platform_domains[{i}] {p}"),
                format!(
                    "with an ACME issuer every made-up name below {} is allowed and ordered on its first handshake; \
                     each client may try limits.clients.new_names_burst such names and all orders share \
                     limits.issuance.orders_per_3h, but list the platform's names exactly where you can",
                    p.base()
                ),
            )
        })
        .collect()
}

/// The database query, the ask URL and the ACME directory, each with what to do on failure.
async fn probe_services(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let metrics = match Metrics::new() {
        Ok(m) => Arc::new(m),
        Err(e) => return vec![finding(Level::Error, "check", e.to_string())],
    };
    if let Some(db) = &config.allow.database {
        let subject = "allow.database";
        out.push(match PgAllowList::new(db, metrics.clone()) {
            Err(e) => finding(Level::Error, subject, e.to_string()),
            Ok(pg) => match pg.probe().await {
                Ok(()) => finding(
                    Level::Ok,
                    subject,
                    "connects, and the allow-list query runs",
                ),
                Err(e) => finding(
                    Level::Error,
                    subject,
                    format!("{e}; check DATABASE_URL, the network path and allow.database.query"),
                ),
            },
        });
    }
    if let Some(ask) = &config.allow.ask {
        // A platform domain must get a plain 200: a redirect here is the seed's silent failure.
        let probe_name = config
            .allow
            .platform_domains
            .first()
            .map(|p| p.base().clone());
        let subject = "allow.ask.url";
        out.push(match probe_name {
            None => finding(
                Level::Warn,
                subject,
                "not probed: no platform domain to ask about",
            ),
            Some(name) => match AskUrl::new(ask, metrics.clone()).probe(&name).await {
                Ok(()) => finding(
                    Level::Ok,
                    subject,
                    format!("answers 200 for the platform domain {name}"),
                ),
                Err(e) => finding(
                    Level::Error,
                    subject,
                    format!("asked about the platform domain {name}: {e}"),
                ),
            },
        });
    }
    if config.shared_store.is_some() {
        let subject = "store.shared";
        out.push(match shared_store(config) {
            Err(e) => finding(Level::Error, subject, e.to_string()),
            Ok(None) => finding(Level::Ok, subject, "not configured"),
            Ok(Some(store)) => match Store::list(store.as_ref()).await {
                Ok(names) => finding(
                    Level::Ok,
                    subject,
                    format!("reachable; {} certificate(s) shared", names.len()),
                ),
                Err(e) => finding(Level::Error, subject, e.to_string()),
            },
        });
    }
    if let IssuerConfig::Acme(acme) = &config.issuer {
        let directory = probe_acme_directory(acme).await;
        let reachable = directory.level == Level::Ok;
        out.push(directory);
        if reachable {
            out.push(probe_acme_account(config, acme).await);
        }
    }
    out
}

/// Whether the CA still knows the account this host would order with (a POST to the account
/// URL; nothing is created).
async fn probe_acme_account(config: &Config, acme: &AcmeSettings) -> Finding {
    let subject = "issuer.acme account";
    let accounts = Accounts::new(acme, &config.data_dir, None);
    match accounts.verify_existing().await {
        Ok(Some(id)) => finding(Level::Ok, subject, format!("{id} exists at the CA")),
        Ok(None) => finding(
            Level::Ok,
            subject,
            "none yet; the first order registers one",
        ),
        Err(e) => finding(Level::Warn, subject, e.to_string()),
    }
}

async fn probe_acme_directory(acme: &AcmeSettings) -> Finding {
    let subject = format!("issuer.acme.directory {}", acme.directory);
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    if let Some(root) = &acme.trusted_root {
        let cert = std::fs::read(root)
            .ok()
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok());
        let Some(cert) = cert else {
            return finding(
                Level::Error,
                format!("issuer.acme.trusted_root {}", root.display()),
                "cannot read a PEM certificate from this file",
            );
        };
        builder = builder.tls_certs_only([cert]);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            return finding(
                Level::Error,
                subject,
                format!("cannot build an HTTPS client: {e}"),
            )
        }
    };
    let response = match client.get(&acme.directory).send().await {
        Ok(r) => r,
        Err(e) => {
            return finding(
                Level::Error,
                subject,
                format!(
                    "unreachable ({e}); check outbound HTTPS from this host, the URL, and issuer.acme.trusted_root for a private CA"
                ),
            )
        }
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return finding(
            Level::Error,
            subject,
            format!("answered {status}, expected 200 with the ACME directory"),
        );
    }
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(dir) if dir.get("newOrder").is_some() => {
            let mut notes = Vec::new();
            if dir.get("renewalInfo").is_some() {
                notes.push("offers ACME Renewal Information");
            }
            let profiles = dir.get("meta").and_then(|m| m.get("profiles"));
            if let Some(profile) = &acme.profile {
                if profiles.and_then(|p| p.get(profile)).is_none() {
                    return finding(
                        Level::Error,
                        "issuer.acme.profile",
                        format!("the CA does not offer the profile {profile:?}; remove it or pick one the directory lists"),
                    );
                }
            }
            let extra = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            finding(
                Level::Ok,
                subject,
                format!("answers with an ACME directory{extra}"),
            )
        }
        _ => finding(
            Level::Error,
            subject,
            "answered, but not with an ACME directory (no newOrder); is this the directory URL?",
        ),
    }
}

fn probe_port(key: &str, addr: SocketAddr) -> Finding {
    let subject = format!("{key} {addr}");
    match TcpListener::bind(addr) {
        Ok(_) => finding(Level::Ok, subject, "the address is free"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            finding(Level::Error, subject, taken_port_message(addr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => finding(
            Level::Error,
            subject,
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => finding(
            Level::Error,
            subject,
            "no network interface has this address",
        ),
        Err(e) => finding(Level::Error, subject, format!("cannot listen: {e}")),
    }
}

fn probe_data_dir(dir: &Path) -> Finding {
    let subject = format!("data_dir {}", dir.display());
    if dir.is_dir() {
        let probe = dir.join(format!(".check.{}", std::process::id()));
        return match std::fs::write(&probe, b"probe") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                finding(Level::Ok, subject, "writable")
            }
            Err(e) => finding(Level::Error, subject, format!("not writable: {e}")),
        };
    }
    if dir.exists() {
        return finding(Level::Error, subject, "exists but is not a directory");
    }
    // Not there yet: `run` creates it; check that it could, without creating anything.
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p.as_os_str().is_empty() {
            parent = Some(Path::new("."));
            continue;
        }
        if p.is_dir() {
            let writable = tempfile_in(p);
            return if writable {
                finding(
                    Level::Ok,
                    subject,
                    format!("will be created (in {}, which is writable)", p.display()),
                )
            } else {
                finding(
                    Level::Error,
                    subject,
                    format!("cannot be created: {} is not writable", p.display()),
                )
            };
        }
        parent = p.parent();
    }
    finding(Level::Error, subject, "no existing parent directory")
}

fn tempfile_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".tenant-edge-check.{}", std::process::id()));
    let ok = std::fs::write(&probe, b"probe").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
