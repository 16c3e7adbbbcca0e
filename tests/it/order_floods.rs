//! Order floods against Pebble: made-up names under a platform wildcard cost a client its
//! never-seen-name tokens, and the account-level order budget holds across restarts.

use std::time::{Duration, Instant};

use crate::common::pebble::Pebble;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_names_under_a_platform_wildcard_place_at_most_the_client_burst_of_orders() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    // A generous global rate, so that only the per-client gate stands in the way.
    let extra = format!(
        "{}limits:\n  issuance:\n    interval: 10ms\n    burst: 100\n    max_concurrent: 50\n  clients:\n    new_names_burst: 20\n    new_names_interval: 1s\n",
        pebble.issuer_yaml(&["tls-alpn-01"])
    );
    let _edge = setup.start(&setup.config(&[up], &extra));
    let started = Instant::now();
    let https = setup.https;
    let threads: Vec<_> = (0..10)
        .map(|t| {
            std::thread::spawn(move || {
                (0..20)
                    .filter(|i| {
                        let name = format!("r{}-{t}-{i}.tenant.test", rand_suffix());
                        handshake(https, Some(&name), None).ok
                    })
                    .count()
            })
        })
        .collect();
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs() as usize;
    let orders = pebble.orders();
    // 20 at once, then one a second for as long as the flood lasted.
    let bound = 20 + elapsed + 1;
    eprintln!("200 random names from one address: {orders} orders, {served} served, {elapsed}s");
    assert!(
        orders <= bound,
        "{orders} orders in {elapsed}s (bound {bound})"
    );
    assert!(
        served <= orders,
        "{served} names served with {orders} orders"
    );
    let m = setup.scrape();
    let dropped = metric(
        &m,
        "tenant_edge_issuances_limited_total",
        &[("limit", "client")],
    );
    assert!(
        dropped as usize >= 200 - bound,
        "only {dropped} of 200 handshakes were dropped by the gate"
    );
}

/// A few random hex digits, so that no two runs share names.
fn rand_suffix() -> String {
    format!("{:x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_order_budget_refuses_beyond_its_limit_and_survives_a_restart() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let extra = format!(
        "{}limits:\n  issuance:\n    orders_per_3h: 3\n    renewal_reserve: 1\n",
        pebble.issuer_yaml(&["tls-alpn-01"])
    );
    let config = setup.config(&[up], &extra);
    let mut edge = setup.start(&config);
    // Two new names use the two slots that are not reserved for renewals.
    for name in ["one.tenant.test", "two.tenant.test"] {
        let h = handshake(setup.https, Some(name), None);
        assert!(h.ok, "{name}: {}", h.error);
    }
    let h = handshake(setup.https, Some("three.tenant.test"), None);
    assert!(
        !h.ok,
        "a third new name was issued beyond the account budget"
    );
    assert_eq!(pebble.orders(), 2);
    let limited = |setup: &EdgeSetup| {
        metric(
            &setup.scrape(),
            "tenant_edge_issuances_limited_total",
            &[("limit", "account")],
        )
    };
    assert_eq!(limited(&setup), 1.0);

    // After a restart the budget is still spent; the certificates already issued still serve.
    edge.kill();
    let _edge = setup.start(&config);
    let h = handshake(setup.https, Some("one.tenant.test"), None);
    assert!(h.ok, "{}", h.error);
    let started = Instant::now();
    let h = handshake(setup.https, Some("four.tenant.test"), None);
    assert!(!h.ok, "the budget was reset by the restart");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal waited"
    );
    assert_eq!(limited(&setup), 1.0);
    assert_eq!(pebble.orders(), 2);
    let file = setup.data().join("limits/orders.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
}
