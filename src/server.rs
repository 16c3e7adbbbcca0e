//! Assemble a Pingora `Server` from a `Config`: the HTTPS proxy with its certificate callback,
//! the plain-HTTP listener, the metrics listener and the upstream health checks.
//!
//! Nothing here spawns a task or opens a connection: Pingora forks when daemonizing and gives
//! each service its own runtime, so everything asynchronous starts inside the services after
//! `run_forever`. Building does create the data directory and the internal CA (plain file I/O).

use std::sync::Arc;

use pingora::listeners::{ListenerConfig, Listeners, TcpSocketOptions};
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::acme::AcmeIssuer;
use crate::ask::AskUrl;
use crate::challenge::Challenges;
use crate::client_gate::ClientGate;
use crate::config::{Config, IssuerConfig};
use crate::database::PgAllowList;
use crate::decision::{AllowList, DecisionSettings, DecisionSource};
use crate::issuer::{InternalCa, Issuer};
use crate::limits::Limits;
use crate::maintain::Maintenance;
use crate::manager::{CertManager, ManagerSettings, SharedLock};
use crate::metrics::Metrics;
use crate::plain_http::{MetricsApp, PlainHttp};
use crate::proxy::EdgeProxy;
use crate::shared::SharedStore;
use crate::store::{create_private_dir, DiskStore, LayeredStore, Store};
use crate::tls::tls_settings;
use crate::upstream::Upstreams;
use pingora::prelude::background_service;

/// Pingora's process options, exposed as flags of `tenant-edge run`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
    pub test: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{key}: {message}")]
    Source { key: &'static str, message: String },
    #[error("data_dir {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("the internal CA: {0}")]
    Ca(#[from] crate::issuer::CaError),
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("listener {addr}: {message}")]
    Listener { addr: String, message: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The allow-list the config describes: platform domains, then the database, then the ask URL.
/// Builds clients but connects nothing (connections open on first use, inside a runtime).
pub fn allow_list(config: &Config, metrics: &Arc<Metrics>) -> Result<AllowList, BuildError> {
    let database = database(config, metrics)?;
    allow_list_with(config, metrics, database)
}

/// The database allow-list source, when configured (also used to list names and LISTEN).
pub fn database(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<PgAllowList>>, BuildError> {
    let Some(db) = &config.allow.database else {
        return Ok(None);
    };
    let pg = PgAllowList::new(db, metrics.clone()).map_err(|e| BuildError::Source {
        key: "allow.database",
        message: e.to_string(),
    })?;
    Ok(Some(Arc::new(pg)))
}

/// `allow_list` with an already built database source.
pub fn allow_list_with(
    config: &Config,
    metrics: &Arc<Metrics>,
    database: Option<Arc<PgAllowList>>,
) -> Result<AllowList, BuildError> {
    let mut sources: Vec<Arc<dyn DecisionSource>> = Vec::new();
    if let Some(pg) = database {
        sources.push(pg);
    }
    if let Some(ask) = &config.allow.ask {
        sources.push(Arc::new(AskUrl::new(ask, metrics.clone())));
    }
    Ok(AllowList::with_settings(
        config.allow.platform_domains.clone(),
        sources,
        DecisionSettings::from(&config.allow),
        metrics.clone(),
    ))
}

/// The parts of a running edge that tests and benchmarks reach into.
pub struct Edge {
    pub allow: Arc<AllowList>,
    pub database: Option<Arc<PgAllowList>>,
    pub shared: Option<Arc<SharedStore>>,
    pub manager: Arc<CertManager>,
    pub metrics: Arc<Metrics>,
    pub challenges: Arc<Challenges>,
    pub internal_ca: Option<Arc<InternalCa>>,
}

/// Build the certificate side (allow-list, store, issuer, manager) without any listener.
pub fn build_edge(config: &Config) -> Result<Edge, BuildError> {
    let data_dir_error = |e: crate::store::StoreError| BuildError::DataDir {
        path: config.data_dir.display().to_string(),
        message: e.to_string(),
    };
    create_private_dir(&config.data_dir).map_err(data_dir_error)?;
    let metrics = Arc::new(Metrics::new()?);
    let shared = shared_store(config)?;
    let challenges = Arc::new(match &shared {
        Some(shared) => Challenges::with_shared(shared.clone()),
        None => Challenges::default(),
    });
    let database = database(config, &metrics)?;
    let allow = Arc::new(allow_list_with(config, &metrics, database.clone())?);
    let disk = DiskStore::open(&config.data_dir).map_err(data_dir_error)?;
    let store: Arc<dyn Store> = match &shared {
        Some(shared) => Arc::new(LayeredStore::new(disk, shared.clone())),
        None => Arc::new(disk),
    };
    let (issuer, internal_ca): (Arc<dyn Issuer>, _) = match &config.issuer {
        IssuerConfig::Internal(internal) => {
            let ca = InternalCa::load_or_create(
                &config.data_dir,
                internal.lifetime,
                config.tls.key_type,
            )?;
            (ca.clone(), Some(ca))
        }
        IssuerConfig::Acme(acme) => {
            let issuer = AcmeIssuer::new(
                acme.clone(),
                config.tls.key_type,
                &config.data_dir,
                challenges.clone(),
                shared.clone(),
                metrics.clone(),
            );
            (Arc::new(issuer), None)
        }
    };
    let limits =
        Limits::load(&config.data_dir, config.limits.issuance.clone()).map_err(data_dir_error)?;
    let lock = shared
        .clone()
        .zip(config.shared_store.as_ref())
        .map(|(store, sh)| SharedLock {
            store,
            holder: crate::shared::holder_id(),
            lease: sh.lock_lease,
        });
    let manager = CertManager::new(
        allow.clone(),
        store,
        issuer,
        ManagerSettings {
            default_name: config.tls.default_name.clone(),
            issue_timeout: config.tls.issue_timeout,
            cache_capacity: config.tls.cache_capacity,
            shared: lock,
        },
        limits,
        metrics.clone(),
    );
    Ok(Edge {
        allow,
        database,
        shared,
        manager,
        metrics,
        challenges,
        internal_ca,
    })
}

/// The shared PostgreSQL store, when several hosts share one (`store.shared`). Connects lazily.
pub fn shared_store(config: &Config) -> Result<Option<Arc<SharedStore>>, BuildError> {
    let Some(sh) = &config.shared_store else {
        return Ok(None);
    };
    let store = SharedStore::new(&sh.url, sh.encryption_key, sh.timeout).map_err(|e| {
        BuildError::Source {
            key: "store.shared",
            message: e.to_string(),
        }
    })?;
    Ok(Some(Arc::new(store)))
}

fn server_conf(config: &Config, opts: RunOptions) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        daemon: opts.daemon,
        pid_file: s.pid_file.display().to_string(),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        error_log: s.error_log.as_ref().map(|p| p.display().to_string()),
        user: s.user.clone(),
        group: s.group.clone(),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        // One try plus one retry on another backend (see `EdgeProxy::fail_to_connect`).
        max_retries: 2,
        ..ServerConf::default()
    }
}

/// IPv6 listeners take only IPv6, so that `0.0.0.0:443` and `[::]:443` can both be listed
/// (a dual-stack `[::]` would collide with the IPv4 one).
fn socket_options(addr: &std::net::SocketAddr) -> Option<TcpSocketOptions> {
    addr.is_ipv6().then(|| {
        let mut options = TcpSocketOptions::default();
        options.ipv6_only = Some(true);
        options
    })
}

/// Every listen address can be bound right now. Pingora retries a taken address for a while and
/// then runs on without that listener; the edge refuses to start instead (a port taken by
/// kamal-proxy or Caddy is the seed story's classic). Not used for a graceful upgrade, where the
/// old process hands its sockets over.
pub fn ensure_listen_addresses_free(config: &Config) -> Result<(), BuildError> {
    for (key, addr) in config.listen.all() {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (another process holds it: kamal-proxy or Caddy? `tenant-edge check` and `ss -ltnp` say which)"
                }
                std::io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
                _ => "",
            };
            return Err(BuildError::Listener {
                addr: format!("{key} {addr}"),
                message: format!("{e}{hint}"),
            });
        }
    }
    Ok(())
}

/// The whole server, ready for `run_forever`.
pub fn build_server(config: &Config, opts: RunOptions) -> Result<(Server, Edge), BuildError> {
    let edge = build_edge(config)?;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        test: opts.test,
        nocapture: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config, opts));

    let maintenance = Maintenance::new(
        edge.manager.clone(),
        edge.database.clone().zip(config.allow.database.clone()),
        edge.shared.clone().zip(config.shared_store.clone()),
        config.renewal.clone(),
        config.provisioning.clone(),
        edge.metrics.clone(),
    );
    server.add_service(background_service("certificate maintenance", maintenance));

    let upstreams = Arc::new(Upstreams::build(
        &config.upstreams,
        &edge.metrics,
        &mut server,
    )?);

    let proxy = EdgeProxy::new(edge.manager.clone(), upstreams, edge.metrics.clone());
    let mut listeners = Listeners::new();
    for addr in &config.listen.https {
        let listener_error = |e: pingora::BError| BuildError::Listener {
            addr: addr.to_string(),
            message: e.to_string(),
        };
        let tls =
            tls_settings(edge.manager.clone(), edge.challenges.clone()).map_err(listener_error)?;
        let mut endpoint = ListenerConfig::tcp(addr.to_string())
            .tls(tls)
            .l4_buffer(crate::tls::listener_buffers());
        if let Some(options) = socket_options(addr) {
            endpoint = endpoint.tcp_socket_options(options);
        }
        listeners.add_listener(endpoint);
    }
    if let Some(gate) = &config.limits.clients {
        // Before TLS: one client cycling through never-seen names is cut off here, before
        // its names reach the database (the certificate callback cannot see the address).
        let gate = ClientGate::new(gate.clone(), edge.allow.clone(), edge.metrics.clone());
        listeners.set_pre_tls_callback(Arc::new(gate));
    }
    let https = Service::with_listeners(
        "tenant-edge https".to_string(),
        listeners,
        pingora::proxy::http_proxy(&server.configuration, proxy),
    );
    server.add_service(https);

    if !config.listen.http.is_empty() {
        let app = PlainHttp::new(
            edge.challenges.clone(),
            config.listen.redirect_https_port,
            edge.metrics.clone(),
        );
        let mut http = Service::new("tenant-edge http".to_string(), app);
        for addr in &config.listen.http {
            match socket_options(addr) {
                Some(options) => http.add_tcp_with_settings(&addr.to_string(), options),
                None => http.add_tcp(&addr.to_string()),
            }
        }
        server.add_service(http);
    }

    if let Some(addr) = config.listen.metrics {
        let mut metrics = Service::new(
            "tenant-edge metrics".to_string(),
            MetricsApp::new(edge.manager.clone()),
        );
        metrics.add_tcp(&addr.to_string());
        server.add_service(metrics);
    }
    Ok((server, edge))
}
