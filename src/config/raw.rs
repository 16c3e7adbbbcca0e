//! The serde layer: the file's structure, leaves untyped. Unknown keys are collected by
//! `serde_ignored` (in `config::Config::from_yaml`), not stopped at, so that every error is
//! reported at once; `config::values` turns the leaves into types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

/// A leaf: any YAML value, or absent.
pub type Leaf = Option<Value>;

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
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub access_log: AccessLog,
}

#[derive(Deserialize, Default)]
pub struct AccessLog {
    pub enabled: Leaf,
    pub path: Leaf,
    pub sample: Leaf,
    pub query: Leaf,
    pub refusals_per_second: Leaf,
}

#[derive(Deserialize, Default)]
pub struct Timeouts {
    pub header: Leaf,
    pub idle: Leaf,
    pub h2_idle: Leaf,
    pub h2_preface: Leaf,
    pub body: Leaf,
    pub body_min_rate: Leaf,
    pub send: Leaf,
    pub tcp_keepalive: Leaf,
}

#[derive(Deserialize, Default)]
pub struct Forwarding {
    pub trusted_proxies: Option<Vec<Value>>,
    pub proxy_protocol_timeout: Leaf,
}

#[derive(Deserialize, Default)]
pub struct ConnectionLimits {
    pub max: Leaf,
    pub per_client: Leaf,
    pub ipv6_prefix_len: Leaf,
    pub h2_streams: Leaf,
    pub requests_per_connection: Leaf,
    pub resets_per_connection: Leaf,
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
    pub notify_probe: Leaf,
    pub tls_root: Leaf,
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
    pub connections: Option<ConnectionLimits>,
}

#[derive(Deserialize, Default)]
pub struct IssuanceLimits {
    pub interval: Leaf,
    pub burst: Leaf,
    pub max_concurrent: Leaf,
    pub backoff_initial: Leaf,
    pub backoff_max: Leaf,
    pub budget_per_week: Leaf,
    pub orders_per_3h: Leaf,
    pub renewal_reserve: Leaf,
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
    pub ticket_key_rotation: Leaf,
}

#[derive(Deserialize, Default)]
pub struct Allow {
    pub platform_domains: Option<Vec<Value>>,
    pub database: Option<Database>,
    pub ask: Option<Ask>,
    pub allowed_ttl: Leaf,
    pub denied_ttl: Leaf,
    pub stale_ttl: Leaf,
}

#[derive(Deserialize, Default)]
pub struct Database {
    pub url: Leaf,
    pub query: Leaf,
    pub list_query: Leaf,
    pub notify_channel: Leaf,
    pub scan_interval: Leaf,
    pub notify_probe: Leaf,
    pub timeout: Leaf,
    pub pool_size: Leaf,
    pub circuit_failures: Leaf,
    pub circuit_probe: Leaf,
    pub tls_root: Leaf,
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
    pub response_timeout: Leaf,
    pub body_timeout: Leaf,
    pub upgrade_timeout: Leaf,
    pub health_check: Option<HealthCheck>,
}

#[derive(Deserialize, Default)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: Leaf,
    pub path: Leaf,
    pub host: Leaf,
    pub expected_status: Leaf,
    pub headers: Option<serde_yaml::Mapping>,
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
