//! The configuration file: one YAML document, parsed into typed values once.
//!
//! Parsing is two-step so that *every* problem is reported at once, each with its key path and
//! the bad value: serde reads the document into `raw` structs whose leaves are untyped YAML
//! values (unknown keys are collected by `serde_ignored`, not stopped at), then `Config::build`
//! converts each leaf into its type (`SocketAddr`, `Duration`, `Domain`, enums) and collects the
//! errors. Nothing else in the crate sees a raw string from the file.
//!
//! Secrets may come from the environment: any string value may contain `${NAME}`, which is
//! replaced by the variable's value (a missing variable is an error naming it and the key).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::domain::Domain;

/// One problem in the file: where, what was there, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        match &self.value {
            Some(v) => write!(f, "{path}: {} (got {v})", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a file, in document order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) in {}:", self.errors.len(), self.file)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// True when some error is about `path` (exactly).
    pub fn mentions(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}

// ---------------------------------------------------------------------------------------------
// Typed configuration
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// Where state lives (see README "Data directory").
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub allow: AllowConfig,
    pub issuer: IssuerConfig,
    pub upstreams: UpstreamsConfig,
    pub limits: LimitsConfig,
    pub renewal: RenewalConfig,
    pub provisioning: ProvisioningConfig,
    /// `None`: one host, the disk store alone.
    pub shared_store: Option<SharedStoreConfig>,
}

/// Several hosts sharing certificates, accounts, challenges and issuance locks through
/// PostgreSQL (`store.shared`).
#[derive(Clone)]
pub struct SharedStoreConfig {
    pub url: String,
    /// AES-256 key for private keys at rest, read from the environment variable named by
    /// `encryption_key_env` (base64, 32 bytes).
    pub encryption_key: Option<[u8; 32]>,
    pub migrate_on_start: bool,
    /// How long an issuance lock outlives a holder that died.
    pub lock_lease: Duration,
    pub timeout: Duration,
}

impl fmt::Debug for SharedStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStoreConfig")
            .field("encrypted", &self.encryption_key.is_some())
            .field("migrate_on_start", &self.migrate_on_start)
            .field("lock_lease", &self.lock_lease)
            .finish_non_exhaustive()
    }
}

/// When certificates are renewed (`renewal:`).
#[derive(Debug, Clone)]
pub struct RenewalConfig {
    /// Renew when this fraction of the lifetime is left (default 1/3), unless the CA's renewal
    /// information (ARI) suggests a window.
    pub fraction: f64,
    /// Longest sleep between two looks at the schedule; the next due certificate wakes it sooner.
    pub check_interval: Duration,
}

/// Background issuance of allowed names before their first request (`provisioning:`).
#[derive(Debug, Clone)]
pub struct ProvisioningConfig {
    pub enabled: bool,
    /// New orders per 3 hours for pre-provisioning (Let's Encrypt: 300 per account per 3h).
    pub orders_per_3h: u32,
}

/// Abuse limits on new orders and on never-seen names per client (`limits:`).
#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    pub issuance: crate::limits::LimitSettings,
    /// `None`: the pre-TLS client gate is off (`limits.clients.enabled: false`).
    pub clients: Option<crate::client_gate::ClientGateSettings>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// Port written into `http → https` redirects (omitted from the URL when 443).
    pub redirect_https_port: u16,
}

impl Listen {
    /// Every listen address with its key (`listen.https`, `listen.http`, `listen.metrics`).
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &SocketAddr)> {
        self.https
            .iter()
            .map(|a| ("listen.https", a))
            .chain(self.http.iter().map(|a| ("listen.http", a)))
            .chain(self.metrics.iter().map(|a| ("listen.metrics", a)))
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub error_log: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Name served to clients that send no SNI.
    pub default_name: Option<Domain>,
    pub key_type: KeyType,
    /// How long a handshake waits for a certificate being issued (the issuance goes on).
    pub issue_timeout: Duration,
    /// Parsed certificates kept in memory.
    pub cache_capacity: u64,
}

/// An allow-list entry from the config: `example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(Domain),
    /// `*.suffix`: any name strictly below `suffix`, at any depth.
    Below(Domain),
}

impl NamePattern {
    pub fn matches(&self, name: &Domain) -> bool {
        match self {
            NamePattern::Exact(d) => d == name,
            NamePattern::Below(suffix) => name.is_strictly_under(suffix),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(d) => write!(f, "{d}"),
            NamePattern::Below(d) => write!(f, "*.{d}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AllowConfig {
    pub platform_domains: Vec<NamePattern>,
    pub database: Option<DatabaseConfig>,
    pub ask: Option<AskConfig>,
    pub allowed_ttl: Duration,
    pub denied_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub query: String,
    /// Every name the database allows (pre-provisioning, `certs warm`); no parameters.
    pub list_query: String,
    /// LISTEN channel for instant tenant changes (`deploy/postgres/notify.sql`).
    pub notify_channel: String,
    /// How often the whole allow-list is read for pre-provisioning (a safety net for NOTIFY).
    pub scan_interval: Duration,
    pub timeout: Duration,
    pub pool_size: usize,
}

#[derive(Debug, Clone)]
pub struct AskConfig {
    pub url: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum IssuerConfig {
    Internal(InternalIssuerConfig),
    Acme(AcmeConfig),
}

#[derive(Debug, Clone)]
pub struct InternalIssuerConfig {
    pub lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: Vec<String>,
    /// A root certificate (PEM) trusted for the directory's own HTTPS, instead of the system's
    /// (Pebble, a private ACME CA).
    pub trusted_root: Option<PathBuf>,
    pub challenges: Vec<ChallengeType>,
    pub profile: Option<String>,
    pub eab: Option<EabConfig>,
    /// Bound on one order, from newOrder to the downloaded certificate.
    pub order_timeout: Duration,
}

/// External Account Binding (RFC 8555 §7.3.4), required by some CAs.
#[derive(Clone)]
pub struct EabConfig {
    pub key_id: String,
    /// The MAC key, base64url-decoded.
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for EabConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EabConfig")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeType {
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone)]
pub struct UpstreamsConfig {
    pub pools: Vec<PoolConfig>,
    /// Index into `pools`.
    pub default_pool: usize,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<SocketAddr>,
    pub selection: Selection,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        host: String,
        expected_status: u16,
    },
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark a backend healthy again.
    pub rise: usize,
    /// Consecutive failures to mark a backend unhealthy.
    pub fall: usize,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Requests whose Host is this name or below it go to `pool`.
    pub suffix: Domain,
    /// Index into `UpstreamsConfig::pools`.
    pub pool: usize,
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) layer: structure only, leaves untyped
// ---------------------------------------------------------------------------------------------

mod raw {
    use super::*;

    type Leaf = Option<Value>;

    #[derive(Deserialize, Default)]
    pub struct File {
        pub data_dir: Leaf,
        #[serde(default)]
        pub listen: Listen,
        #[serde(default)]
        pub server: Server,
        #[serde(default)]
        pub tls: Tls,
        #[serde(default)]
        pub allow: Allow,
        #[serde(default)]
        pub issuer: Issuer,
        #[serde(default)]
        pub upstreams: Upstreams,
        #[serde(default)]
        pub limits: Limits,
        #[serde(default)]
        pub renewal: Renewal,
        #[serde(default)]
        pub provisioning: Provisioning,
        #[serde(default)]
        pub store: Store,
    }

    #[derive(Deserialize, Default)]
    pub struct Store {
        pub shared: Option<Shared>,
    }

    #[derive(Deserialize, Default)]
    pub struct Shared {
        pub url: Leaf,
        pub encryption_key_env: Leaf,
        pub migrate_on_start: Leaf,
        pub lock_lease: Leaf,
        pub timeout: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Renewal {
        pub fraction: Leaf,
        pub check_interval: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Provisioning {
        pub enabled: Leaf,
        pub orders_per_3h: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Limits {
        pub issuance: Option<IssuanceLimits>,
        pub clients: Option<ClientLimits>,
    }

    #[derive(Deserialize, Default)]
    pub struct IssuanceLimits {
        pub interval: Leaf,
        pub burst: Leaf,
        pub max_concurrent: Leaf,
        pub backoff_initial: Leaf,
        pub backoff_max: Leaf,
        pub budget_per_week: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct ClientLimits {
        pub enabled: Leaf,
        pub new_names_burst: Leaf,
        pub new_names_interval: Leaf,
        pub ipv6_prefix_len: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Listen {
        pub https: Leaf,
        pub http: Leaf,
        pub metrics: Leaf,
        pub redirect_https_port: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Server {
        pub threads: Leaf,
        pub grace_period: Leaf,
        pub graceful_shutdown_timeout: Leaf,
        pub pid_file: Leaf,
        pub upgrade_sock: Leaf,
        pub error_log: Leaf,
        pub user: Leaf,
        pub group: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Tls {
        pub default_name: Leaf,
        pub key_type: Leaf,
        pub issue_timeout: Leaf,
        pub cache_capacity: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Allow {
        pub platform_domains: Option<Vec<Value>>,
        pub database: Option<Database>,
        pub ask: Option<Ask>,
        pub allowed_ttl: Leaf,
        pub denied_ttl: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Database {
        pub url: Leaf,
        pub query: Leaf,
        pub list_query: Leaf,
        pub notify_channel: Leaf,
        pub scan_interval: Leaf,
        pub timeout: Leaf,
        pub pool_size: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Ask {
        pub url: Leaf,
        pub timeout: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Issuer {
        pub internal: Option<Internal>,
        pub acme: Option<Acme>,
    }

    #[derive(Deserialize, Default)]
    pub struct Internal {
        pub lifetime: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Acme {
        pub directory: Leaf,
        pub contact: Option<Vec<Value>>,
        pub trusted_root: Leaf,
        pub challenges: Option<Vec<Value>>,
        pub profile: Leaf,
        pub eab: Option<Eab>,
        pub order_timeout: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Eab {
        pub key_id: Leaf,
        pub hmac_key: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Upstreams {
        pub default_pool: Leaf,
        pub pools: Option<BTreeMap<String, Pool>>,
        pub routes: Option<Vec<Route>>,
    }

    #[derive(Deserialize, Default)]
    pub struct Pool {
        pub backends: Option<Vec<Value>>,
        pub selection: Leaf,
        pub connect_timeout: Leaf,
        pub read_timeout: Leaf,
        pub health_check: Option<HealthCheck>,
    }

    #[derive(Deserialize, Default)]
    pub struct HealthCheck {
        #[serde(rename = "type")]
        pub kind: Leaf,
        pub path: Leaf,
        pub host: Leaf,
        pub expected_status: Leaf,
        pub interval: Leaf,
        pub timeout: Leaf,
        pub rise: Leaf,
        pub fall: Leaf,
    }

    #[derive(Deserialize, Default)]
    pub struct Route {
        pub suffix: Leaf,
        pub pool: Leaf,
    }
}

// ---------------------------------------------------------------------------------------------
// Building the typed config, collecting every error
// ---------------------------------------------------------------------------------------------

/// The default allow-list query (DESIGN.md); `$1` is the normalized name.
pub const DEFAULT_ALLOW_QUERY: &str =
    "SELECT 1 FROM companies WHERE active AND dns_names @> ARRAY[$1]::citext[] LIMIT 1";
/// Every allowed name, for pre-provisioning and `certs warm` (one text column).
pub const DEFAULT_LIST_QUERY: &str =
    "SELECT DISTINCT lower(unnest(dns_names)::text) FROM companies WHERE active";
/// The LISTEN channel `deploy/postgres/notify.sql` notifies.
pub const DEFAULT_NOTIFY_CHANNEL: &str = "tenant_edge_domains";
/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

struct Errors<'e> {
    list: &'e mut Vec<ConfigError>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Errors<'_> {
    fn push(&mut self, path: &str, value: Option<&Value>, message: impl Into<String>) {
        self.list.push(ConfigError {
            path: path.to_string(),
            value: value.map(show),
            message: message.into(),
        });
    }

    /// A string leaf, with `${VAR}` expanded.
    fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                self.push(path, Some(v), "expected a string");
                return None;
            }
        };
        self.expand(path, &s)
    }

    fn expand(&mut self, path: &str, s: &str) -> Option<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.push(path, Some(&Value::String(s.into())), "unterminated ${...}");
                return None;
            };
            let name = &after[..end];
            match (self.env)(name) {
                Some(value) => out.push_str(&value),
                None => {
                    self.push(
                        path,
                        None,
                        format!(
                            "environment variable {name} is not set (referenced as ${{{name}}})"
                        ),
                    );
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        let s = match v {
            Value::String(s) => s.trim(),
            Value::Number(_) => {
                self.push(
                    path,
                    Some(v),
                    "a duration needs a unit, for example 5s, 10m, 1h, 90d",
                );
                return None;
            }
            _ => {
                self.push(
                    path,
                    Some(v),
                    "expected a duration such as 5s, 10m, 1h, 90d",
                );
                return None;
            }
        };
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.push(path, Some(v), "must be greater than zero");
                None
            }
            Err(_) => {
                self.push(
                    path,
                    Some(v),
                    "expected a duration such as 5s, 10m, 1h, 90d",
                );
                None
            }
        }
    }

    fn addr(&mut self, path: &str, v: &Value) -> Option<SocketAddr> {
        let s = self.string(path, v)?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    Some(v),
                    "expected IP:port, for example 127.0.0.1:8443 or [::]:443",
                );
                None
            }
        }
    }

    /// One address or a list of them.
    fn addrs(&mut self, path: &str, v: &Value) -> Vec<SocketAddr> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.addr(&format!("{path}[{i}]"), item))
                .collect(),
            _ => self.addr(path, v).into_iter().collect(),
        }
    }

    fn uint(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.push(
                    path,
                    Some(v),
                    format!("expected a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn domain(&mut self, path: &str, v: &Value) -> Option<Domain> {
        let s = self.string(path, v)?;
        match Domain::parse(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(path, Some(v), format!("not a valid DNS name: {e}"));
                None
            }
        }
    }

    fn pattern(&mut self, path: &str, v: &Value) -> Option<NamePattern> {
        let s = self.string(path, v)?;
        if let Some(suffix) = s.strip_prefix("*.") {
            match Domain::parse(suffix) {
                Ok(d) => Some(NamePattern::Below(d)),
                Err(e) => {
                    self.push(
                        path,
                        Some(v),
                        format!("not a valid `*.suffix` pattern: {e}"),
                    );
                    None
                }
            }
        } else {
            match Domain::parse(&s) {
                Ok(d) => Some(NamePattern::Exact(d)),
                Err(e) => {
                    self.push(
                        path,
                        Some(v),
                        format!("expected a DNS name or `*.suffix` pattern: {e}"),
                    );
                    None
                }
            }
        }
    }

    fn url(&mut self, path: &str, v: &Value, schemes: &[&str]) -> Option<String> {
        let s = self.string(path, v)?;
        let ok = schemes.iter().any(|scheme| {
            s.strip_prefix(scheme)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|r| !r.is_empty())
        });
        if ok {
            Some(s)
        } else {
            // Do not echo the value: database URLs carry passwords.
            self.push(
                path,
                None,
                format!("expected a URL starting with {}://", schemes.join("://, ")),
            );
            None
        }
    }

    fn choice<T: Copy>(&mut self, path: &str, v: &Value, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(path, v)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(
                    path,
                    Some(v),
                    format!("expected one of: {}", names.join(", ")),
                );
                None
            }
        }
    }

    fn path(&mut self, path: &str, v: &Value) -> Option<PathBuf> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            self.push(path, Some(v), "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }
}

/// Render a YAML value for an error message, quoted and shortened.
fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    };
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        P::Map { parent, key } => {
            let p = format_ignored(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            format_ignored(parent)
        }
    }
}

impl Config {
    /// Read and validate a file; `Err` lists every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                value: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Config::from_yaml(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Parse a document; `env` resolves `${NAME}` (tests pass a closure, `load` the process env).
    pub fn from_yaml(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut list = Vec::new();
        let mut unknown = Vec::new();
        let de = serde_yaml::Deserializer::from_str(text);
        let parsed: Result<raw::File, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(de, &mut |p: serde_ignored::Path<'_>| {
                unknown.push(format_ignored(&p))
            }),
        );
        let raw = match parsed {
            Ok(raw) => raw,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // An empty document is an empty config, reported field by field below.
                if text.trim().is_empty() || inner.contains("EOF while parsing") {
                    raw::File::default()
                } else {
                    let path = if path == "." { String::new() } else { path };
                    return Err(ConfigErrors {
                        file: file.into(),
                        errors: vec![ConfigError {
                            path,
                            value: None,
                            message: inner,
                        }],
                    });
                }
            }
        };
        for path in unknown {
            list.push(ConfigError {
                path,
                value: None,
                message: "unknown key (check the spelling against conf/production.yaml)".into(),
            });
        }
        let config = {
            let mut errs = Errors {
                list: &mut list,
                env,
            };
            build(&raw, &mut errs)
        };
        match config {
            Some(c) if list.is_empty() => Ok(c),
            _ => Err(ConfigErrors {
                file: file.into(),
                errors: list,
            }),
        }
    }
}

fn build(raw: &raw::File, errs: &mut Errors<'_>) -> Option<Config> {
    let data_dir = match &raw.data_dir {
        Some(v) => errs.path("data_dir", v),
        None => {
            errs.push(
                "data_dir",
                None,
                "is required (where certificates and the CA live)",
            );
            None
        }
    };

    // listen
    let https = match &raw.listen.https {
        Some(v) => errs.addrs("listen.https", v),
        None => {
            errs.push(
                "listen.https",
                None,
                "is required (for example 0.0.0.0:443)",
            );
            Vec::new()
        }
    };
    let http = raw
        .listen
        .http
        .as_ref()
        .map(|v| errs.addrs("listen.http", v))
        .unwrap_or_default();
    let metrics = raw
        .listen
        .metrics
        .as_ref()
        .and_then(|v| errs.addr("listen.metrics", v));
    let redirect_https_port = match &raw.listen.redirect_https_port {
        Some(v) => errs
            .uint("listen.redirect_https_port", v, 1, 65535)
            .map(|p| p as u16),
        None => Some(https.first().map(|a| a.port()).unwrap_or(443)),
    };
    let all = https
        .iter()
        .map(|a| ("listen.https", a))
        .chain(http.iter().map(|a| ("listen.http", a)))
        .chain(metrics.iter().map(|a| ("listen.metrics", a)));
    let mut seen = Vec::new();
    for (key, a) in all {
        if seen.contains(a) {
            errs.push(
                key,
                Some(&Value::String(a.to_string())),
                "address is used by another listener",
            );
        }
        seen.push(*a);
    }

    // server
    let s = &raw.server;
    let threads = s.threads.as_ref().map_or(Some(default_threads()), |v| {
        errs.uint("server.threads", v, 1, 1024).map(|n| n as usize)
    });
    let grace_period = opt_duration(errs, "server.grace_period", &s.grace_period, secs(5));
    let graceful_shutdown_timeout = opt_duration(
        errs,
        "server.graceful_shutdown_timeout",
        &s.graceful_shutdown_timeout,
        secs(5),
    );
    let pid_file = s
        .pid_file
        .as_ref()
        .map_or(Some("/tmp/tenant-edge.pid".into()), |v| {
            errs.path("server.pid_file", v)
        });
    let upgrade_sock = s
        .upgrade_sock
        .as_ref()
        .map_or(Some("/tmp/tenant-edge-upgrade.sock".into()), |v| {
            errs.path("server.upgrade_sock", v)
        });
    let error_log = s
        .error_log
        .as_ref()
        .and_then(|v| errs.path("server.error_log", v));
    let user = s.user.as_ref().and_then(|v| errs.string("server.user", v));
    let group = s
        .group
        .as_ref()
        .and_then(|v| errs.string("server.group", v));

    // tls
    let t = &raw.tls;
    let default_name = t.default_name.as_ref().and_then(|v| match v {
        Value::Null => None,
        v => errs.domain("tls.default_name", v),
    });
    let key_type = t.key_type.as_ref().map_or(Some(KeyType::EcdsaP256), |v| {
        errs.choice(
            "tls.key_type",
            v,
            &[
                ("ecdsa_p256", KeyType::EcdsaP256),
                ("rsa2048", KeyType::Rsa2048),
            ],
        )
    });
    let issue_timeout = opt_duration(errs, "tls.issue_timeout", &t.issue_timeout, secs(10));
    if let Some(d) = issue_timeout {
        if d >= secs(50) {
            errs.push(
                "tls.issue_timeout",
                t.issue_timeout.as_ref(),
                "must be under 50s: Pingora aborts a TLS handshake after 60s",
            );
        }
    }
    let cache_capacity = t.cache_capacity.as_ref().map_or(Some(100_000), |v| {
        errs.uint("tls.cache_capacity", v, 1, 100_000_000)
    });

    // allow
    let a = &raw.allow;
    let platform_domains: Vec<NamePattern> = a
        .platform_domains
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| errs.pattern(&format!("allow.platform_domains[{i}]"), v))
        .collect();
    let database = a.database.as_ref().and_then(|d| {
        let url = match &d.url {
            Some(v) => errs.url("allow.database.url", v, &["postgres", "postgresql"]),
            None => {
                errs.push(
                    "allow.database.url",
                    None,
                    "is required, for example ${DATABASE_URL}",
                );
                None
            }
        };
        let query = d
            .query
            .as_ref()
            .map_or(Some(DEFAULT_ALLOW_QUERY.to_string()), |v| {
                let q = errs.string("allow.database.query", v)?;
                if !q.contains("$1") {
                    errs.push(
                        "allow.database.query",
                        Some(v),
                        "must use $1 for the name being checked",
                    );
                    return None;
                }
                Some(q)
            });
        let timeout = opt_duration(errs, "allow.database.timeout", &d.timeout, secs(2));
        let pool_size = d.pool_size.as_ref().map_or(Some(4), |v| {
            errs.uint("allow.database.pool_size", v, 1, 256)
                .map(|n| n as usize)
        });
        let list_query = d
            .list_query
            .as_ref()
            .map_or(Some(DEFAULT_LIST_QUERY.to_string()), |v| {
                errs.string("allow.database.list_query", v)
            });
        let notify_channel =
            d.notify_channel
                .as_ref()
                .map_or(Some(DEFAULT_NOTIFY_CHANNEL.to_string()), |v| {
                    let c = errs.string("allow.database.notify_channel", v)?;
                    let ok = !c.is_empty()
                        && c.len() <= 63
                        && c.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                        && !c.as_bytes()[0].is_ascii_digit();
                    if !ok {
                        errs.push(
                            "allow.database.notify_channel",
                            Some(v),
                            "expected a lowercase SQL identifier such as tenant_edge_domains",
                        );
                        return None;
                    }
                    Some(c)
                });
        let scan_interval = opt_duration(
            errs,
            "allow.database.scan_interval",
            &d.scan_interval,
            secs(600),
        );
        Some(DatabaseConfig {
            url: url?,
            query: query?,
            list_query: list_query?,
            notify_channel: notify_channel?,
            scan_interval: scan_interval?,
            timeout: timeout?,
            pool_size: pool_size?,
        })
    });
    let ask = a.ask.as_ref().and_then(|k| {
        let url = match &k.url {
            Some(v) => errs.url("allow.ask.url", v, &["http", "https"]),
            None => {
                errs.push("allow.ask.url", None, "is required");
                None
            }
        };
        let timeout = opt_duration(errs, "allow.ask.timeout", &k.timeout, secs(2));
        Some(AskConfig {
            url: url?,
            timeout: timeout?,
        })
    });
    let allowed_ttl = opt_duration(errs, "allow.allowed_ttl", &a.allowed_ttl, secs(3600));
    let denied_ttl = opt_duration(errs, "allow.denied_ttl", &a.denied_ttl, secs(60));
    if platform_domains.is_empty() && database.is_none() && ask.is_none() && errs.list.is_empty() {
        errs.push(
            "allow",
            None,
            "allows nothing: set platform_domains, database or ask (otherwise every handshake is refused)",
        );
    }

    // issuer
    let issuer = match (&raw.issuer.internal, &raw.issuer.acme) {
        (Some(_), Some(_)) => {
            errs.push(
                "issuer",
                None,
                "set exactly one of issuer.internal and issuer.acme",
            );
            None
        }
        (None, Some(acme)) => build_acme(acme, errs).map(IssuerConfig::Acme),
        (internal, None) => {
            let lifetime = internal
                .as_ref()
                .and_then(|i| i.lifetime.as_ref())
                .map_or(Some(secs(30 * 86400)), |v| {
                    errs.duration("issuer.internal.lifetime", v)
                });
            if let Some(l) = lifetime {
                if l < secs(120) {
                    errs.push(
                        "issuer.internal.lifetime",
                        None,
                        format!(
                            "must be at least 2m (got {})",
                            humantime::format_duration(l)
                        ),
                    );
                }
            }
            lifetime.map(|lifetime| IssuerConfig::Internal(InternalIssuerConfig { lifetime }))
        }
    };

    let upstreams = build_upstreams(&raw.upstreams, errs);
    let limits = build_limits(&raw.limits, errs);
    let fraction = match &raw.renewal.fraction {
        None => Some(1.0 / 3.0),
        Some(v) => match v.as_f64() {
            Some(f) if f > 0.0 && f < 1.0 => Some(f),
            _ => {
                errs.push(
                    "renewal.fraction",
                    Some(v),
                    "expected a number between 0 and 1, such as 0.33",
                );
                None
            }
        },
    };
    let check_interval = opt_duration(
        errs,
        "renewal.check_interval",
        &raw.renewal.check_interval,
        secs(300),
    );
    let provisioning_enabled = match &raw.provisioning.enabled {
        None => Some(true),
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            errs.push("provisioning.enabled", Some(v), "expected true or false");
            None
        }
    };
    let shared_store = match &raw.store.shared {
        None => Some(None),
        Some(sh) => build_shared(sh, errs).map(Some),
    };
    let orders_per_3h = raw
        .provisioning
        .orders_per_3h
        .as_ref()
        .map_or(Some(300), |v| {
            errs.uint("provisioning.orders_per_3h", v, 1, 1_000_000)
                .map(|n| n as u32)
        });

    Some(Config {
        data_dir: data_dir?,
        listen: Listen {
            https,
            http,
            metrics,
            redirect_https_port: redirect_https_port?,
        },
        server: ServerSettings {
            threads: threads?,
            grace_period: grace_period?,
            graceful_shutdown_timeout: graceful_shutdown_timeout?,
            pid_file: pid_file?,
            upgrade_sock: upgrade_sock?,
            error_log,
            user,
            group,
        },
        tls: TlsSettings {
            default_name,
            key_type: key_type?,
            issue_timeout: issue_timeout?,
            cache_capacity: cache_capacity?,
        },
        allow: AllowConfig {
            platform_domains,
            database,
            ask,
            allowed_ttl: allowed_ttl?,
            denied_ttl: denied_ttl?,
        },
        issuer: issuer?,
        upstreams: upstreams?,
        limits: limits?,
        renewal: RenewalConfig {
            fraction: fraction?,
            check_interval: check_interval?,
        },
        shared_store: shared_store?,
        provisioning: ProvisioningConfig {
            enabled: provisioning_enabled?,
            orders_per_3h: orders_per_3h?,
        },
    })
}

fn build_shared(sh: &raw::Shared, errs: &mut Errors<'_>) -> Option<SharedStoreConfig> {
    let url = match &sh.url {
        Some(v) => errs.url("store.shared.url", v, &["postgres", "postgresql"]),
        None => {
            errs.push(
                "store.shared.url",
                None,
                "is required, for example ${DATABASE_URL}",
            );
            None
        }
    };
    let encryption_key = match &sh.encryption_key_env {
        None => Some(None),
        Some(v) => errs.string("store.shared.encryption_key_env", v).and_then(|var| {
            match (errs.env)(&var) {
                None => {
                    errs.push("store.shared.encryption_key_env", Some(v), format!("environment variable {var} is not set"));
                    None
                }
                Some(value) => match base64url_decode(&value) {
                    Some(bytes) if bytes.len() == 32 => {
                        let mut key = [0u8; 32];
                        key.copy_from_slice(&bytes);
                        Some(Some(key))
                    }
                    _ => {
                        errs.push(
                            "store.shared.encryption_key_env",
                            Some(v),
                            format!("{var} must hold 32 bytes in base64 (generate one with `openssl rand -base64 32`)"),
                        );
                        None
                    }
                },
            }
        }),
    };
    let migrate_on_start = match &sh.migrate_on_start {
        None => Some(true),
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            errs.push(
                "store.shared.migrate_on_start",
                Some(v),
                "expected true or false",
            );
            None
        }
    };
    let lock_lease = opt_duration(errs, "store.shared.lock_lease", &sh.lock_lease, secs(120));
    let timeout = opt_duration(errs, "store.shared.timeout", &sh.timeout, secs(5));
    Some(SharedStoreConfig {
        url: url?,
        encryption_key: encryption_key?,
        migrate_on_start: migrate_on_start?,
        lock_lease: lock_lease?,
        timeout: timeout?,
    })
}

/// A duration that may also be `off` (zero: the limit is disabled).
fn duration_or_off(
    errs: &mut Errors<'_>,
    path: &str,
    v: &Option<Value>,
    default: Duration,
) -> Option<Duration> {
    match v {
        Some(Value::String(s)) if s.trim() == "off" => Some(Duration::ZERO),
        Some(Value::Bool(false)) => Some(Duration::ZERO),
        other => opt_duration(errs, path, other, default),
    }
}

fn build_limits(raw: &raw::Limits, errs: &mut Errors<'_>) -> Option<LimitsConfig> {
    let mut ok = true;
    let mut issuance = crate::limits::LimitSettings::default();
    if let Some(i) = &raw.issuance {
        let base = "limits.issuance";
        let d = issuance.clone();
        let interval = duration_or_off(errs, &format!("{base}.interval"), &i.interval, d.interval);
        let burst = i.burst.as_ref().map_or(Some(d.burst), |v| {
            errs.uint(&format!("{base}.burst"), v, 1, 1_000_000)
                .map(|n| n as u32)
        });
        let max_concurrent = i
            .max_concurrent
            .as_ref()
            .map_or(Some(d.max_concurrent), |v| {
                errs.uint(&format!("{base}.max_concurrent"), v, 1, 10_000)
                    .map(|n| n as usize)
            });
        let backoff_initial = duration_or_off(
            errs,
            &format!("{base}.backoff_initial"),
            &i.backoff_initial,
            d.backoff_initial,
        );
        let backoff_max = opt_duration(
            errs,
            &format!("{base}.backoff_max"),
            &i.backoff_max,
            d.backoff_max,
        );
        let budget_per_week = match &i.budget_per_week {
            None => Some(d.budget_per_week),
            Some(Value::String(s)) if s.trim() == "off" => Some(None),
            Some(Value::Bool(false)) => Some(None),
            Some(v) => errs
                .uint(&format!("{base}.budget_per_week"), v, 1, 1_000_000)
                .map(|n| Some(n as u32)),
        };
        match (
            interval,
            burst,
            max_concurrent,
            backoff_initial,
            backoff_max,
            budget_per_week,
        ) {
            (
                Some(interval),
                Some(burst),
                Some(max_concurrent),
                Some(backoff_initial),
                Some(backoff_max),
                Some(budget_per_week),
            ) => {
                issuance = crate::limits::LimitSettings {
                    interval,
                    burst,
                    max_concurrent,
                    backoff_initial,
                    backoff_max,
                    budget_per_week,
                    ..d
                };
                for (field, message) in issuance.validate() {
                    errs.push(&format!("{base}.{field}"), None, message);
                    ok = false;
                }
            }
            _ => ok = false,
        }
    }
    let mut clients = Some(crate::client_gate::ClientGateSettings::default());
    if let Some(c) = &raw.clients {
        let base = "limits.clients";
        let d = crate::client_gate::ClientGateSettings::default();
        let enabled = match &c.enabled {
            None => Some(true),
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                errs.push(
                    &format!("{base}.enabled"),
                    Some(v),
                    "expected true or false",
                );
                None
            }
        };
        let burst = c.new_names_burst.as_ref().map_or(Some(d.burst), |v| {
            errs.uint(&format!("{base}.new_names_burst"), v, 1, 1_000_000)
                .map(|n| n as u32)
        });
        let refill_interval = opt_duration(
            errs,
            &format!("{base}.new_names_interval"),
            &c.new_names_interval,
            d.refill_interval,
        );
        let ipv6_prefix_len = c
            .ipv6_prefix_len
            .as_ref()
            .map_or(Some(d.ipv6_prefix_len), |v| {
                errs.uint(&format!("{base}.ipv6_prefix_len"), v, 1, 128)
                    .map(|n| n as u8)
            });
        clients = match (enabled, burst, refill_interval, ipv6_prefix_len) {
            (Some(false), ..) => None,
            (Some(true), Some(burst), Some(refill_interval), Some(ipv6_prefix_len)) => {
                let settings = crate::client_gate::ClientGateSettings {
                    burst,
                    refill_interval,
                    ipv6_prefix_len,
                    ..d
                };
                for (field, message) in settings.validate() {
                    errs.push(&format!("{base}.{field}"), None, message);
                    ok = false;
                }
                Some(settings)
            }
            _ => {
                ok = false;
                None
            }
        };
    }
    ok.then_some(LimitsConfig { issuance, clients })
}

fn build_acme(acme: &raw::Acme, errs: &mut Errors<'_>) -> Option<AcmeConfig> {
    let directory = acme
        .directory
        .as_ref()
        .map_or(Some(LETS_ENCRYPT_DIRECTORY.into()), |v| {
            errs.url("issuer.acme.directory", v, &["https", "http"])
        });
    let contact: Vec<String> = acme
        .contact
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| {
            let path = format!("issuer.acme.contact[{i}]");
            let s = errs.string(&path, v)?;
            let addr = s.strip_prefix("mailto:").unwrap_or(&s);
            let valid = addr
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && Domain::parse(host).is_ok());
            if !valid {
                errs.push(&path, Some(v), "expected an e-mail address");
                return None;
            }
            Some(format!("mailto:{addr}"))
        })
        .collect();
    let trusted_root = acme
        .trusted_root
        .as_ref()
        .and_then(|v| errs.path("issuer.acme.trusted_root", v));
    let challenges: Vec<ChallengeType> = match &acme.challenges {
        None => vec![ChallengeType::TlsAlpn01, ChallengeType::Http01],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                errs.choice(
                    &format!("issuer.acme.challenges[{i}]"),
                    v,
                    &[
                        ("http-01", ChallengeType::Http01),
                        ("tls-alpn-01", ChallengeType::TlsAlpn01),
                    ],
                )
            })
            .collect(),
    };
    if challenges.is_empty() {
        errs.push(
            "issuer.acme.challenges",
            None,
            "must list at least one of http-01, tls-alpn-01",
        );
    }
    let profile = acme
        .profile
        .as_ref()
        .and_then(|v| errs.string("issuer.acme.profile", v));
    let eab = acme.eab.as_ref().and_then(|e| {
        let key_id = match &e.key_id {
            Some(v) => errs.string("issuer.acme.eab.key_id", v),
            None => {
                errs.push(
                    "issuer.acme.eab.key_id",
                    None,
                    "is required (the CA's key identifier)",
                );
                None
            }
        };
        let hmac_key = match &e.hmac_key {
            Some(v) => errs.string("issuer.acme.eab.hmac_key", v).and_then(|k| {
                match base64url_decode(&k) {
                    Some(bytes) if !bytes.is_empty() => Some(bytes),
                    _ => {
                        // Never echo a secret.
                        errs.push(
                            "issuer.acme.eab.hmac_key",
                            None,
                            "expected the base64url MAC key the CA gave you",
                        );
                        None
                    }
                }
            }),
            None => {
                errs.push(
                    "issuer.acme.eab.hmac_key",
                    None,
                    "is required, for example ${ACME_EAB_HMAC_KEY}",
                );
                None
            }
        };
        Some(EabConfig {
            key_id: key_id?,
            hmac_key: hmac_key?,
        })
    });
    let order_timeout = opt_duration(
        errs,
        "issuer.acme.order_timeout",
        &acme.order_timeout,
        secs(90),
    );
    Some(AcmeConfig {
        directory: directory?,
        contact,
        trusted_root,
        challenges,
        profile,
        eab,
        order_timeout: order_timeout?,
    })
}

fn build_upstreams(raw: &raw::Upstreams, errs: &mut Errors<'_>) -> Option<UpstreamsConfig> {
    let mut pools = Vec::new();
    let mut ok = true;
    match &raw.pools {
        None => {
            errs.push(
                "upstreams.pools",
                None,
                "is required: at least one pool of backends (kamal-proxy)",
            );
            ok = false;
        }
        Some(map) if map.is_empty() => {
            errs.push("upstreams.pools", None, "must define at least one pool");
            ok = false;
        }
        Some(map) => {
            for (name, p) in map {
                match build_pool(name, p, errs) {
                    Some(pool) => pools.push(pool),
                    None => ok = false,
                }
            }
        }
    }
    let names: Vec<&str> = raw
        .pools
        .iter()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let pool_index = |errs: &mut Errors<'_>, path: &str, v: &Value| -> Option<usize> {
        let name = errs.string(path, v)?;
        match names.iter().position(|n| *n == name) {
            Some(i) => Some(i),
            None => {
                errs.push(
                    path,
                    Some(v),
                    format!("no such pool; defined pools: {}", names.join(", ")),
                );
                None
            }
        }
    };
    let default_pool = match &raw.default_pool {
        Some(v) => pool_index(errs, "upstreams.default_pool", v),
        None if names.len() == 1 => Some(0),
        None if names.is_empty() => None,
        None => {
            errs.push(
                "upstreams.default_pool",
                None,
                "is required when there is more than one pool",
            );
            None
        }
    };
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().flatten().enumerate() {
        let suffix = match &r.suffix {
            Some(v) => errs.domain(&format!("upstreams.routes[{i}].suffix"), v),
            None => {
                errs.push(
                    &format!("upstreams.routes[{i}].suffix"),
                    None,
                    "is required",
                );
                None
            }
        };
        let pool = match &r.pool {
            Some(v) => pool_index(errs, &format!("upstreams.routes[{i}].pool"), v),
            None => {
                errs.push(&format!("upstreams.routes[{i}].pool"), None, "is required");
                None
            }
        };
        if let (Some(suffix), Some(pool)) = (suffix, pool) {
            routes.push(RouteConfig { suffix, pool });
        } else {
            ok = false;
        }
    }
    // Longest suffix first, so `a.b.example` beats `b.example`.
    routes.sort_by_key(|r| std::cmp::Reverse(r.suffix.as_str().len()));
    if !ok {
        return None;
    }
    Some(UpstreamsConfig {
        pools,
        default_pool: default_pool?,
        routes,
    })
}

fn build_pool(name: &str, p: &raw::Pool, errs: &mut Errors<'_>) -> Option<PoolConfig> {
    let base = format!("upstreams.pools.{name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        errs.push(
            &base,
            None,
            "pool names use letters, digits, '-' and '_' only",
        );
    }
    let backends: Vec<SocketAddr> = match &p.backends {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| errs.addr(&format!("{base}.backends[{i}]"), v))
            .collect(),
        _ => {
            errs.push(
                &format!("{base}.backends"),
                None,
                "needs at least one IP:port (kamal-proxy, e.g. 127.0.0.1:8080)",
            );
            Vec::new()
        }
    };
    let selection = p
        .selection
        .as_ref()
        .map_or(Some(Selection::RoundRobin), |v| {
            errs.choice(
                &format!("{base}.selection"),
                v,
                &[
                    ("round_robin", Selection::RoundRobin),
                    ("consistent_hash", Selection::ConsistentHash),
                ],
            )
        });
    let connect_timeout = opt_duration(
        errs,
        &format!("{base}.connect_timeout"),
        &p.connect_timeout,
        secs(2),
    );
    let read_timeout = opt_duration(
        errs,
        &format!("{base}.read_timeout"),
        &p.read_timeout,
        secs(60),
    );
    let health_check = match &p.health_check {
        None => Some(None),
        Some(h) => build_health_check(&format!("{base}.health_check"), h, errs).map(Some),
    };
    if backends.is_empty() {
        return None;
    }
    Some(PoolConfig {
        name: name.to_string(),
        backends,
        selection: selection?,
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
        health_check: health_check?,
    })
}

fn build_health_check(
    base: &str,
    h: &raw::HealthCheck,
    errs: &mut Errors<'_>,
) -> Option<HealthCheckConfig> {
    #[derive(Clone, Copy)]
    enum K {
        Tcp,
        Http,
    }
    let kind = h.kind.as_ref().map_or(Some(K::Http), |v| {
        errs.choice(
            &format!("{base}.type"),
            v,
            &[("http", K::Http), ("tcp", K::Tcp)],
        )
    });
    let interval = opt_duration(errs, &format!("{base}.interval"), &h.interval, secs(5));
    let timeout = opt_duration(errs, &format!("{base}.timeout"), &h.timeout, secs(1));
    let rise = h.rise.as_ref().map_or(Some(1), |v| {
        errs.uint(&format!("{base}.rise"), v, 1, 100)
            .map(|n| n as usize)
    });
    let fall = h.fall.as_ref().map_or(Some(1), |v| {
        errs.uint(&format!("{base}.fall"), v, 1, 100)
            .map(|n| n as usize)
    });
    let kind = match kind? {
        K::Tcp => {
            for (key, v) in [
                ("path", &h.path),
                ("host", &h.host),
                ("expected_status", &h.expected_status),
            ] {
                if v.is_some() {
                    errs.push(
                        &format!("{base}.{key}"),
                        v.as_ref(),
                        "only applies to type: http",
                    );
                }
            }
            HealthCheckKind::Tcp
        }
        K::Http => {
            let path = h.path.as_ref().map_or(Some("/up".to_string()), |v| {
                let p = errs.string(&format!("{base}.path"), v)?;
                if !p.starts_with('/')
                    || p.bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    errs.push(
                        &format!("{base}.path"),
                        Some(v),
                        "expected an absolute path such as /up",
                    );
                    return None;
                }
                Some(p)
            });
            let host = h.host.as_ref().map_or(Some("localhost".to_string()), |v| {
                errs.domain(&format!("{base}.host"), v)
                    .map(|d| d.to_string())
            });
            let expected_status = h.expected_status.as_ref().map_or(Some(200), |v| {
                errs.uint(&format!("{base}.expected_status"), v, 100, 599)
                    .map(|n| n as u16)
            });
            HealthCheckKind::Http {
                path: path?,
                host: host?,
                expected_status: expected_status?,
            }
        }
    };
    Some(HealthCheckConfig {
        kind,
        interval: interval?,
        timeout: timeout?,
        rise: rise?,
        fall: fall?,
    })
}

/// Decode base64url (padding optional); `None` on any invalid character.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn opt_duration(
    errs: &mut Errors<'_>,
    path: &str,
    v: &Option<Value>,
    default: Duration,
) -> Option<Duration> {
    match v {
        Some(v) => errs.duration(path, v),
        None => Some(default),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

#[cfg(test)]
mod tests;
