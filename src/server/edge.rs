//! The certificate side of an edge (allow-list, store, issuer, manager), built from a `Config`
//! without any listener: what `build_server`, the CLI commands and the benchmarks share.

use std::sync::Arc;

use crate::allow::ask::AskUrl;
use crate::allow::circuit::Circuit;
use crate::allow::database::PgAllowList;
use crate::allow::decision::DecisionSource;
use crate::allow::list::AllowList;
use crate::allow::remembered::Remembered;
use crate::certs::challenge::{Challenges, SharedChallenges};
use crate::certs::disk::DiskStore;
use crate::certs::issuer::acme::account::AccountStore;
use crate::certs::issuer::acme::AcmeIssuer;
use crate::certs::issuer::internal::InternalCa;
use crate::certs::issuer::Issuer;
use crate::certs::layered::LayeredStore;
use crate::certs::lock::{IssuanceLocks, SharedLock};
use crate::certs::manager::{CertManager, ManagerSettings};
use crate::certs::store::{Store, StoreError};
use crate::config::issuer::IssuerConfig;
use crate::config::Config;
use crate::limits::issuance::Limits;
use crate::limits::orders::OrderLog;
use crate::logging::access::AccessLog;
use crate::metrics::Metrics;
use crate::server::error::BuildError;
use crate::server::labels::closed_sets;
use crate::shared::store::{holder_id, SharedStore};
use crate::util::fs::create_private_dir;

/// The allow-list the config describes: platform domains, then the database, then the ask URL.
/// Builds clients but connects nothing (connections open on first use, inside a runtime).
pub fn allow_list(config: &Config, metrics: &Arc<Metrics>) -> Result<AllowList, BuildError> {
    let database = database(config, metrics)?;
    allow_list_with(config, metrics, database, Arc::new(Remembered::in_memory()))
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
    remembered: Arc<Remembered>,
) -> Result<AllowList, BuildError> {
    let mut sources: Vec<Arc<dyn DecisionSource>> = Vec::new();
    if let (Some(pg), Some(db)) = (database, &config.allow.database) {
        sources.push(Arc::new(Circuit::new(pg, db.circuit, metrics.clone())));
    }
    if let Some(ask) = &config.allow.ask {
        sources.push(Arc::new(AskUrl::new(ask, metrics.clone())));
    }
    Ok(AllowList::remembering(
        config.allow.platform_domains.clone(),
        sources,
        config.allow.cache,
        remembered,
        metrics.clone(),
    ))
}

/// The parts of a running edge that tests and benchmarks reach into.
pub struct Edge {
    pub access_log: Arc<AccessLog>,
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
    let data_dir_error = |e: StoreError| BuildError::DataDir {
        path: config.data_dir.display().to_string(),
        message: e.to_string(),
    };
    create_private_dir(&config.data_dir).map_err(|e| data_dir_error(e.into()))?;
    let metrics = Arc::new(Metrics::new()?);
    metrics.preinit(&closed_sets());
    let shared = shared_store(config)?;
    let challenges = Arc::new(match &shared {
        Some(shared) => Challenges::new(
            Some(shared.clone() as Arc<dyn SharedChallenges>),
            metrics.clone(),
        ),
        None => Challenges::new(None, metrics.clone()),
    });
    let database = database(config, &metrics)?;
    // "Allowed before" survives restarts: a restart during a database outage still serves
    // every tenant allowed before.
    let remembered = Arc::new(Remembered::load(&config.data_dir));
    let allow = Arc::new(allow_list_with(
        config,
        &metrics,
        database.clone(),
        remembered,
    )?);
    let disk = DiskStore::open(&config.data_dir).map_err(data_dir_error)?;
    let store: Arc<dyn Store> = match &shared {
        Some(shared) => Arc::new(LayeredStore::new(disk, shared.clone() as Arc<dyn Store>)),
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
                shared.clone().map(|s| s as Arc<dyn AccountStore>),
                metrics.clone(),
            );
            (Arc::new(issuer), None)
        }
    };
    let mut limits = Limits::load(&config.data_dir, config.limits.issuance.clone())
        .map_err(|e| data_dir_error(e.into()))?;
    // Several hosts share one ACME account: one order budget for all of them.
    if let Some(shared) = &shared {
        limits = limits.with_order_log(shared.clone() as Arc<dyn OrderLog>);
    }
    let lock = shared
        .clone()
        .zip(config.shared_store.as_ref())
        .map(|(store, sh)| SharedLock {
            locks: store as Arc<dyn IssuanceLocks>,
            holder: holder_id(),
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
    let access_log = AccessLog::new(config.access_log.clone(), metrics.clone());
    Ok(Edge {
        access_log,
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
    let (key, key_env) = match &sh.encryption_key {
        Some((key, env)) => (Some(*key), Some(env.as_str())),
        None => (None, None),
    };
    let mut store = SharedStore::new(&sh.url, key, sh.timeout).map_err(|e| BuildError::Source {
        key: "store.shared",
        message: e.to_string(),
    })?;
    if let Some(env) = key_env {
        store = store.with_key_env(env);
    }
    if let Some(root) = &sh.tls_root {
        store = store
            .with_tls_root(&sh.url, root)
            .map_err(|e| BuildError::Source {
                key: "store.shared.tls_root",
                message: e.to_string(),
            })?;
    }
    Ok(Some(Arc::new(store)))
}
