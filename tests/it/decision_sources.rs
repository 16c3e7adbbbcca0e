//! The dynamic allow-list sources against real components: PostgreSQL at 127.0.0.1:5432 (or
//! `DATABASE_URL`), a throwaway database per test, and a raw HTTP ask endpoint on loopback.
//! Each test owns its `Metrics`, so query counts are exact.

use crate::common::pg;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use tenant_edge::allow::ask::{AskSettings, AskUrl};
use tenant_edge::allow::database::{DatabaseSettings, PgAllowList, DEFAULT_ALLOW_QUERY};
use tenant_edge::allow::decision::{Decision, DecisionError, DecisionSource, Source};
use tenant_edge::allow::list::{AllowList, DecisionSettings};
use tenant_edge::domain::Domain;
use tenant_edge::metrics::Metrics;

use pg::{TcpProxy, TestDb};

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new().unwrap())
}

fn pg_source(url: &str, timeout: Duration, metrics: &Arc<Metrics>) -> Arc<PgAllowList> {
    pg_query(url, DEFAULT_ALLOW_QUERY, timeout, metrics)
}

fn pg_query(url: &str, query: &str, timeout: Duration, metrics: &Arc<Metrics>) -> Arc<PgAllowList> {
    let config = DatabaseSettings {
        url: url.to_string(),
        query: query.to_string(),
        list_query: tenant_edge::allow::database::DEFAULT_LIST_QUERY.to_string(),
        notify_channel: tenant_edge::allow::database::DEFAULT_NOTIFY_CHANNEL.to_string(),
        scan_interval: Duration::from_secs(600),
        notify_probe: Duration::from_secs(30),
        timeout,
        pool_size: 4,
        tls_root: None,
        circuit: Default::default(),
    };
    Arc::new(PgAllowList::new(&config, metrics.clone()).unwrap())
}

fn allow_list(
    source: Arc<dyn DecisionSource>,
    allowed: Duration,
    denied: Duration,
    metrics: &Arc<Metrics>,
) -> Arc<AllowList> {
    let settings = DecisionSettings {
        allowed_ttl: allowed,
        denied_ttl: denied,
        stale_ttl: Duration::from_millis(1),
    };
    Arc::new(AllowList::with_settings(
        vec![],
        vec![source],
        settings,
        metrics.clone(),
    ))
}

fn queries(metrics: &Metrics, outcome: &str) -> u64 {
    metrics.database_queries.with_label_values(&[outcome]).get()
}

fn all_queries(metrics: &Metrics) -> u64 {
    ["ok", "error", "timeout"]
        .iter()
        .map(|o| queries(metrics, o))
        .sum()
}

fn decisions(metrics: &Metrics, source: &str, result: &str) -> u64 {
    metrics.decisions.with_label_values(&[source, result]).get()
}

const LONG: Duration = Duration::from_secs(600);

/// Active and inactive companies, case-insensitive match through citext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_allows_names_of_active_companies_only() {
    let db = TestDb::create().await;
    db.add_company("Shop", "{Shop.Tenant.test}", true).await;
    db.add_company("Gone", "{old.tenant.test,other.tenant.test}", false)
        .await;
    let m = metrics();
    let list = allow_list(
        pg_source(&db.url, Duration::from_secs(2), &m),
        LONG,
        LONG,
        &m,
    );

    assert_eq!(
        list.decide(&d("shop.tenant.test")).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    assert_eq!(
        list.decide(&d("SHOP.tenant.test.")).await.unwrap(),
        Decision::Allowed(Source::Database),
        "the same name, normalized by Domain: a cache hit"
    );
    assert_eq!(
        list.decide(&d("old.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(
        list.decide(&d("unknown.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(queries(&m, "ok"), 3);
    assert_eq!(decisions(&m, "database", "allowed"), 1);
    assert_eq!(decisions(&m, "database", "denied"), 2);
    assert_eq!(decisions(&m, "cache", "allowed"), 1);
}

/// A no is cached for denied_ttl only (a domain added while running is served after it);
/// a yes is cached for allowed_ttl (no second query); `forget` drops a cached answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_domain_is_allowed_after_the_denied_ttl_and_a_yes_is_cached() {
    let db = TestDb::create().await;
    let m = metrics();
    let denied_ttl = Duration::from_millis(300);
    let list = allow_list(
        pg_source(&db.url, Duration::from_secs(2), &m),
        LONG,
        denied_ttl,
        &m,
    );
    let name = d("new.tenant.test");

    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert!(list.is_known(&name));
    db.add_company("New", "{new.tenant.test}", true).await;
    // Still the cached no, without a query.
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert_eq!(all_queries(&m), 1);

    tokio::time::sleep(denied_ttl + Duration::from_millis(150)).await;
    assert!(!list.is_known(&name), "the no has expired");
    assert_eq!(
        list.decide(&name).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    assert_eq!(all_queries(&m), 2);

    // The yes outlives the denied TTL and costs no query, even after the row is gone.
    db.client
        .execute("UPDATE companies SET active = false", &[])
        .await
        .unwrap();
    tokio::time::sleep(denied_ttl + Duration::from_millis(150)).await;
    for _ in 0..10 {
        assert!(list.decide(&name).await.unwrap().is_allowed());
    }
    assert_eq!(all_queries(&m), 2);
    assert_eq!(decisions(&m, "cache", "allowed"), 10);

    // `forget` (what LISTEN/NOTIFY will call) makes the next decision ask again.
    list.forget(&name);
    assert!(!list.is_known(&name));
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert_eq!(all_queries(&m), 3);
}

/// A flood of never-seen names costs one query per name, and none while the no is cached;
/// concurrent lookups of one name share one query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_names_cost_at_most_one_query_each_per_denied_ttl() {
    let db = TestDb::create().await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    let m = metrics();
    let list = allow_list(
        pg_source(&db.url, Duration::from_secs(5), &m),
        LONG,
        LONG,
        &m,
    );
    let names: Arc<Vec<Domain>> = Arc::new(
        (0..1000)
            .map(|_| d(&format!("r{:016x}.tenant.test", rand::random::<u64>())))
            .collect(),
    );

    let flood = |list: Arc<AllowList>, names: Arc<Vec<Domain>>| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..names.len() {
            let (list, names) = (list.clone(), names.clone());
            tasks.spawn(async move { list.decide(&names[i]).await.unwrap() });
        }
        let mut allowed = 0;
        while let Some(decision) = tasks.join_next().await {
            allowed += usize::from(decision.unwrap().is_allowed());
        }
        allowed
    };

    assert_eq!(flood(list.clone(), names.clone()).await, 0);
    assert_eq!(all_queries(&m), 1000, "one query per never-seen name");
    assert_eq!(queries(&m, "ok"), 1000);
    assert!(names.iter().all(|n| list.is_known(n)));

    assert_eq!(flood(list.clone(), names.clone()).await, 0);
    assert_eq!(all_queries(&m), 1000, "the same names again: all cached");
    assert_eq!(decisions(&m, "cache", "denied"), 1000);

    // 50 concurrent first lookups of one name: one query.
    let shop = Arc::new(vec![d("shop.tenant.test"); 50]);
    assert_eq!(flood(list.clone(), shop).await, 50);
    assert_eq!(all_queries(&m), 1001);
}

/// The database goes away: a name allowed before keeps being allowed (stale-if-error), a name
/// never seen is refused (fail closed); when it comes back, lookups work again on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_serves_known_names_refuses_new_ones_and_recovers() {
    let db = TestDb::create().await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    db.add_company("Later", "{later.tenant.test}", true).await;
    let proxy = TcpProxy::start(pg::server_addr()).await;
    let m = metrics();
    let ttl = Duration::from_millis(200);
    let source = pg_source(
        &pg::with_address(&db.url, proxy.addr),
        Duration::from_secs(1),
        &m,
    );
    let list = allow_list(source, ttl, ttl, &m);
    let shop = d("shop.tenant.test");
    let later = d("later.tenant.test");

    assert_eq!(
        list.decide(&shop).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    assert_eq!(queries(&m, "ok"), 1);

    proxy.stop().await;
    tokio::time::sleep(ttl + Duration::from_millis(100)).await; // the cached yes expired
    assert_eq!(
        list.decide(&shop).await.unwrap(),
        Decision::Allowed(Source::Database),
        "allowed before: still served"
    );
    assert_eq!(decisions(&m, "database", "stale_allowed"), 1);
    // In the database, but never asked about before the outage: refused.
    assert_eq!(list.decide(&later).await.unwrap(), Decision::Denied);
    assert_eq!(decisions(&m, "database", "fail_closed"), 1);
    assert_eq!(queries(&m, "ok"), 1);
    assert_eq!(queries(&m, "error") + queries(&m, "timeout"), 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !list.is_known(&later),
        "a failure is cached for stale_ttl only"
    );

    proxy.restart().await;
    assert_eq!(
        list.decide(&later).await.unwrap(),
        Decision::Allowed(Source::Database),
        "reconnected without a rebuild"
    );
    db.add_company("Fresh", "{fresh.tenant.test}", true).await;
    assert_eq!(
        list.decide(&d("fresh.tenant.test")).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(list.decide(&shop).await.unwrap().is_allowed());
    assert_eq!(
        decisions(&m, "database", "stale_allowed"),
        1,
        "a real yes again"
    );
    assert_eq!(queries(&m, "ok"), 4);
}

/// A database that accepts connections but never answers costs one `timeout` per lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_is_bounded_by_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket); // accept, read nothing, answer nothing
        }
    });
    let m = metrics();
    let timeout = Duration::from_millis(300);
    let url = format!("postgres://postgres@{addr}/postgres");
    let list = allow_list(pg_source(&url, timeout, &m), LONG, LONG, &m);

    let started = Instant::now();
    assert_eq!(
        list.decide(&d("slow.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout * 4, "{took:?}");
    assert_eq!(queries(&m, "timeout"), 1);
    assert_eq!(decisions(&m, "database", "fail_closed"), 1);
}

/// `probe` (for `tenant-edge check`): fine against the schema, a clear configuration error
/// without it, an outage message without the password when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_probe_says_what_is_wrong() {
    let db = TestDb::create().await;
    let m = metrics();
    pg_source(&db.url, Duration::from_secs(2), &m)
        .probe()
        .await
        .unwrap();

    // A custom query whose $1 is not the name.
    let err = pg_query(
        &db.url,
        "SELECT 1 FROM companies WHERE id = $1",
        Duration::from_secs(2),
        &m,
    )
    .probe()
    .await
    .unwrap_err();
    assert!(matches!(err, DecisionError::Misconfigured { .. }), "{err}");
    assert!(err.to_string().contains("$1 as int8"), "{err}");

    db.client
        .batch_execute("DROP TABLE companies")
        .await
        .unwrap();
    let err = pg_source(&db.url, Duration::from_secs(2), &m)
        .probe()
        .await
        .unwrap_err();
    assert!(matches!(err, DecisionError::Misconfigured { .. }), "{err}");
    assert!(err.to_string().contains("companies"), "{err}");

    let closed = closed_port().await;
    let url = format!("postgres://postgres:hunter2secret@{closed}/postgres");
    let err = pg_source(&url, Duration::from_secs(2), &m)
        .probe()
        .await
        .unwrap_err();
    assert!(matches!(err, DecisionError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&closed.to_string()), "{err}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
    assert_eq!(all_queries(&m), 0, "probes are not counted as lookups");
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A raw HTTP/1.1 ask endpoint: 200 for `yes.*`, 301 (like Rails' force_ssl) for
/// `redirect.*`, 500 for `broken.*`, 404 otherwise. Records each request target.
async fn ask_endpoint() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(target.clone());
                let domain = target
                    .split(['?', '&'])
                    .find_map(|p| p.strip_prefix("domain="))
                    .unwrap_or("");
                let response = if domain.starts_with("yes.") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                } else if domain.starts_with("redirect.") {
                    format!("HTTP/1.1 301 Moved Permanently\r\nlocation: https://localhost{target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                } else if domain.starts_with("broken.") {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, seen)
}

fn ask_source(url: &str, metrics: &Arc<Metrics>) -> Arc<AskUrl> {
    let config = AskSettings {
        url: url.to_string(),
        timeout: Duration::from_secs(2),
    };
    Arc::new(AskUrl::new(&config, metrics.clone()))
}

fn misconfigured(metrics: &Metrics, reason: &str) -> u64 {
    metrics.ask_misconfigured.with_label_values(&[reason]).get()
}

/// Caddy-compatible ask URL: 200 is yes, 404 is no, a 301 is a no that is counted as a
/// configuration error (never followed), a 500 is no answer (fail closed for a new name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_url_200_allows_404_denies_301_is_a_counted_misconfiguration() {
    let (addr, seen) = ask_endpoint().await;
    let m = metrics();
    let url = format!("http://{addr}/internal/allow_domain?token=abc");
    let ask = ask_source(&url, &m);
    let list = allow_list(ask.clone(), LONG, LONG, &m);

    assert_eq!(
        list.decide(&d("yes.tenant.test")).await.unwrap(),
        Decision::Allowed(Source::Ask)
    );
    assert_eq!(
        list.decide(&d("no.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(
        list.decide(&d("redirect.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(misconfigured(&m, "redirect"), 1);
    assert_eq!(
        list.decide(&d("broken.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(decisions(&m, "ask", "fail_closed"), 1);
    assert_eq!(decisions(&m, "ask", "allowed"), 1);
    assert_eq!(decisions(&m, "ask", "denied"), 2);
    assert_eq!(
        seen.lock().unwrap().first().map(String::as_str),
        Some("/internal/allow_domain?token=abc&domain=yes.tenant.test"),
        "the name is appended to the existing query"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "the redirect was not followed"
    );

    // `check`'s probe: a 200 passes; a redirect fails with the force_ssl hint; a 404 fails.
    ask.probe(&d("yes.tenant.test")).await.unwrap();
    let err = ask.probe(&d("redirect.tenant.test")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("redirects (301, Location: https://localhost/internal/allow_domain)"),
        "{text}"
    );
    assert!(
        text.contains("force_ssl") && text.contains("allow.ask.url"),
        "{text}"
    );
    assert!(!text.contains("token=abc"), "{text}");
    assert!(ask.probe(&d("no.tenant.test")).await.is_err());
    assert_eq!(misconfigured(&m, "redirect"), 1, "probes are not counted");
}

/// An ask URL nothing listens on: new names fail closed, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ask_url_fails_closed() {
    let closed = closed_port().await;
    let m = metrics();
    let ask = ask_source(&format!("http://{closed}/internal/allow_domain"), &m);
    let list = allow_list(ask.clone(), LONG, LONG, &m);
    assert_eq!(
        list.decide(&d("yes.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(decisions(&m, "ask", "error"), 1);
    assert_eq!(decisions(&m, "ask", "fail_closed"), 1);
    assert_eq!(misconfigured(&m, "unreachable"), 1);
    let err = ask.probe(&d("yes.tenant.test")).await.unwrap_err();
    assert!(matches!(err, DecisionError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&closed.to_string()), "{err}");
}

/// Database first, then the ask URL: a no from the database lets the ask URL say yes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_asked_in_order() {
    let db = TestDb::create().await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    let (addr, seen) = ask_endpoint().await;
    let m = metrics();
    let list = AllowList::with_settings(
        vec![],
        vec![
            pg_source(&db.url, Duration::from_secs(2), &m),
            ask_source(&format!("http://{addr}/allow"), &m),
        ],
        DecisionSettings {
            allowed_ttl: LONG,
            denied_ttl: LONG,
            stale_ttl: Duration::from_millis(1),
        },
        m.clone(),
    );
    assert_eq!(
        list.decide(&d("shop.tenant.test")).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    assert!(seen.lock().unwrap().is_empty(), "the first yes wins");
    assert_eq!(
        list.decide(&d("yes.tenant.test")).await.unwrap(),
        Decision::Allowed(Source::Ask)
    );
    assert_eq!(
        list.decide(&d("none.tenant.test")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(queries(&m, "ok"), 3);
}
