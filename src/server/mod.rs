//! Assemble a Pingora `Server` from a `Config`: the HTTPS proxy with its certificate callback,
//! the plain-HTTP listener, the metrics listener, the upstream health checks and the
//! certificate maintenance service.
//!
//! Nothing here spawns a task or opens a connection: Pingora forks when daemonizing and gives
//! each service its own runtime, so everything asynchronous starts inside the services after
//! `run_forever`. Building does create the data directory and the internal CA (plain file I/O).
//!
//! - `edge`: the certificate side (allow-list, store, issuer, manager) without listeners.
//! - `feeds`: the LISTEN connections the maintenance service follows.
//! - `listen`: listen sockets and the start-time port check.
//! - `error`: why an edge could not be built.
//! - `labels`: the closed label sets of every metric family.

pub mod admin;
pub mod edge;
pub mod error;
pub mod feeds;
pub mod labels;
pub mod listen;
pub mod remember;

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::{ListenerConfig, Listeners};
use pingora::prelude::{background_service, Opt};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::allow::remembered::RememberedStore;
use crate::certs::maintain::Maintenance;
use crate::config::issuer::IssuerConfig;
use crate::config::Config;
use crate::domain::Domain;
use crate::http::app::EdgeApp;
use crate::http::conn::ConnApp;
use crate::http::metrics::MetricsApp;
use crate::http::plain::PlainHttp;
use crate::http::proxy::{ClientPolicy, EdgeProxy};
use crate::http::upstream::Upstreams;
use crate::limits::connections::{Connections, Listener};
use crate::logging::access::AccessLogWriter;
use crate::server::admin::AdminService;
use crate::server::edge::{build_edge, Edge};
use crate::server::error::BuildError;
use crate::server::feeds::maintenance_inputs;
use crate::server::listen::{core_address, socket_options};
use crate::server::remember::RememberService;
use crate::tls::accept::{Accept, ProxyProtocol};
use crate::tls::gate::{ClientGate, EdgeNames};
use crate::tls::handshake::{listener_buffers, tls_settings};
use crate::tls::tickets::{LocalKeys, TicketKeyStore, TicketKeys, TicketRotation};

/// Pingora's process options, exposed as flags of `tenant-edge run`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
    pub test: bool,
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

    let connections = Connections::new(config.limits.connections.clone(), edge.metrics.clone());
    let mut inputs = maintenance_inputs(config, &edge);
    inputs.on_change = Some(close_websockets_when_refused(&edge, &connections));
    let maintenance = Maintenance::new(
        edge.manager.clone(),
        inputs,
        config.renewal.clone(),
        config.provisioning.clone(),
        edge.metrics.clone(),
    );
    server.add_service(background_service("certificate maintenance", maintenance));
    server.add_service(background_service(
        "admin socket",
        AdminService {
            manager: edge.manager.clone(),
            path: config.data_dir.join(admin::SOCKET),
            renew_fraction: config.renewal.fraction,
        },
    ));
    server.add_service(background_service(
        "access log",
        AccessLogWriter {
            log: edge.access_log.clone(),
        },
    ));
    if edge.allow.has_sources() {
        let remember = RememberService {
            allow: edge.allow.clone(),
            shared: edge.shared.clone().map(|s| s as Arc<dyn RememberedStore>),
        };
        server.add_service(background_service("allowed names", remember));
    }

    let tickets =
        TicketKeys::new(config.tls.ticket_key_rotation).map_err(|e| BuildError::Listener {
            addr: "session tickets".into(),
            message: e.to_string(),
        })?;
    let store: Arc<dyn TicketKeyStore> = match &edge.shared {
        Some(shared) => shared.clone(),
        None => Arc::new(LocalKeys::default()),
    };
    let rotation = TicketRotation {
        keys: tickets.clone(),
        store,
    };
    server.add_service(background_service("session-ticket keys", rotation));

    let upstreams = Arc::new(Upstreams::build(
        &config.upstreams,
        &edge.metrics,
        &mut server,
    )?);
    // Before TLS: the PROXY protocol, connection limits, then one client cycling through
    // never-seen names is cut off before its names reach the database (the certificate
    // callback cannot see the address). One for every HTTPS service: the limits are per client,
    // not per service.
    let gate = config.limits.clients.as_ref().map(|s| {
        let acme = matches!(config.issuer, IssuerConfig::Acme(_));
        let known = EdgeNames::new(edge.manager.clone(), edge.challenges.clone(), acme);
        ClientGate::new(s.clone(), Arc::new(known), edge.metrics.clone())
            .with_access_log(edge.access_log.clone())
    });
    let accept = Arc::new(Accept {
        connections: connections.clone(),
        proxy: proxy_protocol(config),
        gate,
    });
    for core in 0..https_services(config) {
        let shared = HttpsShared {
            upstreams: upstreams.clone(),
            connections: &connections,
            tickets: &tickets,
            accept: accept.clone(),
        };
        server.add_service(https_service(config, &edge, &server, shared, core)?);
    }
    if !config.listen.http.is_empty() {
        server.add_service(http_service(config, &edge, &connections));
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

/// The PROXY protocol settings of the listeners that opted in.
fn proxy_protocol(config: &Config) -> ProxyProtocol {
    ProxyProtocol {
        listeners: config.listen.proxy_protocol.clone(),
        trusted: config.forwarding.trusted_proxies.clone(),
        timeout: config.proxy_protocol_timeout,
    }
}

/// The hook for a name whose decision was dropped: if it has WebSockets open and is no longer
/// allowed, they are closed (within the lookup's time, well under a second).
fn close_websockets_when_refused(
    edge: &Edge,
    connections: &Arc<Connections>,
) -> Arc<dyn Fn(Domain) + Send + Sync> {
    let (allow, connections) = (edge.allow.clone(), connections.clone());
    Arc::new(move |name: Domain| {
        if !connections.has_upgraded(&name) {
            return;
        }
        let (allow, connections) = (allow.clone(), connections.clone());
        tokio::spawn(async move {
            if !matches!(allow.decide(&name).await, Ok(d) if d.is_allowed()) {
                let closed = connections.kill_upgraded(&name);
                log::info!("{name}: no longer allowed; closed {closed} upgraded connection(s)");
            }
        });
    })
}

/// What Pingora's HTTP server itself bounds: requests per HTTP/1.1 connection, idle HTTP/2
/// connections, HTTP/2 streams and resets.
fn http_options(config: &Config) -> (HttpServerOptions, H2Options) {
    let limits = &config.limits.connections;
    let mut options = HttpServerOptions::default();
    // Pingora allows N + 1 requests for a limit of N.
    options.keepalive_request_limit = Some(limits.requests.saturating_sub(1));
    options.h2_idle_timeout = Some(config.timeouts.h2_idle);
    let mut h2 = default_h2_options();
    h2.max_concurrent_streams(limits.h2_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(256));
    (options, h2)
}

/// What every HTTPS service shares: the upstream pools' health state, the connection
/// registry, the session-ticket keys, the pre-TLS step (connection limits, the client gate).
struct HttpsShared<'a> {
    upstreams: Arc<Upstreams>,
    connections: &'a Arc<Connections>,
    tickets: &'a Arc<TicketKeys>,
    accept: Arc<Accept>,
}

/// How many HTTPS services run: one per `server.threads`, each on one thread of its own.
///
/// Pingora runs a service's threads as one work-stealing runtime (or, with stealing off, one
/// accept task handing connections to random threads) with one upstream connection pool for
/// all of them: on a small machine its threads wake and migrate each other constantly. N
/// services of one thread each, each accepting on its own `SO_REUSEPORT` socket of every
/// HTTPS address (`listen::core_address`), keep every connection, its upstream connections and
/// their pool on the thread that accepted it, and share everything else through
/// `HttpsShared`. (Two services on the same address text would share one socket, which
/// Pingora then closes once per service at shutdown.)
fn https_services(config: &Config) -> usize {
    config.server.threads.max(1)
}

/// The HTTPS service number `core`: one thread, its own upstream connection pool.
fn https_service(
    config: &Config,
    edge: &Edge,
    server: &Server,
    shared: HttpsShared<'_>,
    core: usize,
) -> Result<Service<ConnApp<EdgeApp<HttpProxy<EdgeProxy>>>>, BuildError> {
    let HttpsShared {
        upstreams,
        connections,
        tickets,
        accept,
    } = shared;
    let policy = ClientPolicy {
        timeouts: config.timeouts.clone(),
        forwarding: config.forwarding.clone(),
        connections: connections.clone(),
        access_log: edge.access_log.clone(),
    };
    let proxy = EdgeProxy::new(
        edge.manager.clone(),
        upstreams,
        edge.metrics.clone(),
        policy,
    );
    let mut listeners = Listeners::new();
    for addr in &config.listen.https {
        let listener_error = |e: pingora::BError| BuildError::Listener {
            addr: addr.to_string(),
            message: e.to_string(),
        };
        let tls = tls_settings(
            edge.manager.clone(),
            edge.challenges.clone(),
            tickets,
            Some(edge.access_log.clone()),
        )
        .map_err(listener_error)?;
        let mut options = socket_options(addr, &config.timeouts);
        // Always, so that a graceful upgrade to another `server.threads` can add sockets.
        options.so_reuseport = Some(true);
        let endpoint = ListenerConfig::tcp(core_address(addr, core))
            .tls(tls)
            .l4_buffer(listener_buffers())
            .tcp_socket_options(options);
        listeners.add_listener(endpoint);
    }
    listeners.set_pre_tls_callback(accept);
    let (options, h2) = http_options(config);
    let app = EdgeApp::new(
        pingora::proxy::http_proxy(&server.configuration, proxy),
        config.timeouts.clone(),
        connections.clone(),
        options,
        Some(h2),
    );
    let app = ConnApp::new(
        app,
        Listener::Https,
        connections.clone(),
        None,
        config.timeouts.clone(),
    );
    let mut service = Service::with_listeners(format!("tenant-edge https {core}"), listeners, app);
    service.threads = Some(1);
    Ok(service)
}

fn http_service(
    config: &Config,
    edge: &Edge,
    connections: &Arc<Connections>,
) -> Service<ConnApp<EdgeApp<PlainHttp>>> {
    let plain = PlainHttp::new(
        edge.challenges.clone(),
        config.listen.redirect_https_port,
        edge.metrics.clone(),
    );
    let (options, _) = http_options(config);
    let app = EdgeApp::new(
        plain,
        config.timeouts.clone(),
        connections.clone(),
        options,
        None,
    );
    let app = ConnApp::new(
        app,
        Listener::Http,
        connections.clone(),
        Some(proxy_protocol(config)),
        config.timeouts.clone(),
    );
    let mut http = Service::new("tenant-edge http".to_string(), app);
    for addr in &config.listen.http {
        http.add_tcp_with_settings(&addr.to_string(), socket_options(addr, &config.timeouts));
    }
    http
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
        // After SIGTERM Pingora stops accepting at once, waits `grace_period_seconds`, then
        // drops whatever still runs (its `graceful_shutdown_timeout_seconds` only bounds the
        // teardown of blocking threads). So the whole drain window the config promises,
        // grace_period + graceful_shutdown_timeout, goes into the first.
        grace_period_seconds: Some((s.grace_period + s.graceful_shutdown_timeout).as_secs()),
        graceful_shutdown_timeout_seconds: Some(2),
        // One try plus one retry on another backend (see `EdgeProxy::fail_to_connect`).
        max_retries: 2,
        // The HTTPS services run one thread each (`https_services`); the others' threads
        // need no stealing either: a task stays where it started, with its connections.
        work_stealing: false,
        ..ServerConf::default()
    }
}
