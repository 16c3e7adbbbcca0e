//! Certificate lifecycle against real Pebble and PostgreSQL: renewal from each certificate's
//! own dates, renewal failures that never let a valid certificate lapse, instant tenant changes
//! through LISTEN/NOTIFY, and pre-provisioning.

use crate::common::pebble::Pebble;
use crate::common::pg::TestDb;
use crate::common::*;
use std::time::{Duration, Instant};

fn pem(x: &openssl::x509::X509) -> Vec<u8> {
    x.to_pem().unwrap()
}

fn serial(h: &Handshake) -> String {
    h.chain[0]
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

fn not_after(h: &Handshake) -> String {
    h.chain[0].not_after().to_string()
}

#[test]
fn short_lived_certificates_are_renewed_and_a_failed_renewal_keeps_serving() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    // 30-second certificates: due when half the lifetime is left.
    let mut pebble = Pebble::start_with_validity(
        setup.dir.path(),
        setup.http.port(),
        setup.https.port(),
        Some(30),
    );
    let extra = format!(
        "{}renewal:\n  fraction: 0.5\n  check_interval: 1s\nlimits:\n  issuance:\n    backoff_initial: 2s\n",
        pebble.issuer_yaml(&["http-01"])
    );
    let edge = setup.start(&setup.config(&[up], &extra));
    let root = setup.dir.path().join("pebble-root.pem");
    std::fs::write(&root, pem(&pebble.issuing_root())).unwrap();

    let first = handshake(setup.https, Some("short.tenant.test"), Some(&root));
    assert!(first.ok, "{}", first.error);
    let started = Instant::now();
    // Keep handshaking through the renewal: every one succeeds; the certificate changes once
    // half its lifetime is gone, without any client waiting on an order.
    let mut renewed = None;
    while started.elapsed() < Duration::from_secs(25) {
        let h = handshake(setup.https, Some("short.tenant.test"), Some(&root));
        assert!(
            h.ok,
            "handshake failed during renewal at {:?}: {}",
            started.elapsed(),
            h.error
        );
        if serial(&h) != serial(&first) {
            renewed = Some((started.elapsed(), h));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (after, second) = renewed.expect("the certificate was not renewed within 25s");
    assert!(
        after >= Duration::from_secs(10),
        "renewed too early ({after:?}): the schedule ignores the dates"
    );
    assert_eq!(pebble.orders(), 2);
    let m = setup.scrape();
    assert_eq!(
        metric(&m, "tenant_edge_renewals_total", &[("outcome", "renewed")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_tls_handshakes_total",
            &[("outcome", "served"), ("source", "issued")]
        ),
        1.0
    );

    // The CA goes away: the next renewal fails, the current certificate is still served until
    // it expires, and the failure is counted and logged.
    pebble.stop();
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let m = setup.scrape();
        if metric(&m, "tenant_edge_renewals_total", &[("outcome", "failed")]) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no failed renewal counted:\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let h = handshake(setup.https, Some("short.tenant.test"), Some(&root));
    assert!(
        h.ok,
        "the still-valid certificate was not served after a failed renewal: {}",
        h.error
    );
    assert_eq!(
        serial(&h),
        serial(&second),
        "{} vs {}",
        not_after(&h),
        not_after(&second)
    );
    assert!(
        edge.log_text()
            .contains("the current certificate is served until it expires"),
        "{}",
        edge.log_text()
    );
}

async fn install_trigger(db: &TestDb) {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/postgres/notify.sql"
    ))
    .unwrap();
    db.client
        .batch_execute(&sql)
        .await
        .expect("install deploy/postgres/notify.sql");
}

/// `allow:` with long TTLs: only NOTIFY can make changes visible quickly.
fn db_allow(url: &str) -> String {
    format!(
        "  database:\n    url: \"{url}\"\n    timeout: 1s\n  allowed_ttl: 1h\n  denied_ttl: 1h\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notified_tenant_changes_apply_within_a_second() {
    let db = TestDb::create().await;
    install_trigger(&db).await;
    db.add_company("Cartier", "{shop.cartier.test}", true).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let extra = format!(
        "{}provisioning:\n  enabled: false\n",
        pebble.issuer_yaml(&["tls-alpn-01"])
    );
    let _edge = setup.start(&setup.config_with(&[up], &db_allow(&db.url), &extra));
    let root = setup.dir.path().join("pebble-root.pem");
    std::fs::write(&root, pem(&pebble.issuing_root())).unwrap();
    wait_for_metric(&setup, "tenant_edge_notify_connected", &[], 1.0).await;

    assert!(handshake(setup.https, Some("shop.cartier.test"), Some(&root)).ok);
    // A name not yet added is refused, and that no is cached for an hour...
    assert!(!handshake(setup.https, Some("new.cartier.test"), None).ok);

    // ...deactivation: refused a second later (the yes was cached for an hour).
    db.client
        .execute("UPDATE companies SET active = false", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !handshake(setup.https, Some("shop.cartier.test"), None).ok,
        "still served after deactivation"
    );

    // Reactivation: served again, from the stored certificate, without a new order.
    db.client
        .execute("UPDATE companies SET active = true", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(handshake(setup.https, Some("shop.cartier.test"), Some(&root)).ok);
    assert_eq!(pebble.orders(), 1);

    // ...an added domain is allowed at once despite the cached no.
    db.client
        .execute(
            "UPDATE companies SET dns_names = dns_names || '{New.Cartier.test}'::citext[]",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let h = handshake(setup.https, Some("new.cartier.test"), Some(&root));
    assert!(h.ok, "{}", h.error);
    let m = setup.scrape();
    assert!(
        metric(
            &m,
            "tenant_edge_notifications_total",
            &[("outcome", "applied")]
        ) >= 3.0,
        "{m}"
    );
}

async fn wait_for_metric(setup: &EdgeSetup, name: &str, labels: &[(&str, &str)], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&setup.scrape(), name, labels) != value {
        assert!(Instant::now() < deadline, "{name} never reached {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tenant_domains_are_issued_before_the_first_request() {
    let db = TestDb::create().await;
    install_trigger(&db).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let _edge = setup.start(&setup.config_with(
        &[up],
        &db_allow(&db.url),
        &pebble.issuer_yaml(&["http-01"]),
    ));
    wait_for_metric(&setup, "tenant_edge_notify_connected", &[], 1.0).await;

    db.add_company(
        "Louboutin",
        "{shop.louboutin.test,www.louboutin.test}",
        true,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while setup.cert_dirs() != vec!["shop.louboutin.test", "www.louboutin.test"] {
        assert!(
            Instant::now() < deadline,
            "not pre-provisioned: {:?}",
            setup.cert_dirs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pebble.orders(), 2);
    // The files are written just before the fill task puts the certificate in memory; a
    // handshake in between would be served from disk. The startup scan may be the one that
    // issues them (when its query runs after the insert); the notifications then find them
    // valid, so only the issued series is waited for.
    wait_for_metric(
        &setup,
        "tenant_edge_provisioned_total",
        &[("outcome", "issued")],
        2.0,
    )
    .await;
    let root = setup.dir.path().join("pebble-root.pem");
    std::fs::write(&root, pem(&pebble.issuing_root())).unwrap();
    for name in ["shop.louboutin.test", "www.louboutin.test"] {
        assert!(handshake(setup.https, Some(name), Some(&root)).ok);
    }
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_tls_handshakes_total",
            &[("outcome", "served"), ("source", "memory")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_provisioned_total",
            &[("outcome", "issued")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(pebble.orders(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_scan_provisions_names_added_without_the_trigger() {
    let db = TestDb::create().await;
    db.add_company("Dior", "{a.dior.test}", true).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let allow = format!(
        "  database:\n    url: \"{}\"\n    scan_interval: 1s\n",
        db.url
    );
    let _edge = setup.start(&setup.config_with(&[up], &allow, &pebble.issuer_yaml(&["http-01"])));
    let deadline = Instant::now() + Duration::from_secs(15);
    while setup.cert_dirs() != vec!["a.dior.test"] {
        assert!(
            Instant::now() < deadline,
            "not provisioned by the scan: {:?}",
            setup.cert_dirs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.add_company("Dior 2", "{b.dior.test}", true).await;
    while setup.cert_dirs() != vec!["a.dior.test", "b.dior.test"] {
        assert!(
            Instant::now() < deadline,
            "not provisioned by the scan: {:?}",
            setup.cert_dirs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pebble.orders(), 2);
}
