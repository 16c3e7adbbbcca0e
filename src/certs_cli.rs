//! `tenant-edge certs …`: the operator commands over stored certificates (`list`, `show`,
//! `issue`, `remove`, `warm`, `import-caddy`).
//!
//! Owns: reading and explaining what `store::DiskStore` holds, importing a Caddy data directory
//! into it, and asking a *running* edge to issue (a TLS handshake with the name as SNI, so that
//! every limit of the edge applies: the allow-list, the issuance rate limit and backoff, the
//! one-order-per-name lock).
//!
//! Must not: issue certificates itself or talk to a CA (the edge does, under its limits),
//! change anything outside `<data_dir>/certs` (every write goes through `DiskStore::save`, which
//! is atomic, so the commands are safe while the edge runs), overwrite a stored certificate
//! that expires later than the one being imported, or hide why a name was skipped: every error
//! names the file or the value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::{X509NameRef, X509Ref, X509};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::certificate::{unix_now, BundleError, CertifiedKey};
use crate::config::{Config, ConfigErrors, NamePattern};
use crate::database::PgAllowList;
use crate::decision::{AllowList, Source};
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::server::{allow_list, BuildError};
use crate::store::{CertMeta, DiskStore, Store, StoreError, StoredCert};

/// `list` shows a progress counter on stderr beyond this many names.
const PROGRESS_ABOVE: usize = 50;
/// Decisions asked at once by `list` (the database pool bounds its own share further).
const DECISION_CONCURRENCY: usize = 8;
/// Pingora gives up on a whole TLS handshake after 60 s; no single attempt waits longer.
const HANDSHAKE_CAP: Duration = Duration::from_secs(60);
/// The `issuer` written into `meta.json` for imported certificates.
pub const CADDY_IMPORT_ISSUER: &str = "caddy-import";

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
    /// Delete the stored certificate of NAME.
    Remove { name: String },
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
    ListNames(crate::decision::DecisionError),
    #[error("a background task failed: {0}")]
    Task(String),
}

/// How a command that ran ended: `Done` is exit 0, `Refused` exit 1 (an answer the operator
/// must act on: not allowed, not found, failed names). Errors (`CertsError`) are exit 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Refused,
}

/// Run one `certs` command against the config at `config`. `-c FILE` is a global option of
/// `certs` (so it may follow the subcommand) and clap cannot require global options: a missing
/// one is reported here, the way clap reports a missing argument.
pub fn run(command: CertsCommand, config: Option<&Path>) -> ExitCode {
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
    let ctx = Ctx::load(path)?;
    match command {
        CertsCommand::List => list(&ctx).await,
        CertsCommand::Show { name } => match parse_name(&name) {
            Some(name) => show(&ctx, &name).await,
            None => Ok(Outcome::Refused),
        },
        CertsCommand::Issue { name, timeout } => match parse_name(&name) {
            Some(name) => issue(&ctx, &name, timeout).await,
            None => Ok(Outcome::Refused),
        },
        CertsCommand::Remove { name } => match parse_name(&name) {
            Some(name) => remove(&ctx, &name).await,
            None => Ok(Outcome::Refused),
        },
        CertsCommand::Warm {
            concurrency,
            timeout,
        } => warm(&ctx, usize::from(concurrency), timeout).await,
        CertsCommand::ImportCaddy { dir } => import_caddy(&ctx, &dir).await,
    }
}

/// What every command needs: the config, the store, and the file's path for messages.
struct Ctx {
    config: Config,
    path: PathBuf,
    store: DiskStore,
}

impl Ctx {
    fn load(path: &Path) -> Result<Ctx, CertsError> {
        let config = Config::load(path)?;
        let store = DiskStore::open(&config.data_dir)?;
        Ok(Ctx {
            config,
            path: path.to_path_buf(),
            store,
        })
    }

    fn allow_list(&self) -> Result<Arc<AllowList>, CertsError> {
        let metrics = Arc::new(Metrics::new()?);
        Ok(Arc::new(allow_list(&self.config, &metrics)?))
    }

    /// Where to reach the running edge: the first `listen.https` address (a wildcard address
    /// is reached over loopback).
    fn edge(&self) -> Result<EdgeTarget, CertsError> {
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

    fn not_running(&self, addr: SocketAddr) -> String {
        format!(
            "nothing listens on {addr} (listen.https): start the edge first: `tenant-edge run -c {}`",
            self.path.display()
        )
    }
}

fn parse_name(input: &str) -> Option<Domain> {
    match Domain::parse(input) {
        Ok(name) => Some(name),
        Err(e) => {
            println!("{input:?} is not a name the edge can serve: {e}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading what is stored
// ---------------------------------------------------------------------------------------------

/// The state of a stored certificate at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CertStatus {
    Valid,
    /// Less than a third of the lifetime left: the edge renews it.
    Expiring,
    Expired,
    NotYetValid,
    Unreadable(String),
}

impl CertStatus {
    fn of(ck: &CertifiedKey, now: i64) -> CertStatus {
        if now < ck.not_before {
            CertStatus::NotYetValid
        } else if now >= ck.not_after {
            CertStatus::Expired
        } else if (ck.not_after - now) * 3 < ck.not_after - ck.not_before {
            CertStatus::Expiring
        } else {
            CertStatus::Valid
        }
    }

    /// The edge serves it as it is.
    fn is_usable(&self) -> bool {
        matches!(self, CertStatus::Valid | CertStatus::Expiring)
    }
}

impl std::fmt::Display for CertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertStatus::Valid => f.write_str("valid"),
            CertStatus::Expiring => f.write_str("expiring"),
            CertStatus::Expired => f.write_str("expired"),
            CertStatus::NotYetValid => f.write_str("not yet valid"),
            CertStatus::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// A stored entry, parsed as the edge would parse it.
struct Inspected {
    stored: StoredCert,
    cert: Result<CertifiedKey, BundleError>,
    status: CertStatus,
}

async fn inspect(store: &DiskStore, name: &Domain) -> Result<Option<Inspected>, StoreError> {
    let Some(stored) = store.load(name).await? else {
        return Ok(None);
    };
    let cert = CertifiedKey::from_bundle(&stored.bundle, Some(name));
    let status = match &cert {
        Ok(ck) => CertStatus::of(ck, unix_now()),
        Err(e) => CertStatus::Unreadable(e.to_string()),
    };
    Ok(Some(Inspected {
        stored,
        cert,
        status,
    }))
}

/// The stored certificate of `name` when the edge would serve it now (store errors count as
/// "none": the caller then asks the edge, which reports the store problem itself).
async fn usable(store: &DiskStore, name: &Domain) -> Option<CertifiedKey> {
    match inspect(store, name).await {
        Ok(Some(Inspected {
            cert: Ok(ck),
            status,
            ..
        })) if status.is_usable() => Some(ck),
        _ => None,
    }
}

/// `2025-01-31 12:00` (UTC).
fn datetime(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("@{unix}"),
    }
}

/// `2025-01-31` (UTC).
fn date(unix: i64) -> String {
    let full = datetime(unix);
    full.split_once(' ')
        .map_or(full.clone(), |(d, _)| d.to_string())
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// What the allow-list says about a name, asked directly (no cache), with the reasons.
#[derive(Debug, Clone)]
enum Verdict {
    Allowed(Source),
    Denied(Vec<String>),
    /// No source said yes and at least one could not answer.
    Unknown(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allowed(source) => write!(f, "allowed by {}", source.kind()),
            Verdict::Denied(_) => f.write_str("not allowed"),
            Verdict::Unknown(e) => write!(f, "unknown: {e}"),
        }
    }
}

async fn verdict(list: &AllowList, platform: &[NamePattern], name: &Domain) -> Verdict {
    if list.platform_match(name).is_some() {
        return Verdict::Allowed(Source::Platform);
    }
    let mut why = vec![if platform.is_empty() {
        "allow.platform_domains is empty".to_string()
    } else {
        let patterns: Vec<String> = platform.iter().map(|p| p.to_string()).collect();
        format!(
            "no entry of allow.platform_domains matches ({})",
            patterns.join(", ")
        )
    }];
    if !list.has_sources() {
        why.push("no database or ask URL is configured".into());
    }
    let mut errors = Vec::new();
    for (source, answer) in list.explain(name).await {
        match answer {
            Ok(true) => return Verdict::Allowed(source),
            Ok(false) => why.push(match source {
                Source::Database => "the database has no active company with this name".into(),
                other => format!("the {} source says no", other.kind()),
            }),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Verdict::Denied(why)
    } else {
        Verdict::Unknown(errors.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Progress on stderr
// ---------------------------------------------------------------------------------------------

struct Progress {
    total: usize,
    shown: bool,
    width: usize,
}

impl Progress {
    fn new(total: usize, shown: bool) -> Progress {
        Progress {
            total,
            shown,
            width: 0,
        }
    }

    fn tick(&mut self, done: usize, label: &str) {
        if !self.shown {
            return;
        }
        use std::io::Write;
        let line = format!("[{done}/{}] {label}", self.total);
        let pad = self.width.saturating_sub(line.len());
        self.width = line.len();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.shown && self.width > 0 {
            eprintln!();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// list, show, remove
// ---------------------------------------------------------------------------------------------

async fn list(ctx: &Ctx) -> Result<Outcome, CertsError> {
    let names = ctx.store.list().await?;
    if names.is_empty() {
        println!(
            "no certificates stored in {}",
            ctx.config.data_dir.join("certs").display()
        );
        return Ok(Outcome::Done);
    }
    let allow = ctx.allow_list()?;
    let platform = Arc::new(ctx.config.allow.platform_domains.clone());
    let slots = Arc::new(Semaphore::new(DECISION_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (index, name) in names.iter().enumerate() {
        let (allow, platform, slots, name) =
            (allow.clone(), platform.clone(), slots.clone(), name.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire().await;
            (index, verdict(&allow, &platform, &name).await)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; names.len()];
    let mut progress = Progress::new(names.len(), names.len() > PROGRESS_ABOVE);
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (index, v) = joined.map_err(|e| CertsError::Task(e.to_string()))?;
        if let Some(slot) = verdicts.get_mut(index) {
            *slot = Some(v);
        }
        done += 1;
        progress.tick(done, "decisions");
    }
    progress.finish();

    let now = unix_now();
    let mut rows = vec![[
        "NAME".to_string(),
        "ISSUER".into(),
        "NOT BEFORE".into(),
        "NOT AFTER".into(),
        "DAYS LEFT".into(),
        "STATUS".into(),
        "DECISION".into(),
    ]];
    for (name, v) in names.iter().zip(verdicts) {
        let decision = v.map_or("unknown: not asked".to_string(), |v| v.to_string());
        let entry = inspect(&ctx.store, name).await?;
        let row = match entry {
            // Removed between `list` and `load`.
            None => continue,
            Some(e) => {
                let issuer = e
                    .stored
                    .meta
                    .as_ref()
                    .map_or("-".to_string(), |m| m.issuer.clone());
                match &e.cert {
                    Ok(ck) => [
                        name.to_string(),
                        issuer,
                        datetime(ck.not_before),
                        datetime(ck.not_after),
                        ((ck.not_after - now).div_euclid(86_400)).to_string(),
                        e.status.to_string(),
                        decision,
                    ],
                    Err(_) => [
                        name.to_string(),
                        issuer,
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        e.status.to_string(),
                        decision,
                    ],
                }
            }
        };
        rows.push(row);
    }
    print_table(&rows);
    Ok(Outcome::Done)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

async fn show(ctx: &Ctx, name: &Domain) -> Result<Outcome, CertsError> {
    let Some(entry) = inspect(&ctx.store, name).await? else {
        println!(
            "no certificate stored for {name} (looked in {})",
            ctx.store.dir_for(name).display()
        );
        return Ok(Outcome::Refused);
    };
    print_details(&ctx.store, name, &entry);
    Ok(Outcome::Done)
}

fn print_details(store: &DiskStore, name: &Domain, entry: &Inspected) {
    let now = unix_now();
    println!("name:      {name}");
    match &entry.cert {
        Ok(ck) => println!(
            "status:    {} ({} days left, until {} UTC)",
            entry.status,
            (ck.not_after - now).div_euclid(86_400),
            datetime(ck.not_after)
        ),
        Err(_) => println!("status:    {}", entry.status),
    }
    // Parse the chain on its own: a bundle with a bad key still has a chain worth showing.
    let chain = X509::stack_from_pem(&entry.stored.bundle).unwrap_or_default();
    match chain.first() {
        Some(leaf) => {
            println!("SANs:      {}", sans(leaf).join(", "));
            let key = leaf
                .public_key()
                .map_or_else(|e| format!("unreadable ({e})"), |k| key_type(&k));
            println!("key:       {key}");
        }
        None => println!("SANs:      (no certificate in the bundle)"),
    }
    println!("chain:");
    for (i, cert) in chain.iter().enumerate() {
        print_cert(i, cert);
    }
    println!("files:");
    let dir = store.dir_for(name);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut files: Vec<(String, String)> = entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let path = e.path();
                    let detail = match e.metadata() {
                        Ok(m) => {
                            use std::os::unix::fs::PermissionsExt;
                            format!("{:04o}  {} bytes", m.permissions().mode() & 0o7777, m.len())
                        }
                        Err(err) => format!("unreadable: {err}"),
                    };
                    (path.display().to_string(), detail)
                })
                .collect();
            files.sort();
            for (path, detail) in files {
                println!("  {path}  {detail}");
            }
        }
        Err(e) => println!("  {}: {e}", dir.display()),
    }
    match std::fs::read_to_string(dir.join("meta.json")) {
        Ok(text) => {
            println!("meta.json:");
            for line in text.lines() {
                println!("  {line}");
            }
        }
        Err(e) => println!("meta.json: {e}"),
    }
}

fn print_cert(index: usize, cert: &X509Ref) {
    let serial = cert
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    let fingerprint = cert
        .digest(MessageDigest::sha256())
        .map(|d| {
            d.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    println!("  [{index}] subject:     {}", dn(cert.subject_name()));
    println!("      issuer:      {}", dn(cert.issuer_name()));
    println!("      serial:      {serial}");
    println!("      not before:  {}", cert.not_before());
    println!("      not after:   {}", cert.not_after());
    println!("      sha256:      {fingerprint}");
}

/// `CN=example.com, O=Org`.
fn dn(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect();
    if parts.is_empty() {
        "(empty)".into()
    } else {
        parts.join(", ")
    }
}

/// DNS names and IP addresses in the subjectAltName.
fn sans(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|g| {
                    g.dnsname().map(str::to_string).or_else(|| {
                        g.ipaddress().and_then(|b| match b.len() {
                            4 => <[u8; 4]>::try_from(b)
                                .ok()
                                .map(|a| IpAddr::from(a).to_string()),
                            16 => <[u8; 16]>::try_from(b)
                                .ok()
                                .map(|a| IpAddr::from(a).to_string()),
                            _ => None,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `ECDSA P-256`, `RSA-2048`, `Ed25519`.
fn key_type<T: HasPublic>(key: &PKeyRef<T>) -> String {
    match key.id() {
        Id::EC => {
            let curve = key.ec_key().ok().and_then(|ec| ec.group().curve_name());
            match curve {
                Some(Nid::X9_62_PRIME256V1) => "ECDSA P-256".into(),
                Some(Nid::SECP384R1) => "ECDSA P-384".into(),
                Some(Nid::SECP521R1) => "ECDSA P-521".into(),
                Some(other) => format!("ECDSA {}", other.short_name().unwrap_or("?")),
                None => "ECDSA (unknown curve)".into(),
            }
        }
        Id::RSA => format!("RSA-{}", key.bits()),
        Id::ED25519 => "Ed25519".into(),
        other => format!("{other:?} ({} bits)", key.bits()),
    }
}

async fn remove(ctx: &Ctx, name: &Domain) -> Result<Outcome, CertsError> {
    if ctx.store.remove(name).await? {
        println!("removed {}", ctx.store.dir_for(name).display());
        println!(
            "a running edge keeps serving its in-memory copy of {name} until it restarts or {name} is no longer allowed"
        );
        Ok(Outcome::Done)
    } else {
        println!(
            "no certificate stored for {name} (looked in {})",
            ctx.store.dir_for(name).display()
        );
        Ok(Outcome::Refused)
    }
}

// ---------------------------------------------------------------------------------------------
// Asking the running edge: issue, warm
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct EdgeTarget {
    addr: SocketAddr,
    /// How long the edge's handshake waits for an issuance (`tls.issue_timeout`).
    issue_timeout: Duration,
}

impl EdgeTarget {
    fn is_listening(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok()
    }
}

/// How hard `trigger` tries.
#[derive(Debug, Clone, Copy)]
enum Patience {
    /// `issue`: one retry, only when the first handshake ran into the edge's issue timeout.
    RetryOnceAfterTimeout,
    /// `warm`: also retry quick refusals (rate limits, the client gate) with backoff, until the
    /// deadline. Each retry costs the CA nothing: the edge's own limits decide.
    UntilDeadline,
}

#[derive(Debug, thiserror::Error)]
enum TriggerError {
    #[error("nothing listens on {0}")]
    NotListening(SocketAddr),
    #[error("the edge refused the handshake after {took:.1?} ({tls}); the edge's log says why (an issuance limit, a per-name backoff after a failed order, a failed order)")]
    Refused { took: Duration, tls: String },
    #[error(
        "no certificate after {0:?}; the order may still be running in the edge: its log says"
    )]
    TimedOut(Duration),
    #[error("{0}")]
    Task(String),
}

enum HandshakeError {
    Connect(std::io::Error),
    Tls(String),
}

/// One TLS handshake with `name` as SNI and no verification: the edge's certificate callback
/// runs its whole lookup (decision, cache, store, issuance) as for any client.
fn handshake(addr: SocketAddr, name: &str, wait: Duration) -> Result<(), HandshakeError> {
    let tcp = TcpStream::connect_timeout(&addr, wait.min(Duration::from_secs(5)))
        .map_err(HandshakeError::Connect)?;
    let tls = |e: &dyn std::fmt::Display| HandshakeError::Tls(e.to_string());
    tcp.set_read_timeout(Some(wait)).map_err(|e| tls(&e))?;
    tcp.set_write_timeout(Some(wait)).map_err(|e| tls(&e))?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls(&e))?;
    builder.set_verify(SslVerifyMode::NONE);
    let config = builder
        .build()
        .configure()
        .map_err(|e| tls(&e))?
        .verify_hostname(false);
    let mut stream = config.connect(name, tcp).map_err(|e| tls(&e))?;
    let _ = stream.shutdown();
    Ok(())
}

/// Make the running edge obtain a certificate for `name`, and wait (at most `deadline`) until
/// it is stored. Returns whether the edge completed a handshake (`false`: the certificate
/// appeared in the store after a handshake had given up).
async fn trigger(
    store: &DiskStore,
    edge: EdgeTarget,
    name: &Domain,
    deadline: Duration,
    patience: Patience,
) -> Result<bool, TriggerError> {
    let start = Instant::now();
    let mut retried_after_timeout = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(TriggerError::TimedOut(deadline));
        }
        let attempt = Instant::now();
        let sni = name.to_string();
        let addr = edge.addr;
        let wait = left.min(HANDSHAKE_CAP);
        let result = tokio::task::spawn_blocking(move || handshake(addr, &sni, wait))
            .await
            .map_err(|e| TriggerError::Task(e.to_string()))?;
        let took = attempt.elapsed();
        let tls = match result {
            Ok(()) => return Ok(true),
            Err(HandshakeError::Connect(e))
                if e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Err(TriggerError::NotListening(addr))
            }
            Err(HandshakeError::Connect(e)) => format!("connect to {addr}: {e}"),
            Err(HandshakeError::Tls(e)) => e,
        };
        // The issuance goes on in the edge after its handshake gave up: the store tells.
        if usable(store, name).await.is_some() {
            return Ok(false);
        }
        let timed_out = took + Duration::from_millis(500) >= edge.issue_timeout;
        if timed_out && !retried_after_timeout {
            retried_after_timeout = true;
            if wait_for_store(
                store,
                name,
                edge.issue_timeout.min(left_of(start, deadline)),
            )
            .await
            {
                return Ok(false);
            }
            continue;
        }
        match patience {
            Patience::RetryOnceAfterTimeout if timed_out => {
                return Err(TriggerError::TimedOut(start.elapsed()))
            }
            Patience::RetryOnceAfterTimeout => return Err(TriggerError::Refused { took, tls }),
            Patience::UntilDeadline => {
                let pause = backoff.min(left_of(start, deadline));
                if pause.is_zero() {
                    return Err(TriggerError::Refused { took, tls });
                }
                if wait_for_store(store, name, pause).await {
                    return Ok(false);
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
                if left_of(start, deadline).is_zero() {
                    return Err(TriggerError::Refused { took, tls });
                }
            }
        }
    }
}

fn left_of(start: Instant, deadline: Duration) -> Duration {
    deadline.saturating_sub(start.elapsed())
}

/// Poll the store for a usable certificate for up to `wait`.
async fn wait_for_store(store: &DiskStore, name: &Domain, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        if usable(store, name).await.is_some() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
    }
}

async fn issue(ctx: &Ctx, name: &Domain, timeout: Duration) -> Result<Outcome, CertsError> {
    let allow = ctx.allow_list()?;
    match verdict(&allow, &ctx.config.allow.platform_domains, name).await {
        Verdict::Allowed(source) => println!("{name} is allowed by {}", source.kind()),
        Verdict::Denied(why) => {
            println!("{name} is not allowed: {}; nothing issued", why.join("; "));
            return Ok(Outcome::Refused);
        }
        Verdict::Unknown(e) => {
            println!("cannot tell whether {name} is allowed ({e}); nothing issued");
            return Ok(Outcome::Refused);
        }
    }
    if let Some(ck) = usable(&ctx.store, name).await {
        println!(
            "{name} already has a valid certificate (until {} UTC); nothing to issue",
            datetime(ck.not_after)
        );
        return show(ctx, name).await;
    }
    let edge = ctx.edge()?;
    if !edge.is_listening() {
        println!("{}", ctx.not_running(edge.addr));
        return Ok(Outcome::Refused);
    }
    let started = Instant::now();
    match trigger(
        &ctx.store,
        edge,
        name,
        timeout,
        Patience::RetryOnceAfterTimeout,
    )
    .await
    {
        Ok(_) => {}
        Err(TriggerError::NotListening(addr)) => {
            println!("{}", ctx.not_running(addr));
            return Ok(Outcome::Refused);
        }
        Err(e) => {
            println!("{name}: {e}");
            return Ok(Outcome::Refused);
        }
    }
    match inspect(&ctx.store, name).await? {
        Some(entry) if entry.status.is_usable() => {
            println!(
                "issued {name} in {:.1?} by the edge at {}",
                started.elapsed(),
                edge.addr
            );
            print_details(&ctx.store, name, &entry);
            Ok(Outcome::Done)
        }
        _ => {
            println!(
                "the edge at {} served {name}, but {} holds no valid certificate: the edge serves a copy from memory (a removed certificate stays there until restart), or it runs with another data_dir than {}",
                edge.addr,
                ctx.store.dir_for(name).display(),
                ctx.path.display()
            );
            Ok(Outcome::Refused)
        }
    }
}

/// Every name to warm: exact platform domains, plus the database's list when one is set.
async fn allowed_names(ctx: &Ctx) -> Result<Vec<Domain>, CertsError> {
    let mut names: Vec<Domain> = ctx
        .config
        .allow
        .platform_domains
        .iter()
        .filter_map(|p| match p {
            NamePattern::Exact(d) => Some(d.clone()),
            NamePattern::Below(_) => None,
        })
        .collect();
    if let Some(db) = &ctx.config.allow.database {
        let pg = PgAllowList::new(db, Arc::new(Metrics::new()?)).map_err(CertsError::ListNames)?;
        names.extend(pg.all_names().await.map_err(CertsError::ListNames)?);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

async fn warm(ctx: &Ctx, concurrency: usize, timeout: Duration) -> Result<Outcome, CertsError> {
    let names = allowed_names(ctx).await?;
    if ctx.config.allow.ask.is_some() {
        println!(
            "note: the ask URL cannot list its names; they are issued on their first handshake"
        );
    }
    let skipped = ctx
        .config
        .allow
        .platform_domains
        .iter()
        .filter(|p| matches!(p, NamePattern::Below(_)))
        .count();
    if skipped > 0 {
        println!("note: {skipped} wildcard platform pattern(s) name no single host; not warmed");
    }
    let mut todo = Vec::new();
    let mut already = 0usize;
    for name in &names {
        if usable(&ctx.store, name).await.is_some() {
            already += 1;
        } else {
            todo.push(name.clone());
        }
    }
    let mut issued = 0usize;
    let mut failed: Vec<(Domain, String)> = Vec::new();
    if !todo.is_empty() {
        let edge = ctx.edge()?;
        if !edge.is_listening() {
            println!("{}", ctx.not_running(edge.addr));
            return Ok(Outcome::Refused);
        }
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for name in todo.iter().cloned() {
            let (store, slots) = (ctx.store.clone(), slots.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire().await;
                let result = match trigger(&store, edge, &name, timeout, Patience::UntilDeadline)
                    .await
                {
                    Ok(_) if usable(&store, &name).await.is_some() => Ok(()),
                    Ok(_) => Err(
                        "served, but not stored (the edge serves a copy from memory)".to_string(),
                    ),
                    Err(e) => Err(e.to_string()),
                };
                (name, result)
            });
        }
        let mut progress = Progress::new(todo.len(), true);
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            let (name, result) = joined.map_err(|e| CertsError::Task(e.to_string()))?;
            done += 1;
            progress.tick(done, name.as_str());
            match result {
                Ok(()) => issued += 1,
                Err(why) => failed.push((name, why)),
            }
        }
        progress.finish();
    }
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, why) in &failed {
        println!("failed {name}: {why}");
    }
    println!(
        "warm: {} allowed name(s): {issued} issued, {already} already valid, {} failed",
        names.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        Outcome::Done
    } else {
        Outcome::Refused
    })
}

// ---------------------------------------------------------------------------------------------
// import-caddy
// ---------------------------------------------------------------------------------------------

/// What happened to one Caddy entry.
enum Import {
    Imported {
        not_after: i64,
        /// What the import replaced, when something was stored before.
        replaced: Option<&'static str>,
    },
    Skipped(String),
}

async fn import_caddy(ctx: &Ctx, dir: &Path) -> Result<Outcome, CertsError> {
    let root = dir.join("certificates");
    let issuers = sorted_dirs(&root).map_err(|source| CertsError::Io {
        op: "read the Caddy certificates directory",
        path: root.clone(),
        source,
    })?;
    let (mut imported, mut skipped, mut io_errors) = (0usize, 0usize, 0usize);
    for issuer in issuers {
        let issuer_dir = root.join(&issuer);
        let entries = match sorted_dirs(&issuer_dir) {
            Ok(entries) => entries,
            Err(e) => {
                println!("error    {}: {e}", issuer_dir.display());
                io_errors += 1;
                continue;
            }
        };
        for entry in entries {
            match import_one(ctx, &root, &issuer, &entry).await {
                Ok(Import::Imported {
                    not_after,
                    replaced,
                }) => {
                    imported += 1;
                    println!(
                        "imported {entry} (expires {}, from {issuer}{})",
                        date(not_after),
                        replaced.unwrap_or_default()
                    );
                }
                Ok(Import::Skipped(why)) => {
                    skipped += 1;
                    println!("skipped  {entry}: {why}");
                }
                Err(e) => {
                    io_errors += 1;
                    println!("error    {entry}: {e}");
                }
            }
        }
    }
    println!(
        "import-caddy: {imported} imported, {skipped} skipped, {io_errors} error(s) (from {})",
        root.display()
    );
    if imported > 0 {
        println!("a running edge serves imported certificates for names it has not cached yet; restart it to replace certificates it already holds in memory");
    }
    Ok(if io_errors == 0 {
        Outcome::Done
    } else {
        Outcome::Refused
    })
}

/// Names of the subdirectories of `dir`, sorted (files are ignored).
fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Read a file; absent is `Ok(None)`, other I/O errors are errors naming the file.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CertsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertsError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

async fn import_one(
    ctx: &Ctx,
    root: &Path,
    issuer: &str,
    entry: &str,
) -> Result<Import, CertsError> {
    let skip = |why: String| Ok(Import::Skipped(why));
    if let Some(base) = entry.strip_prefix("wildcard_.") {
        return skip(format!(
            "wildcard certificate (*.{base}): the edge holds one certificate per name and issues each name on demand"
        ));
    }
    let name = match Domain::parse(entry) {
        Ok(name) => name,
        Err(e) => return skip(format!("{entry:?} is not a name the edge can serve: {e}")),
    };
    let relative = |file: &str| format!("{issuer}/{entry}/{file}");
    let (crt_file, key_file) = (format!("{entry}.crt"), format!("{entry}.key"));
    let dir = root.join(issuer).join(entry);
    let Some(crt) = read_optional(&dir.join(&crt_file))? else {
        return skip(format!("unparsable: {} is missing", relative(&crt_file)));
    };
    let Some(key) = read_optional(&dir.join(&key_file))? else {
        return skip(format!("unparsable: {} is missing", relative(&key_file)));
    };
    let chain = match X509::stack_from_pem(&crt) {
        Ok(chain) if !chain.is_empty() => chain,
        Ok(_) => {
            return skip(format!(
                "unparsable: {} holds no PEM certificate",
                relative(&crt_file)
            ))
        }
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&crt_file))),
    };
    let key = match PKey::private_key_from_pem(&key) {
        Ok(key) => key,
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&key_file))),
    };
    // The stored form: the key (PKCS#8), then the chain as Caddy ordered it (leaf first).
    let mut bundle = match key.private_key_to_pem_pkcs8() {
        Ok(pem) => pem,
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&key_file))),
    };
    for cert in &chain {
        match cert.to_pem() {
            Ok(pem) => bundle.extend_from_slice(&pem),
            Err(e) => return skip(format!("unparsable: {}: {e}", relative(&crt_file))),
        }
    }
    let ck = match CertifiedKey::from_bundle(&bundle, Some(&name)) {
        Ok(ck) => ck,
        Err(BundleError::KeyMismatch) => {
            return skip(format!(
                "key does not match the certificate ({} does not belong to {})",
                relative(&key_file),
                relative(&crt_file)
            ))
        }
        Err(BundleError::NameMismatch(_)) => {
            let names = chain.first().map(|leaf| sans(leaf)).unwrap_or_default();
            return skip(format!(
                "name mismatch: {} names {}, not {name}",
                relative(&crt_file),
                if names.is_empty() {
                    "no DNS name".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&crt_file))),
    };
    let now = unix_now();
    if ck.not_after <= now {
        return skip(format!("expired on {}", date(ck.not_after)));
    }
    if ck.not_before > now {
        return skip(format!("not valid before {}", datetime(ck.not_before)));
    }
    let mut replaced = None;
    if let Some(existing) = inspect(&ctx.store, &name).await? {
        if let Ok(current) = &existing.cert {
            if current.leaf().to_der().ok() == ck.leaf().to_der().ok() {
                return skip("already imported (the stored certificate is this one)".into());
            }
            if current.not_after >= ck.not_after {
                return skip(format!(
                    "already have a newer certificate (expires {}, this one {})",
                    date(current.not_after),
                    date(ck.not_after)
                ));
            }
            replaced = Some(", replaces a stored certificate that expires sooner");
        } else {
            // Unusable as stored: the edge would ignore it and order a new one.
            replaced = Some(", replaces an unreadable stored bundle");
        }
    }
    let stored = StoredCert {
        bundle,
        meta: Some(CertMeta {
            issuer: CADDY_IMPORT_ISSUER.to_string(),
            issued_at: now,
            not_before: ck.not_before,
            not_after: ck.not_after,
        }),
    };
    ctx.store.save(&name, &stored).await?;
    Ok(Import::Imported {
        not_after: ck.not_after,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(not_before: i64, not_after: i64) -> CertifiedKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut bundle = key.serialize_pem().into_bytes();
        bundle.extend_from_slice(cert.pem().as_bytes());
        let mut ck = CertifiedKey::from_bundle(&bundle, None).unwrap();
        ck.not_before = not_before;
        ck.not_after = not_after;
        ck
    }

    #[test]
    fn status_follows_the_lifetime() {
        let c = ck(0, 90);
        assert_eq!(CertStatus::of(&c, -1), CertStatus::NotYetValid);
        assert_eq!(CertStatus::of(&c, 0), CertStatus::Valid);
        assert_eq!(CertStatus::of(&c, 60), CertStatus::Valid);
        assert_eq!(CertStatus::of(&c, 61), CertStatus::Expiring);
        assert_eq!(CertStatus::of(&c, 90), CertStatus::Expired);
        assert!(CertStatus::Expiring.is_usable());
        assert!(!CertStatus::Unreadable("x".into()).is_usable());
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(datetime(0), "1970-01-01 00:00");
        assert_eq!(date(1_735_689_600), "2025-01-01");
    }

    #[test]
    fn key_types_are_named() {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        assert_eq!(key_type(&PKey::from_ec_key(ec).unwrap()), "ECDSA P-256");
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        assert_eq!(key_type(&PKey::from_rsa(rsa).unwrap()), "RSA-2048");
    }
}
