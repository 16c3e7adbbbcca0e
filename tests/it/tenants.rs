//! Tenant domains end to end: the allow-list in PostgreSQL (the Rails schema) or behind an ask
//! URL, certificates from Pebble, a real client, and outages of each dependency.

use crate::common::pebble::Pebble;
use crate::common::pg::{with_address, TcpProxy, TestDb};
use crate::common::*;
use std::time::{Duration, Instant};

/// ACME through `pebble`, with pre-provisioning off: these tests exercise the on-demand path
/// (tests/it/lifecycle.rs covers pre-provisioning).
fn acme(pebble: &Pebble, challenges: &[&str]) -> String {
    format!(
        "{}provisioning:\n  enabled: false\n",
        pebble.issuer_yaml(challenges)
    )
}

fn pem(x: &openssl::x509::X509) -> Vec<u8> {
    x.to_pem().unwrap()
}

/// `allow:` with only the database (no platform domain covers the tenant names).
fn db_allow(url: &str, denied_ttl: &str, allowed_ttl: &str) -> String {
    format!(
        "  platform_domains: [\"app.platform.test\"]\n  database:\n    url: \"{url}\"\n    timeout: 1s\n  allowed_ttl: {allowed_ttl}\n  denied_ttl: {denied_ttl}\n"
    )
}

async fn get_status(client: &reqwest::Client, url: String) -> Result<u16, String> {
    match client.get(url).send().await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(format!("{e:?}")),
    }
}

async fn company_domain_gets_a_certificate(challenge: &str) {
    let db = TestDb::create().await;
    db.add_company("Cartier", "{Shop.Tenant.test}", true).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config_with(
        &[up],
        &db_allow(&db.url, "1m", "1h"),
        &acme(&pebble, &[challenge]),
    );
    let _edge = setup.start(&config);
    let root = pem(&pebble.issuing_root());
    let client = setup.client_trusting(&root, &["shop.tenant.test"], |b| b);
    let resp = client
        .get(setup.url("shop.tenant.test", "/"))
        .send()
        .await
        .expect("served");
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("upstream: app"));
    assert_eq!(pebble.orders(), 1);
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_decisions_total",
            &[("source", "database"), ("result", "allowed")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_acme_orders_total",
            &[("challenge", challenge), ("outcome", "valid")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_domain_http01() {
    company_domain_gets_a_certificate("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_domain_tls_alpn01() {
    company_domain_gets_a_certificate("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_unknown_and_garbage_names_place_no_order() {
    let db = TestDb::create().await;
    db.add_company("Gone", "{old.tenant.test}", false).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config_with(
        &[up],
        &db_allow(&db.url, "1m", "1h"),
        &acme(&pebble, &["http-01"]),
    );
    let _edge = setup.start(&config);
    for sni in [
        Some("old.tenant.test"),
        Some("unknown.tenant.test"),
        Some("x_y!.tenant.test"),
        Some("10.0.0.1"),
    ] {
        assert!(
            !handshake(setup.https, sni, None).ok,
            "{sni:?} got a certificate"
        );
    }
    assert_eq!(pebble.orders(), 0);
    assert_eq!(pebble.accounts(), 0);
    assert!(setup.cert_dirs().is_empty());
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_decisions_total",
            &[("source", "database"), ("result", "denied")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_database_queries_total",
            &[("outcome", "ok")]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_changes_apply_after_the_ttls() {
    let db = TestDb::create().await;
    db.add_company("Louboutin", "{shop.louboutin.test}", true)
        .await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config_with(
        &[up],
        &db_allow(&db.url, "1s", "2s"),
        &acme(&pebble, &["tls-alpn-01"]),
    );
    let _edge = setup.start(&config);
    let root = pem(&pebble.issuing_root());
    let names = ["shop.louboutin.test", "new.louboutin.test"];
    let client = || setup.client_trusting(&root, &names, |b| b);

    // Not yet a tenant domain: refused, and the no is remembered for denied_ttl.
    assert!(get_status(&client(), setup.url("new.louboutin.test", "/"))
        .await
        .is_err());
    db.client
        .execute(
            "UPDATE companies SET dns_names = dns_names || '{new.louboutin.test}'::citext[]",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get_status(&client(), setup.url("new.louboutin.test", "/")).await,
        Ok(200)
    );
    assert_eq!(
        get_status(&client(), setup.url("shop.louboutin.test", "/")).await,
        Ok(200)
    );
    assert_eq!(pebble.orders(), 2);

    // The company is deactivated: once the yes expires its names are refused, even the ones
    // with a certificate on disk, and nothing new is ordered.
    db.client
        .execute("UPDATE companies SET active = false", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(get_status(&client(), setup.url("shop.louboutin.test", "/"))
        .await
        .is_err());
    assert!(!handshake(setup.https, Some("other.louboutin.test"), None).ok);
    assert_eq!(pebble.orders(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_known_names_and_refuses_new_ones() {
    let db = TestDb::create().await;
    db.add_company("Dior", "{a.dior.test,b.dior.test}", true)
        .await;
    let proxy = TcpProxy::start(crate::common::pg::server_addr()).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let url = with_address(&db.url, proxy.addr);
    // The yes expires fast, so the outage is met by an expired cache entry (stale-if-error).
    let config = setup.config_with(
        &[up],
        &db_allow(&url, "1s", "1s"),
        &acme(&pebble, &["http-01"]),
    );
    let mut edge = setup.start(&config);
    let root = pem(&pebble.issuing_root());
    let client = || setup.client_trusting(&root, &["a.dior.test", "b.dior.test"], |b| b);
    assert_eq!(
        get_status(&client(), setup.url("a.dior.test", "/")).await,
        Ok(200)
    );

    proxy.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Known name: still served, over new connections (new handshakes).
    for _ in 0..3 {
        assert_eq!(
            get_status(&client(), setup.url("a.dior.test", "/")).await,
            Ok(200)
        );
    }
    // Never-seen name (in the database, but the database cannot say so): refused, fast.
    let started = Instant::now();
    assert!(!handshake(setup.https, Some("b.dior.test"), None).ok);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(edge.child.try_wait().unwrap().is_none(), "the edge exited");
    let m = setup.scrape();
    assert!(
        metric(
            &m,
            "tenant_edge_decisions_total",
            &[("source", "database"), ("result", "stale_allowed")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "tenant_edge_decisions_total",
            &[("source", "database"), ("result", "fail_closed")]
        ) >= 1.0,
        "{m}"
    );

    // The database returns: the new name is allowed without a restart.
    proxy.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_status(&client(), setup.url("b.dior.test", "/")).await != Ok(200) {
        assert!(
            Instant::now() < deadline,
            "b.dior.test not served after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pebble.orders(), 2);
    edge.kill();
}

/// A Caddy-style ask endpoint: 200 for `yes.*`, 301 for `redir.*`, 404 otherwise.
async fn ask_endpoint() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let status = if req.contains("domain=yes.") {
                    "200 OK"
                } else if req.contains("domain=redir.") {
                    "301 Moved Permanently\r\nLocation: https://app.example/internal/allow_domain"
                } else {
                    "404 Not Found"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_url_mode() {
    let ask = ask_endpoint().await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let allow = format!("  ask:\n    url: http://{ask}/internal/allow_domain\n    timeout: 1s\n");
    let edge = setup.start(&setup.config_with(&[up], &allow, &acme(&pebble, &["http-01"])));
    let root = pem(&pebble.issuing_root());
    let client = setup.client_trusting(&root, &["yes.tenant.test"], |b| b);
    assert_eq!(
        get_status(&client, setup.url("yes.tenant.test", "/")).await,
        Ok(200)
    );
    assert!(!handshake(setup.https, Some("no.tenant.test"), None).ok);
    assert!(!handshake(setup.https, Some("redir.tenant.test"), None).ok);
    assert_eq!(pebble.orders(), 1);
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_ask_misconfigured_total",
            &[("reason", "redirect")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_decisions_total",
            &[("source", "ask"), ("result", "denied")]
        ),
        2.0,
        "{m}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let log = edge.log_text();
    assert!(
        log.contains("force_ssl"),
        "the redirect hint is missing from the log:\n{log}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_names_costs_one_query_each_and_no_order() {
    let db = TestDb::create().await;
    db.add_company("Real", "{real.tenant.test}", true).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    // The per-client gate would stop this flood after 20 names; raise it to reach the database.
    let extra = format!(
        "{}limits:\n  clients:\n    new_names_burst: 100000\n",
        acme(&pebble, &["http-01"])
    );
    let edge = setup.start(&setup.config_with(&[up], &db_allow(&db.url, "10m", "1h"), &extra));
    let before = rss_kib(edge.child.id());
    let names: Vec<String> = (0..1000)
        .map(|i| format!("r{i}-{:x}.tenant.test", rand::random::<u32>()))
        .collect();
    let https = setup.https;
    for round in 0..2 {
        let chunks: Vec<Vec<String>> = names.chunks(250).map(|c| c.to_vec()).collect();
        let threads: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                std::thread::spawn(move || {
                    chunk
                        .iter()
                        .filter(|n| handshake(https, Some(n), None).ok)
                        .count()
                })
            })
            .collect();
        let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(served, 0, "round {round}");
    }
    let m = setup.scrape();
    let queries = metric(
        &m,
        "tenant_edge_database_queries_total",
        &[("outcome", "ok")],
    );
    assert!(queries <= 1000.0, "{queries} queries for 2 x 1000 names");
    assert!(
        queries >= 990.0,
        "{queries}: the names did not reach the database"
    );
    assert_eq!(pebble.orders(), 0);
    assert_eq!(pebble.accounts(), 0);
    let after = rss_kib(edge.child.id());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    eprintln!("RSS {before} KiB -> {after} KiB after 2000 refused handshakes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cycling_random_names_is_cut_off_before_the_database() {
    let db = TestDb::create().await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let extra = "limits:\n  clients:\n    new_names_burst: 20\n    new_names_interval: 1m\n";
    let _edge = setup.start(&setup.config_with(&[up], &db_allow(&db.url, "10m", "1h"), extra));
    for i in 0..100 {
        assert!(!handshake(setup.https, Some(&format!("scan{i}.tenant.test")), None).ok);
    }
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_database_queries_total",
            &[("outcome", "ok")]
        ),
        20.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_issuances_limited_total",
            &[("limit", "client")]
        ),
        80.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_domain_stored_in_unicode_is_served_under_its_a_label() {
    let db = TestDb::create().await;
    db.add_company("Bücher", "{bücher.tenant.test}", true).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let config = setup.config_with(&[up], &db_allow(&db.url, "1m", "1h"), "");
    let _edge = setup.start(&config);
    let h = handshake(setup.https, Some("xn--bcher-kva.tenant.test"), None);
    assert!(h.ok, "{}", h.error);
    assert_eq!(sans(&h.chain[0]), vec!["xn--bcher-kva.tenant.test"]);
    // A name in no company's list is still refused.
    assert!(!handshake(setup.https, Some("xn--bcher-kvb.tenant.test"), None).ok);
}
