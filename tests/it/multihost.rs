//! Several hosts behaving as one edge through one PostgreSQL: three (then four) edge processes
//! on 127.0.0.2-5 with the same ports, one Pebble whose DNS sends the CA to a host that did not
//! place the order, a shared store, cross-host issuance locks and shared challenges.

use crate::common::pebble::Pebble;
use crate::common::pg::{with_address, TcpProxy, TestDb};
use crate::common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const IPS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];

struct Host {
    setup: EdgeSetup,
    config: PathBuf,
    edge: Option<Proc>,
}

impl Host {
    fn start(&mut self) {
        self.edge = Some(self.setup.start(&self.config));
    }

    fn kill(&mut self) {
        if let Some(mut edge) = self.edge.take() {
            edge.kill();
        }
    }

    fn pid(&self) -> u32 {
        self.edge.as_ref().expect("running").child.id()
    }
}

struct Cluster {
    hosts: Vec<Host>,
    pebble: Pebble,
    root: PathBuf,
    _up: Proc,
    _dir: tempfile::TempDir,
}

/// `n` hosts sharing `store_url`; Pebble validates against `validator` (an index into IPS).
fn cluster(
    n: usize,
    store_url: &str,
    validator: usize,
    validity: Option<u64>,
    va_sleep: Option<u32>,
    challenge: &str,
    extra: &str,
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (up, up_addr) = upstream(dir.path(), "app");
    let https = free_port_on(&IPS);
    let http = free_port_on(&IPS);
    let pebble = Pebble::start_opts(dir.path(), http, https, validity, IPS[validator], va_sleep);
    let root = dir.path().join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root().to_pem().unwrap()).unwrap();
    let hosts: Vec<Host> = IPS[..n]
        .iter()
        .map(|ip| {
            let setup = EdgeSetup::on(ip, https, http);
            let extra = format!(
                "{}store:\n  shared:\n    url: \"{store_url}\"\n    lock_lease: 3s\n    timeout: 2s\nprovisioning:\n  enabled: false\n{extra}",
                pebble.issuer_yaml(&[challenge])
            );
            let config = setup.config(&[up_addr], &extra);
            Host { setup, config, edge: None }
        })
        .collect();
    // One migration before any host starts (what a deploy step does).
    let out = std::process::Command::new(EDGE)
        .args(["migrate", "-c"])
        .arg(&hosts[0].config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Cluster {
        hosts,
        pebble,
        root,
        _up: up,
        _dir: dir,
    }
}

impl Cluster {
    fn start_all(&mut self) {
        for h in &mut self.hosts {
            h.start();
        }
    }

    /// One more host with the same ports and store, started now.
    fn add_host(&mut self) -> usize {
        let first = &self.hosts[0];
        let setup = EdgeSetup::on(
            IPS[self.hosts.len()],
            first.setup.https.port(),
            first.setup.http.port(),
        );
        let text = std::fs::read_to_string(&first.config)
            .unwrap()
            .replace(&first.setup.https.to_string(), &setup.https.to_string())
            .replace(&first.setup.http.to_string(), &setup.http.to_string())
            .replace(&first.setup.metrics.to_string(), &setup.metrics.to_string())
            .replace(
                &first.setup.dir.path().display().to_string(),
                &setup.dir.path().display().to_string(),
            );
        let config = setup.dir.path().join("edge.yaml");
        std::fs::write(&config, text).unwrap();
        let mut host = Host {
            setup,
            config,
            edge: None,
        };
        host.start();
        self.hosts.push(host);
        self.hosts.len() - 1
    }

    fn handshake(&self, host: usize, name: &str) -> Handshake {
        handshake(self.hosts[host].setup.https, Some(name), Some(&self.root))
    }
}

async fn lock_rows(db: &TestDb) -> i64 {
    db.client
        .query_one("SELECT count(*) FROM tenant_edge_locks", &[])
        .await
        .unwrap()
        .get(0)
}

async fn validated_on_another_host(challenge: &str) {
    let db = TestDb::create().await;
    // The CA's DNS answers 127.0.0.3 (host 1) for every name; the order is placed by host 0.
    let mut c = cluster(3, &db.url, 1, None, None, challenge, "");
    c.start_all();
    let h = c.handshake(0, "shop.tenant.test");
    assert!(h.ok, "{}", h.error);
    assert_eq!(sans(&h.chain[0]), vec!["shop.tenant.test"]);
    assert_eq!(c.pebble.orders(), 1);
    let placed = c.hosts[0].setup.scrape();
    assert_eq!(
        metric(
            &placed,
            "tenant_edge_acme_orders_total",
            &[("challenge", challenge), ("outcome", "valid")]
        ),
        1.0
    );
    let validator = c.hosts[1].setup.scrape();
    assert_eq!(
        metric(&validator, "tenant_edge_acme_orders_total", &[]),
        0.0,
        "host 1 placed an order"
    );
    // Pebble validates from several perspectives: every request reached host 1.
    let answered = match challenge {
        "http-01" => metric(
            &validator,
            "tenant_edge_http_requests_total",
            &[("kind", "challenge_hit")],
        ),
        _ => metric(
            &validator,
            "tenant_edge_tls_handshakes_total",
            &[("outcome", "served"), ("source", "acme_challenge")],
        ),
    };
    assert!(
        answered >= 1.0,
        "host 1 answered no validation:\n{validator}"
    );
    // The others serve it without an order.
    for host in 1..3 {
        assert!(c.handshake(host, "shop.tenant.test").ok);
    }
    assert_eq!(c.pebble.orders(), 1);
    assert_eq!(lock_rows(&db).await, 0, "a lock was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_is_answered_by_a_host_that_did_not_order() {
    validated_on_another_host("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_is_answered_by_a_host_that_did_not_order() {
    validated_on_another_host("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_concurrent_first_requests_on_three_hosts_place_one_order() {
    let db = TestDb::create().await;
    let mut c = cluster(3, &db.url, 2, None, None, "tls-alpn-01", "");
    c.start_all();
    let addrs: Vec<SocketAddr> = c.hosts.iter().map(|h| h.setup.https).collect();
    let root = c.root.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(90));
    let threads: Vec<_> = (0..90)
        .map(|i| {
            let (addr, root, barrier) = (addrs[i % 3], root.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                handshake(addr, Some("burst.tenant.test"), Some(&root))
            })
        })
        .collect();
    for t in threads {
        let h = t.join().unwrap();
        assert!(h.ok, "{}", h.error);
    }
    assert_eq!(c.pebble.orders(), 1);
    assert_eq!(lock_rows(&db).await, 0);

    // A fourth host started later serves the name with no order.
    let idx = c.add_host();
    let h = c.handshake(idx, "burst.tenant.test");
    assert!(h.ok, "{}", h.error);
    assert_eq!(c.pebble.orders(), 1, "the late host placed an order");
    let m = c.hosts[idx].setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_tls_handshakes_total",
            &[("outcome", "served"), ("source", "disk")]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_killed_mid_order_is_replaced_after_its_lease() {
    let db = TestDb::create().await;
    // Pebble waits up to 4s before validating: time to kill the host that placed the order.
    let mut c = cluster(3, &db.url, 1, None, Some(4), "http-01", "");
    c.start_all();
    let first = {
        let addr = c.hosts[0].setup.https;
        std::thread::spawn(move || handshake(addr, Some("orphan.tenant.test"), None))
    };
    // Wait until host 0 holds the lock, then SIGKILL it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holder: Option<String> = db
            .client
            .query_opt(
                "SELECT holder FROM tenant_edge_locks WHERE name = 'orphan.tenant.test'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if let Some(holder) = holder {
            assert!(
                holder.contains(&format!("/{}/", c.hosts[0].pid())),
                "{holder}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "host 0 never took the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let orders_before = c.pebble.orders();
    c.hosts[0].kill();
    let _ = first.join();
    // Another host completes the issuance once the dead holder's lease (3s) has run out.
    let started = Instant::now();
    let h = c.handshake(2, "orphan.tenant.test");
    assert!(h.ok, "{}", h.error);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the lock was not respected"
    );
    assert_eq!(c.pebble.orders(), orders_before + 1);
    assert_eq!(lock_rows(&db).await, 0, "a lock was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_on_one_host_is_served_by_the_others_and_a_database_outage_changes_nothing() {
    let db = TestDb::create().await;
    let proxy = TcpProxy::start(crate::common::pg::server_addr()).await;
    let url = with_address(&db.url, proxy.addr);
    let mut c = cluster(
        3,
        &url,
        0,
        Some(30),
        None,
        "http-01",
        "renewal:\n  fraction: 0.5\n  check_interval: 1s\n",
    );
    c.start_all();
    let first = c.handshake(0, "renew.tenant.test");
    assert!(first.ok, "{}", first.error);
    for host in 1..3 {
        assert!(c.handshake(host, "renew.tenant.test").ok);
    }
    let serial = |h: &Handshake| {
        h.chain[0]
            .serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    'renewed: loop {
        assert!(Instant::now() < deadline, "not renewed on every host");
        tokio::time::sleep(Duration::from_millis(500)).await;
        for host in 0..3 {
            let h = c.handshake(host, "renew.tenant.test");
            assert!(h.ok, "host {host}: {}", h.error);
            if serial(&h) == serial(&first) {
                continue 'renewed;
            }
        }
        break;
    }
    assert_eq!(c.pebble.orders(), 2, "one renewal for all hosts");

    // The shared database goes away: every host keeps serving what it has, even after a restart.
    proxy.stop().await;
    for host in 0..3 {
        assert!(c.handshake(host, "renew.tenant.test").ok, "host {host}");
    }
    c.hosts[2].kill();
    c.hosts[2].start();
    let h = c.handshake(2, "renew.tenant.test");
    assert!(
        h.ok,
        "a restarted host did not serve from its disk copy: {}",
        h.error
    );
}

/// `n` requests for made-up challenge tokens on `http`, over keep-alive connections (a new
/// one whenever the edge closes one); returns how many got 404.
fn random_challenge_requests(http: SocketAddr, n: usize) -> usize {
    use std::io::Write;
    let mut not_found = 0;
    let mut conn: Option<std::net::TcpStream> = None;
    for _ in 0..n {
        let token: String = (0..43)
            .map(|_| {
                let i = rand::random::<u8>() % 62;
                (match i {
                    0..=25 => b'a' + i,
                    26..=51 => b'A' + i - 26,
                    _ => b'0' + i - 52,
                }) as char
            })
            .collect();
        let request = format!(
            "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: shop.tenant.test\r\n\r\n"
        );
        for _attempt in 0..2 {
            let s = conn.get_or_insert_with(|| {
                let s = std::net::TcpStream::connect(http).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            });
            if s.write_all(request.as_bytes()).is_err() {
                conn = None;
                continue;
            }
            let (head, _) = read_response(s);
            if head.starts_with("HTTP/1.1 404") {
                not_found += 1;
            }
            if head.to_ascii_lowercase().contains("connection: close") {
                conn = None;
            }
            break;
        }
    }
    not_found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_made_up_challenge_tokens_cost_no_shared_store_queries() {
    let db = TestDb::create().await;
    let proxy = TcpProxy::start(crate::common::pg::server_addr()).await;
    let url = with_address(&db.url, proxy.addr);
    let mut c = cluster(2, &url, 0, None, None, "http-01", "");
    c.start_all();
    // Wait until host 0 hears the announcements (its LISTEN connection is up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &c.hosts[0].setup.scrape(),
        "tenant_edge_notify_connected",
        &[("feed", "certificates")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "host 0 never connected its LISTEN feed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.bytes_to_server();
    let http = c.hosts[0].setup.http;
    let not_found = tokio::task::spawn_blocking(move || random_challenge_requests(http, 10_000))
        .await
        .unwrap();
    let sent = proxy.bytes_to_server() - before;
    assert_eq!(not_found, 10_000);
    // One lookup would be at least a Bind/Execute/Sync of ~60 bytes: 10,000 would be 600 KB.
    // What passes meanwhile is the background traffic (feed probes), a constant.
    assert!(
        sent < 2_000,
        "{sent} bytes of queries for 10,000 made-up tokens"
    );
    let m = c.hosts[0].setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_challenge_lookups_total",
            &[("result", "skipped")]
        ),
        10_000.0,
        "{m}"
    );
    eprintln!("10,000 made-up tokens: {sent} bytes sent to PostgreSQL meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_order_budget_is_shared_by_every_host() {
    let db = TestDb::create().await;
    let extra = "limits:\n  issuance:\n    orders_per_3h: 3\n    renewal_reserve: 1\n";
    let mut c = cluster(2, &db.url, 0, None, None, "http-01", extra);
    c.start_all();
    // One new name per host: the two slots not reserved for renewals.
    for (host, name) in [(0, "one.tenant.test"), (1, "two.tenant.test")] {
        let h = c.handshake(host, name);
        assert!(h.ok, "host {host}, {name}: {}", h.error);
    }
    // The budget is spent for both hosts.
    for (host, name) in [(0, "three.tenant.test"), (1, "four.tenant.test")] {
        let h = c.handshake(host, name);
        assert!(!h.ok, "host {host} ordered {name} beyond the shared budget");
    }
    assert_eq!(c.pebble.orders(), 2);
    let rows: i64 = db
        .client
        .query_one("SELECT count(*) FROM tenant_edge_orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    for host in 0..2 {
        let m = c.hosts[host].setup.scrape();
        assert_eq!(
            metric(
                &m,
                "tenant_edge_issuances_limited_total",
                &[("limit", "account")]
            ),
            1.0,
            "host {host}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_expires_under_its_holder_stores_one_certificate_and_a_lost_one_none() {
    let db = TestDb::create().await;
    // Validations take 3 s: an order outlives the 3 s lease unless it is extended.
    let mut c = cluster(2, &db.url, 0, None, Some(3), "http-01", "");
    c.start_all();
    let certificates = || async {
        db.client
            .query_one("SELECT count(*) FROM tenant_edge_certificates", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    // Start an order on host 0 and change its lock row while it runs (Pebble's validation
    // sleep is random: retried with another name when an order was too quick to catch).
    async fn during_order(
        c: &Cluster,
        db: &TestDb,
        prefix: &str,
        sql: &str,
    ) -> (String, Handshake) {
        for attempt in 0..5 {
            let name = format!("{prefix}{attempt}.tenant.test");
            let (addr, root, order_name) = (c.hosts[0].setup.https, c.root.clone(), name.clone());
            let order = std::thread::spawn(move || handshake(addr, Some(&order_name), Some(&root)));
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut caught = false;
            while !order.is_finished() && Instant::now() < deadline {
                let changed = db.client.execute(sql, &[]).await.unwrap();
                if changed > 0 {
                    caught = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let h = order.join().unwrap();
            if caught {
                return (name, h);
            }
        }
        panic!("never caught an order with its lock held");
    }
    // The lease ran out (a pause, a slow database), nobody took it.
    const EXPIRE: &str = "UPDATE tenant_edge_locks SET expires_at = now() - interval '1 second'";
    // Another host took the lease over (and holds it for a while).
    const TAKE_OVER: &str = "UPDATE tenant_edge_locks SET holder = 'another-host/1/0', expires_at = now() + interval '4 seconds'";

    // 1. Expired but not taken: the holder extends it again, stores its certificate, and the
    //    other host serves it without an order.
    let (name, h) = during_order(&c, &db, "slow", EXPIRE).await;
    assert!(h.ok, "{}", h.error);
    assert_eq!(certificates().await, 1);
    let orders = c.pebble.orders();
    let h = c.handshake(1, &name);
    assert!(h.ok, "{}", h.error);
    assert_eq!(c.pebble.orders(), orders, "a second order for one name");

    // 2. Taken over: the old holder must not store what it ordered.
    let (_, h) = during_order(&c, &db, "lost", TAKE_OVER).await;
    assert!(!h.ok, "the host that lost its lease served its certificate");
    assert_eq!(
        certificates().await,
        1,
        "the host that lost its lease stored it"
    );
    let log = c.hosts[0].edge.as_ref().unwrap().log_text();
    assert!(
        log.contains("the issuance lock was lost while ordering"),
        "{log}"
    );
}
