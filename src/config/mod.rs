//! The configuration file: one YAML document, parsed into typed values once.
//!
//! Parsing is two-step so that *every* problem is reported at once, each with its key path and
//! the bad value: serde reads the document into `raw` structs whose leaves are untyped YAML
//! values (unknown keys are collected by `serde_ignored`, not stopped at), then each section's
//! `build` converts its leaves into the settings types the feature modules own (`values` reads
//! one leaf) and collects the errors. Nothing else in the crate sees a raw string from the file,
//! and no module below this one imports it: features take their own settings types.
//!
//! Sections, one file each: `listen`, `server`, `tls`, `allow`, `issuer`, `upstreams`,
//! `limits`, `renewal` (with `provisioning`), `store`, `timeouts`, `forwarding`.
//!
//! Secrets may come from the environment: any string value may contain `${NAME}`, which is
//! replaced by the variable's value (a missing variable is an error naming it and the key).

pub mod access_log;
pub mod allow;
pub mod errors;
pub mod forwarding;
pub mod issuer;
pub mod limits;
pub mod listen;
pub mod raw;
pub mod renewal;
pub mod server;
pub mod store;
pub mod timeouts;
pub mod tls;
pub mod upstreams;
pub mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::allow::AllowSettings;
use crate::certs::maintain::{ProvisioningSettings, RenewalSettings};
use crate::certs::manager::HandshakeSettings;
use crate::config::errors::{ConfigError, ConfigErrors};
use crate::config::issuer::IssuerConfig;
use crate::config::limits::LimitsConfig;
use crate::config::listen::Listen;
use crate::config::server::ServerSettings;
use crate::config::values::{format_ignored, Errors};
use crate::http::forwarded::ForwardingSettings;
use crate::http::timeouts::TimeoutSettings;
use crate::http::upstream::UpstreamsSettings;
use crate::logging::access::AccessLogSettings;
use crate::shared::SharedSettings;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where state lives (see README "Data directory").
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub server: ServerSettings,
    pub tls: HandshakeSettings,
    pub allow: AllowSettings,
    pub issuer: IssuerConfig,
    pub upstreams: UpstreamsSettings,
    pub limits: LimitsConfig,
    pub renewal: RenewalSettings,
    pub provisioning: ProvisioningSettings,
    /// `None`: one host, the disk store alone.
    pub shared_store: Option<SharedSettings>,
    pub timeouts: TimeoutSettings,
    pub forwarding: ForwardingSettings,
    /// How long a trusted balancer may take to send its PROXY protocol header.
    pub proxy_protocol_timeout: Duration,
    pub access_log: AccessLogSettings,
}

impl Config {
    /// Read and validate a file; `Err` lists every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::read(path, None)
    }

    /// Read, parse (with `missing`: unset variables noted there, not errors) and make the
    /// paths absolute.
    fn read(path: &Path, missing: Option<&mut Vec<String>>) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                value: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        let mut config = Config::parse(&text, &file, &|name| std::env::var(name).ok(), missing)?;
        // Relative paths mean "from where the edge was started", also after `run -d`, whose
        // daemon changes to `/`.
        if let Ok(cwd) = std::env::current_dir() {
            config.make_paths_absolute(&cwd);
        }
        Ok(config)
    }

    /// Resolve every relative path of the file against `base`.
    pub fn make_paths_absolute(&mut self, base: &Path) {
        let abs = |p: &mut std::path::PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data_dir);
        abs(&mut self.server.pid_file);
        abs(&mut self.server.upgrade_sock);
        if let Some(p) = &mut self.server.error_log {
            abs(p);
        }
        if let crate::logging::access::LogTarget::File(p) = &mut self.access_log.target {
            abs(p);
        }
        if let Some(p) = self
            .allow
            .database
            .as_mut()
            .and_then(|d| d.tls_root.as_mut())
        {
            abs(p);
        }
        if let Some(p) = self.shared_store.as_mut().and_then(|s| s.tls_root.as_mut()) {
            abs(p);
        }
        if let IssuerConfig::Acme(acme) = &mut self.issuer {
            if let Some(p) = &mut acme.trusted_root {
                abs(p);
            }
        }
    }

    /// Parse a document; `env` resolves `${NAME}` (tests pass a closure, `load` the process env).
    pub fn from_yaml(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        Config::parse(text, file, env, None)
    }

    /// `load` for commands that use no secret (`certs list`, `show`, `remove`,
    /// `import-caddy`): a variable that is not set is no error. Returns the names of the
    /// variables that were not set.
    pub fn load_without_secrets(path: &Path) -> Result<(Config, Vec<String>), ConfigErrors> {
        let mut missing = Vec::new();
        let config = Config::read(path, Some(&mut missing))?;
        missing.sort();
        missing.dedup();
        Ok((config, missing))
    }

    fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
        missing: Option<&mut Vec<String>>,
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
                missing,
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

/// Certificates the internal CA signs at once unless `limits.issuance.max_concurrent` says.
const INTERNAL_CA_CONCURRENCY: usize = 64;

/// Every section, in document order (errors come out in that order).
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
    let listen = listen::build(&raw.listen, errs);
    let server = server::build(&raw.server, errs);
    let tls = tls::build(&raw.tls, errs);
    let allow = allow::build(&raw.allow, errs);
    let issuer = issuer::build(&raw.issuer, errs);
    let upstreams = upstreams::build(&raw.upstreams, errs);
    let mut limits = limits::build(&raw.limits, errs);
    // The issuance limits model a public CA's limits on one account (Let's Encrypt's rates and
    // budgets); the internal CA signs locally, so unless the file asks, it gets no rate limit,
    // no budgets and a generous concurrency cap (signing is CPU only).
    if let (Some(IssuerConfig::Internal(_)), Some(l)) = (&issuer, &mut limits) {
        let asked = raw.limits.issuance.as_ref();
        let set = |f: fn(&raw::IssuanceLimits) -> bool| asked.is_some_and(f);
        if !set(|i| i.orders_per_3h.is_some()) {
            l.issuance.account = None;
        }
        if !set(|i| i.interval.is_some()) {
            l.issuance.interval = Duration::ZERO;
        }
        if !set(|i| i.budget_per_week.is_some()) {
            l.issuance.budget_per_week = None;
        }
        if !set(|i| i.max_concurrent.is_some()) {
            l.issuance.max_concurrent = INTERNAL_CA_CONCURRENCY;
        }
    }
    let renewal = renewal::build_renewal(&raw.renewal, errs);
    let provisioning = renewal::build_provisioning(&raw.provisioning, errs);
    let shared_store = match &raw.store.shared {
        None => Some(None),
        Some(sh) => store::build(sh, errs).map(Some),
    };
    let timeouts = timeouts::build(&raw.timeouts, errs);
    let forwarding = forwarding::build(&raw.forwarding, errs);
    if let (Some(l), Some((f, _))) = (&listen, &forwarding) {
        if !l.proxy_protocol.is_empty() && f.trusted_proxies.is_empty() {
            errs.push(
                "forwarding.trusted_proxies",
                None,
                "is required with proxy_protocol listeners: the load balancers allowed to send PROXY headers",
            );
        }
    }
    let (forwarding, proxy_protocol_timeout) = forwarding.unzip();
    let access_log = access_log::build(&raw.access_log, errs);
    let data_dir = data_dir?;
    let mut server = server?;
    if server.pid_file.as_os_str().is_empty() {
        server.pid_file = data_dir.join("tenant-edge.pid");
    }
    if server.upgrade_sock.as_os_str().is_empty() {
        server.upgrade_sock = data_dir.join("upgrade.sock");
    }
    Some(Config {
        data_dir,
        listen: listen?,
        server,
        tls: tls?,
        allow: allow?,
        issuer: issuer?,
        upstreams: upstreams?,
        limits: limits?,
        renewal: renewal?,
        provisioning: provisioning?,
        shared_store: shared_store?,
        timeouts: timeouts?,
        forwarding: forwarding?,
        proxy_protocol_timeout: proxy_protocol_timeout?,
        access_log: access_log?,
    })
}

#[cfg(test)]
mod tests;
