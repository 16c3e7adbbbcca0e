//! On-demand issuance against a real ACME CA: Pebble with pebble-challtestsrv as its DNS,
//! validating through the edge's own HTTP and TLS listeners.

use crate::common::pebble::Pebble;
use crate::common::*;
use std::time::{Duration, Instant};

fn pem(x: &openssl::x509::X509) -> Vec<u8> {
    x.to_pem().unwrap()
}

async fn first_request_gets_a_pebble_certificate(challenge: &str) {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config(&[up], &pebble.issuer_yaml(&[challenge]));
    let edge = setup.start(&config);

    let root = pem(&pebble.issuing_root());
    let client = setup.client_trusting(&root, &["shop.tenant.test"], |b| b);
    let started = Instant::now();
    let resp = client
        .get(setup.url("shop.tenant.test", "/hello"))
        .send()
        .await
        .expect("request");
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("upstream: app"), "{body}");
    eprintln!("{challenge}: first request for a new name answered in {elapsed:?}");

    // The served chain verifies against Pebble's root and names exactly the host.
    let root_file = setup.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let h = handshake(setup.https, Some("shop.tenant.test"), Some(&root_file));
    assert!(h.ok, "{}", h.error);
    assert_eq!(sans(&h.chain[0]), vec!["shop.tenant.test"]);
    assert!(
        h.chain.len() >= 2,
        "the intermediate is served with the leaf"
    );

    assert_eq!(pebble.orders(), 1);
    // A validation is routine: no WARN or ERROR line for it.
    let log = edge.log_text();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_acme_orders_total",
            &[("challenge", challenge), ("outcome", "valid")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_issuances_total",
            &[("issuer", "acme"), ("outcome", "success")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_on_first_request() {
    first_request_gets_a_pebble_certificate("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issuance_on_first_request() {
    first_request_gets_a_pebble_certificate("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_place_no_order_and_restarts_reuse_account_and_certificates() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config(&[up], &pebble.issuer_yaml(&["http-01"]));
    let root = pem(&pebble.issuing_root());
    {
        let _edge = setup.start(&config);
        for sni in [
            Some("shop.other.test"),
            Some("bad_name!.tenant.test"),
            Some("127.0.0.1"),
            None,
        ] {
            assert!(!handshake(setup.https, sni, None).ok, "{sni:?}");
        }
        assert_eq!(pebble.orders(), 0, "a refused name placed an order");
        assert_eq!(
            pebble.accounts(),
            0,
            "no account before the first allowed name"
        );

        let client = setup.client_trusting(&root, &["a.tenant.test"], |b| b);
        let resp = client
            .get(setup.url("a.tenant.test", "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!((pebble.orders(), pebble.accounts()), (1, 1));
    }
    let account = std::fs::read_dir(setup.data().join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(account.join("account.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Restart: the stored certificate is served without an order; a new name reuses the account.
    let _edge = setup.start(&config);
    let client = setup.client_trusting(&root, &["a.tenant.test", "b.tenant.test"], |b| b);
    assert_eq!(
        client
            .get(setup.url("a.tenant.test", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        pebble.orders(),
        1,
        "a restart placed a new order for a stored certificate"
    );
    assert_eq!(
        client
            .get(setup.url("b.tenant.test", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        (pebble.orders(), pebble.accounts()),
        (2, 1),
        "the account must be reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_place_one_order() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let _edge = setup.start(&setup.config(&[up], &pebble.issuer_yaml(&["tls-alpn-01"])));
    let root = pem(&pebble.issuing_root());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            // A client each: 20 separate connections, 20 handshakes.
            let client = setup.client_trusting(&root, &["burst.tenant.test"], |b| b);
            let url = setup.url("burst.tenant.test", "/");
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("request"), 200);
    }
    assert_eq!(pebble.orders(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_fails_fast_then_recovers() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let mut pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let extra = format!(
        "{}tls:\n  issue_timeout: 3s\nlimits:\n  issuance:\n    backoff_initial: 3s\n",
        pebble.issuer_yaml(&["http-01"])
    );
    let _edge = setup.start(&setup.config(&[up], &extra));
    pebble.stop();

    let started = Instant::now();
    let h = handshake(setup.https, Some("down.tenant.test"), None);
    assert!(!h.ok);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?}",
        started.elapsed()
    );
    let failed_at = Instant::now();

    // The CA is back, but the name backs off: no new order until the backoff has passed.
    pebble.resume();
    let h = handshake(setup.https, Some("down.tenant.test"), None);
    assert!(!h.ok, "served during the backoff");
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_issuances_limited_total",
            &[("limit", "backoff")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_issuances_total",
            &[("issuer", "acme"), ("outcome", "failure")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(pebble.orders(), 0);

    let root = pem(&pebble.issuing_root());
    let client = setup.client_trusting(&root, &["down.tenant.test"], |b| b);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.get(setup.url("down.tenant.test", "/")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            other => panic!("no certificate after Pebble returned: {other:?}"),
        }
    }
    assert!(
        failed_at.elapsed() >= Duration::from_secs(3),
        "the backoff was not applied"
    );
    assert_eq!(pebble.orders(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_never_seen_names_at_once_all_succeed_with_the_default_limits() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let _edge = setup.start(&setup.config(&[up], &pebble.issuer_yaml(&["tls-alpn-01"])));
    let root = pem(&pebble.issuing_root());
    let names: Vec<String> = (0..10).map(|i| format!("n{i}.tenant.test")).collect();
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let client = setup.client_trusting(&root, &[name.as_str()], |b| b);
            let url = setup.url(name, "/");
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("request"), 200);
    }
    assert_eq!(pebble.orders(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rate_bucket_delays_new_orders_instead_of_refusing_them() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let extra = format!(
        "{}limits:\n  issuance:\n    interval: 1s\n    burst: 2\n",
        pebble.issuer_yaml(&["http-01"])
    );
    let _edge = setup.start(&setup.config(&[up], &extra));
    let root = pem(&pebble.issuing_root());
    let waits = |m: &str, what: &str| {
        metric(
            m,
            &format!("tenant_edge_issuance_limit_wait_seconds_{what}"),
            &[("limit", "rate")],
        )
    };
    assert_eq!(waits(&setup.scrape(), "count"), 0.0);
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let name = format!("paced{i}.tenant.test");
            let client = setup.client_trusting(&root, &[name.as_str()], |b| b);
            let url = setup.url(&name, "/");
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("request"), 200);
    }
    // Two tokens at once, then one a second: the last order waited about two seconds.
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pebble.orders(), 4);
    // The two orders that waited for a token show in the wait metric, with their wait.
    let m = setup.scrape();
    assert_eq!(waits(&m, "count"), 2.0, "{m}");
    assert!(waits(&m, "sum") >= 1.5, "{m}");
    // Waiting is not being held back: nothing was refused.
    assert_eq!(
        metric(
            &m,
            "tenant_edge_issuances_limited_total",
            &[("limit", "rate")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_forgot_the_account_gets_a_new_one_and_check_says_so_first() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let mut pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config(&[up], &pebble.issuer_yaml(&["http-01"]));
    let _edge = setup.start(&config);
    assert!(handshake(setup.https, Some("first.tenant.test"), None).ok);
    assert_eq!(pebble.accounts(), 1);

    // Pebble restarts: it keeps no state, so the account is gone.
    pebble.stop();
    pebble.resume();
    let out = std::process::Command::new(EDGE)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("no longer knows the account"),
        "check did not report the dead account:\n{report}"
    );

    // The next order registers a new account and succeeds.
    let h = handshake(setup.https, Some("second.tenant.test"), None);
    assert!(h.ok, "{}", h.error);
    assert_eq!(pebble.accounts(), 2);
    assert_eq!(
        metric(
            &setup.scrape(),
            "tenant_edge_acme_accounts_replaced_total",
            &[]
        ),
        1.0
    );
    // And it is the one kept: later orders place no new account.
    assert!(handshake(setup.https, Some("third.tenant.test"), None).ok);
    assert_eq!(pebble.accounts(), 2);
}
