//! When what the edge depends on fails: the application's database restarting, hanging or
//! silently dropping connections, missed notifications, upstreams restarting or slow, and
//! the edge's own shutdown. Real PostgreSQL behind a TCP proxy the tests break on purpose.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::pg::{self, TcpProxy, TestDb};
use crate::common::*;

/// `allow:` with the database at `url` (1 s lookups) and `extra` lines (indented two spaces).
fn db_allow(url: &str, extra: &str) -> String {
    format!("  database:\n    url: \"{url}\"\n    timeout: 1s\n{extra}")
}

fn metric_of(setup: &EdgeSetup, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&setup.scrape(), name, labels)
}

/// Wait until `f` holds (checked every 100 ms), at most `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

fn handshake_ok(setup: &EdgeSetup, name: &str) -> bool {
    handshake(setup.https, Some(name), None).ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_database_outage_keeps_serving_the_tenants_allowed_before() {
    let db = TestDb::create().await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    db.add_company("Later", "{later.tenant.test}", true).await;
    let proxy = TcpProxy::start(pg::server_addr()).await;
    let url = pg::with_address(&db.url, proxy.addr);
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    // Without pre-provisioning: a name is "allowed before" only when a client asked for it.
    let config = setup.config_with(
        &[a],
        &db_allow(&url, "  stale_ttl: 1s\n"),
        "provisioning:\n  enabled: false\n",
    );
    let mut edge = setup.start(&config);
    assert!(handshake_ok(&setup, "shop.tenant.test"));
    // "Allowed before" reaches the data directory within a few seconds.
    let file = setup.data().join("allow/remembered.json");
    eventually(
        Duration::from_secs(15),
        "remembered.json names the tenant",
        || std::fs::read_to_string(&file).is_ok_and(|t| t.contains("shop.tenant.test")),
    )
    .await;

    // The database goes away, and the edge restarts (a crash, a deploy).
    proxy.stop().await;
    edge.kill();
    let _edge = setup.start(&config);
    assert!(
        handshake_ok(&setup, "shop.tenant.test"),
        "a tenant allowed before the restart was refused"
    );
    assert!(
        !handshake_ok(&setup, "later.tenant.test"),
        "a never-seen name was served during the outage"
    );
    let stale = metric_of(
        &setup,
        "tenant_edge_decisions_total",
        &[("result", "stale_allowed")],
    );
    assert!(stale >= 1.0, "the stale answer was not counted");

    // The database returns: new names work, no restart needed.
    proxy.restart().await;
    eventually(Duration::from_secs(20), "a new name works again", || {
        handshake_ok(&setup, "later.tenant.test")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_costs_one_timeout_then_the_circuit_answers_until_it_returns() {
    let db = TestDb::create().await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    let proxy = TcpProxy::start(pg::server_addr()).await;
    let url = pg::with_address(&db.url, proxy.addr);
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let allow = db_allow(&url, "    circuit_failures: 1\n  allowed_ttl: 1s\n");
    let _edge = setup.start(&setup.config_with(&[a], &allow, ""));
    let client = setup.client_with(&["shop.tenant.test"], |b| b.http1_only());
    let url = setup.url("shop.tenant.test", "/");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    proxy.hang();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the cached yes expired
    let mut took = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        took.push(started.elapsed());
    }
    took.sort();
    let median = took[50];
    eprintln!(
        "hung database: first request {:?}, median {median:?}, slowest {:?}",
        took[99], took[99]
    );
    assert!(median < Duration::from_millis(50), "median {median:?}");
    let open = || {
        metric_of(
            &setup,
            "tenant_edge_source_circuit_open",
            &[("source", "database")],
        )
    };
    assert_eq!(open(), 1.0, "the circuit did not open");

    proxy.unhang();
    eventually(Duration::from_secs(15), "the circuit closes", || {
        open() == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_dropped_pool_connections_cost_at_most_one_timeout() {
    let db = TestDb::create().await;
    let names: [&'static str; 4] = [
        "a.tenant.test",
        "b.tenant.test",
        "c.tenant.test",
        "d.tenant.test",
    ];
    for name in names {
        db.add_company(name, &format!("{{{name}}}"), true).await;
    }
    let proxy = TcpProxy::start(pg::server_addr()).await;
    let url = pg::with_address(&db.url, proxy.addr);
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let allow = db_allow(&url, "    pool_size: 4\n  allowed_ttl: 1s\n");
    let _edge = setup.start(&setup.config_with(&[a], &allow, ""));
    // Four lookups at once: up to four pooled connections.
    let https = setup.https;
    let threads: Vec<_> = names
        .iter()
        .map(|&n| std::thread::spawn(move || handshake(https, Some(n), None).ok))
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    let queries = |outcome: &str| {
        metric_of(
            &setup,
            "tenant_edge_database_queries_total",
            &[("outcome", outcome)],
        )
    };
    let (ok_before, timeouts_before) = (queries("ok"), queries("timeout"));

    // The network path forgets every open connection; new ones work.
    proxy.silence_existing();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in names {
        assert!(handshake_ok(&setup, name), "{name} was refused");
    }
    let timeouts = queries("timeout") - timeouts_before;
    assert!(
        timeouts <= 1.0,
        "{timeouts} lookups timed out on dead connections"
    );
    assert!(
        queries("ok") - ok_before >= 3.0,
        "the lookups did not recover"
    );
}

async fn install_trigger(db: &TestDb) {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/postgres/notify.sql"
    ))
    .unwrap();
    db.client.batch_execute(&sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_missed_while_listen_was_down_is_repaired_on_reconnect_and_a_hung_listen_is_noticed(
) {
    let db = TestDb::create().await;
    install_trigger(&db).await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    let proxy = TcpProxy::start(pg::server_addr()).await;
    let url = pg::with_address(&db.url, proxy.addr);
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let allow = db_allow(
        &url,
        "    notify_probe: 1s\n    scan_interval: 1h\n  allowed_ttl: 1h\n  denied_ttl: 1h\n",
    );
    let _edge = setup.start(&setup.config_with(&[a], &allow, ""));
    let connected = || {
        metric_of(
            &setup,
            "tenant_edge_notify_connected",
            &[("feed", "tenants")],
        )
    };
    eventually(Duration::from_secs(10), "LISTEN connects", || {
        connected() == 1.0
    })
    .await;
    assert!(handshake_ok(&setup, "shop.tenant.test"));

    // The company is deactivated while the edge cannot hear it.
    proxy.stop().await;
    db.client
        .execute(
            "UPDATE companies SET active = false WHERE name = 'Shop'",
            &[],
        )
        .await
        .unwrap();
    proxy.restart().await;
    let took = eventually(Duration::from_secs(20), "the missed change applies", || {
        !handshake_ok(&setup, "shop.tenant.test")
    })
    .await;
    eprintln!("missed deactivation applied {took:?} after the database came back");

    // A LISTEN connection that hangs (no error, no answer) is noticed and replaced.
    eventually(Duration::from_secs(10), "LISTEN is back", || {
        connected() == 1.0
    })
    .await;
    proxy.hang();
    eventually(Duration::from_secs(20), "a hung LISTEN is noticed", || {
        connected() == 0.0
    })
    .await;
    proxy.unhang();
    eventually(Duration::from_secs(40), "LISTEN is replaced", || {
        connected() == 1.0
    })
    .await;
}

/// The edge config with `extra` inserted into the `app` pool (after its connect_timeout).
fn with_pool_keys(
    setup: &EdgeSetup,
    backends: &[std::net::SocketAddr],
    keys: &str,
) -> std::path::PathBuf {
    let path = setup.config(backends, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "      connect_timeout: 1s\n",
        &format!("      connect_timeout: 1s\n{keys}"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_is_used_as_soon_as_it_listens_and_a_late_head_gets_504() {
    let setup = EdgeSetup::new();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut up = upstream_on(setup.dir.path(), "a", addr);
    let _edge = setup.start(&with_pool_keys(
        &setup,
        &[addr],
        "      response_timeout: 3s\n",
    ));
    let client = setup.client(&["shop.tenant.test"]);
    let get = |path: &str| client.get(setup.url("shop.tenant.test", path)).send();
    assert_eq!(get("/").await.unwrap().status(), 200);

    // kamal-proxy restarts, for longer than the health-check interval.
    up.kill();
    let healthy = || {
        metric_of(
            &setup,
            "tenant_edge_upstream_backends_healthy",
            &[("pool", "app")],
        )
    };
    eventually(
        Duration::from_secs(10),
        "the backend is marked down",
        || healthy() == 0.0,
    )
    .await;
    let _up = upstream_on(setup.dir.path(), "a", addr);
    let started = Instant::now();
    assert_eq!(
        get("/").await.unwrap().status(),
        200,
        "served as soon as it listens"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A response head later than response_timeout: 504, at the timeout.
    let started = Instant::now();
    let resp = get("/sleep/30000").await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "answered after {took:?}"
    );
}

/// An upgraded (WebSocket) connection through the edge: the 101, then raw bytes.
fn websocket(setup: &EdgeSetup) -> openssl::ssl::SslStream<std::net::TcpStream> {
    let mut s = tls_over(tcp_from("127.0.0.1", setup.https), "shop.tenant.test", &[]);
    s.write_all(
        b"GET /cable HTTP/1.1\r\nHost: shop.tenant.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed before the 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

fn echo(s: &mut openssl::ssl::SslStream<std::net::TcpStream>, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_survives_and_a_deactivated_tenant_loses_it_within_a_second() {
    let db = TestDb::create().await;
    install_trigger(&db).await;
    db.add_company("Shop", "{shop.tenant.test}", true).await;
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let allow = db_allow(&db.url, "  allowed_ttl: 1h\n");
    let _edge = setup.start(&setup.config_with(&[a], &allow, ""));
    eventually(Duration::from_secs(10), "LISTEN connects", || {
        metric_of(
            &setup,
            "tenant_edge_notify_connected",
            &[("feed", "tenants")],
        ) == 1.0
    })
    .await;
    let mut ws = tokio::task::block_in_place(|| {
        let mut ws = websocket(&setup);
        echo(&mut ws, b"hello");
        ws
    });
    // Idle for longer than every request timeout (response 60 s, client body 30 s).
    tokio::time::sleep(Duration::from_secs(90)).await;
    tokio::task::block_in_place(|| echo(&mut ws, b"still here"));

    // The company is deactivated: its WebSocket is closed at once.
    db.client
        .execute(
            "UPDATE companies SET active = false WHERE name = 'Shop'",
            &[],
        )
        .await
        .unwrap();
    let took = tokio::task::block_in_place(|| {
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        read_until_closed(&mut ws, Duration::from_secs(5));
        started.elapsed()
    });
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert_eq!(
        metric_of(
            &setup,
            "tenant_edge_connections_closed_total",
            &[("reason", "not_allowed")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_longer_than_the_grace_period_finish() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let path = setup.config(&[a], "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("  grace_period: 1s\n", "  grace_period: 5s\n")
        .replace(
            "  graceful_shutdown_timeout: 1s\n",
            "  graceful_shutdown_timeout: 15s\n",
        );
    std::fs::write(&path, text).unwrap();
    let edge = setup.start(&path);
    let client = setup.client_with(&["shop.tenant.test"], |b| {
        b.timeout(Duration::from_secs(40))
    });
    let url = setup.url("shop.tenant.test", "/sleep/15000");
    let request = tokio::spawn(async move {
        let started = Instant::now();
        let status = client.get(url).send().await.map(|r| r.status().as_u16());
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &edge.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::net::TcpStream::connect(setup.https).is_err(),
        "still accepting after SIGTERM"
    );
    let (status, took) = request.await.unwrap();
    assert_eq!(status.expect("the request was cut"), 200);
    assert!(took >= Duration::from_secs(15), "{took:?}");
}
