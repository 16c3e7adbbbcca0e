//! Assemble a Pingora `Server` from a `Config`: the HTTPS proxy with its certificate callback,
//! the plain-HTTP listener, the metrics listener, the upstream health checks and the
//! certificate maintenance service.
//!
//! Nothing here spawns a task or opens a connection: Pingora forks when daemonizing and gives
//! each service its own runtime, so everything asynchronous starts inside the services after
//! `run_forever`. Building does create the data directory and the internal CA (plain file I/O).
//!
//! - `edge`: the certificate side (allow-list, store, issuer, manager) without listeners.
//! - `listen`: listen sockets and the start-time port check.
//! - `error`: why an edge could not be built.
//! - `labels`: the closed label sets of every metric family.

pub mod edge;
pub mod error;
pub mod labels;
pub mod listen;

use std::sync::Arc;

use pingora::listeners::{ListenerConfig, Listeners};
use pingora::prelude::{background_service, Opt};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::allow::decision::NameList;
use crate::certs::maintain::{Feed, Inputs, Maintenance};
use crate::config::Config;
use crate::http::metrics::MetricsApp;
use crate::http::plain::PlainHttp;
use crate::http::proxy::EdgeProxy;
use crate::http::upstream::Upstreams;
use crate::pg::listen::listen;
use crate::server::edge::{build_edge, Edge};
use crate::server::error::BuildError;
use crate::server::listen::socket_options;
use crate::shared::feed::follow_issued;
use crate::tls::gate::ClientGate;
use crate::tls::handshake::{listener_buffers, tls_settings};

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

    let maintenance = Maintenance::new(
        edge.manager.clone(),
        maintenance_inputs(config, &edge),
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
            .l4_buffer(listener_buffers());
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

/// The feeds and the name list the maintenance service follows: tenant changes over LISTEN and
/// the periodic scan (with a database), certificates issued on other hosts (with a shared
/// store).
fn maintenance_inputs(config: &Config, edge: &Edge) -> Inputs {
    let mut inputs = Inputs::default();
    if let (Some(db), Some(settings)) = (&edge.database, &config.allow.database) {
        let (url, channel, metrics) = (
            settings.url.clone(),
            settings.notify_channel.clone(),
            edge.metrics.clone(),
        );
        let feed: Feed = Box::new(move |names| {
            Box::pin(listen(url.clone(), channel.clone(), names, metrics.clone()))
        });
        inputs.tenant_changes = Some(feed);
        inputs.scan = Some((db.clone() as Arc<dyn NameList>, settings.scan_interval));
    }
    if let (Some(store), Some(settings)) = (&edge.shared, &config.shared_store) {
        let (store, settings, metrics) = (store.clone(), settings.clone(), edge.metrics.clone());
        let feed: Feed = Box::new(move |names| {
            Box::pin(follow_issued(
                store.clone(),
                settings.clone(),
                names,
                metrics.clone(),
            ))
        });
        inputs.issued_elsewhere = Some(feed);
    }
    inputs
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
