//! The HTTPS proxy and the HTTP listener with real upstream processes and a real client
//! (reqwest over rustls, resolving the test names to the edge).

use crate::common::*;
use std::collections::HashMap;
use std::time::Duration;

/// The edge's pool counters once they reach `want` (or after 5 s, as they were then): a
/// request is counted by the logging hook, which runs after its response went out, so a
/// scrape right after the last response can come before it.
async fn requests_counted(setup: &EdgeSetup, class: &str, want: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = metric(
            &setup.scrape(),
            "tenant_edge_upstream_requests_total",
            &[("pool", "app"), ("class", class)],
        );
        if got >= want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, Option<String>) {
    let resp = client.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let upstream = resp
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.text().await.unwrap(), upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_fails_over_and_reports() {
    let setup = EdgeSetup::new();
    let (mut up_a, a) = upstream(setup.dir.path(), "a");
    let (mut up_b, b) = upstream(setup.dir.path(), "b");
    let _edge = setup.start(&setup.config(&[a, b], ""));
    let client = setup.client(&["shop.tenant.test"]);
    let url = setup.url("shop.tenant.test", "/x");

    // Both healthy: round robin alternates.
    let mut seen = HashMap::new();
    for _ in 0..10 {
        let (status, _, upstream) = get(&client, &url).await;
        assert_eq!(status, 200);
        *seen.entry(upstream.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");

    // One killed: after the health check (500ms) every request succeeds on the other.
    up_a.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..10 {
        let (status, _, upstream) = get(&client, &url).await;
        assert_eq!((status, upstream.as_deref()), (200, Some("b")));
    }
    // Chosen by health, not found by a failed connect: no request tried the dead one first.
    let m = setup.scrape();
    assert_eq!(
        metric(&m, "tenant_edge_upstream_retries_total", &[("pool", "app")]),
        0.0,
        "{m}"
    );

    // Both dead: 502 with a short body.
    up_b.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body, _) = get(&client, &url).await;
    assert_eq!(status, 502);
    assert!(body.contains("no upstream answered"), "{body}");

    assert_eq!(requests_counted(&setup, "2xx", 20.0).await, 20.0);
    assert_eq!(requests_counted(&setup, "5xx", 1.0).await, 1.0);
    let m = setup.scrape();
    assert_eq!(
        metric(&m, "tenant_edge_upstream_backends", &[("pool", "app")]),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_upstream_backends_healthy",
            &[("pool", "app")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_request_duration_seconds_count",
            &[("pool", "app")]
        ),
        21.0
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_tls_handshakes_total",
            &[("outcome", "served"), ("source", "issued")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "tenant_edge_issuances_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(metric(&m, "tenant_edge_certificates_cached", &[]), 1.0);
    assert!(
        metric(
            &m,
            "tenant_edge_certificate_soonest_expiry_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_on_another_before_any_health_check() {
    let setup = EdgeSetup::new();
    let (_up, live) = upstream(setup.dir.path(), "live");
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // No health check: only the connect retry can save requests that land on the dead one.
    let config = setup.config(&[dead, live], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let no_hc = text
        .split("      health_check:")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&config, no_hc).unwrap();
    let _edge = setup.start(&config);
    let client = setup.client(&["shop.tenant.test"]);
    for _ in 0..6 {
        let (status, _, upstream) = get(&client, &setup.url("shop.tenant.test", "/")).await;
        assert_eq!((status, upstream.as_deref()), (200, Some("live")));
    }
    let m = setup.scrape();
    // Round robin may send every first attempt to the dead backend; each was retried once.
    let retries = metric(&m, "tenant_edge_upstream_retries_total", &[("pool", "app")]);
    assert!((1.0..=6.0).contains(&retries), "{retries}");
}

/// An upstream that answers the first request of each connection and, on the connection's
/// next request (other than a health check), closes it unanswered: what a kept-alive
/// connection looks like when the upstream closed it just as the edge reused it. Returns its
/// address and the number of connections it accepted.
fn closes_reused_connections() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut answered = 0;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    head.clear();
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let health_check = head.starts_with(b"GET /up ");
                    if answered > 0 && !health_check {
                        return; // closed, the request unanswered
                    }
                    let reply =
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream: raw\r\n\r\nok";
                    if conn.write_all(reply).is_err() {
                        return;
                    }
                    if !health_check {
                        answered += 1;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The only backend closed a kept-alive connection as the edge reused it: the request is
/// sent again on a new connection to that same backend, not answered 502 for want of another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_upstream_connection_found_closed_is_retried_on_a_new_one() {
    let setup = EdgeSetup::new();
    let (addr, accepted) = closes_reused_connections();
    let _edge = setup.start(&setup.config(&[addr], ""));
    // One client connection (HTTP/1.1), so that its requests share the edge's upstream pool.
    let client = setup.client_with(&["shop.tenant.test"], |b| b.http1_only());
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..4 {
        let (status, body, upstream) = get(&client, &setup.url("shop.tenant.test", "/")).await;
        assert_eq!(
            (status, body.as_str(), upstream.as_deref()),
            (200, "ok", Some("raw")),
            "request {i}"
        );
    }
    // Every request after the first found its pooled connection closed and made a new one.
    let made = accepted.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(made >= 4, "{made} upstream connections for 4 requests");
    let m = setup.scrape();
    assert_eq!(
        metric(&m, "tenant_edge_upstream_retries_total", &[("pool", "app")]),
        0.0,
        "no connect failed: {m}"
    );
    assert_eq!(requests_counted(&setup, "2xx", 4.0).await, 4.0);
}

/// What the upstream saw of one request carrying spoofed forwarding headers.
async fn forwarded_as_seen_upstream(setup: &EdgeSetup, http2: bool) -> String {
    let client = if http2 {
        setup.client(&["shop.tenant.test"])
    } else {
        setup.client_with(&["shop.tenant.test"], |b| b.http1_only())
    };
    let resp = client
        .get(setup.url("shop.tenant.test", "/path?q=1"))
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-Proto", "http")
        .header("Forwarded", "for=203.0.113.7;proto=http")
        .header("X-Real-IP", "203.0.113.7")
        .header("Client-IP", "203.0.113.7")
        .header("True-Client-IP", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let expected = if http2 {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };
    assert_eq!(resp.version(), expected);
    resp.text().await.unwrap().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_headers_are_replaced_by_the_real_client() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    let port = setup.https.port();
    for http2 in [false, true] {
        let body = forwarded_as_seen_upstream(&setup, http2).await;
        assert!(body.contains("get /path?q=1 http/1.1"), "{body}");
        assert!(
            body.contains(&format!("host: shop.tenant.test:{port}\n")),
            "{body}"
        );
        assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        assert!(
            body.contains(&format!("x-forwarded-host: shop.tenant.test:{port}\n")),
            "{body}"
        );
        for spoofed in ["203.0.113.7", "proto=http", "x-forwarded-proto: http\n"] {
            assert!(!body.contains(spoofed), "{spoofed} reached the app: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_keeps_its_forwarding_headers_and_is_appended() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let extra = "forwarding:\n  trusted_proxies: [\"127.0.0.0/8\"]\n";
    let _edge = setup.start(&setup.config(&[a], extra));
    for http2 in [false, true] {
        let body = forwarded_as_seen_upstream(&setup, http2).await;
        assert!(
            body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
            "{body}"
        );
        assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
        assert!(
            body.contains("forwarded: for=203.0.113.7;proto=http\n"),
            "{body}"
        );
        assert!(body.contains("x-real-ip: 203.0.113.7\n"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misdirected_requests_get_421_and_http_gets_308() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    let client = setup.client_with(&["shop.tenant.test", "other.tenant.test"], |b| {
        b.http1_only()
    });

    // Host (port stripped, any case) equal to the SNI: proxied.
    let ok = client
        .get(setup.url("shop.tenant.test", "/"))
        .header("Host", "SHOP.tenant.test:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Host naming another (allowed) tenant on this connection: 421.
    let resp = client
        .get(setup.url("shop.tenant.test", "/"))
        .header("Host", "other.tenant.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 421);

    let raw = http_raw(setup.http, "/a/b?c=d", "Shop.Tenant.test:80");
    assert!(raw.starts_with("HTTP/1.1 308"), "{raw}");
    let location = format!(
        "location: https://shop.tenant.test:{}/a/b?c=d\r\n",
        setup.https.port()
    );
    assert!(raw.to_ascii_lowercase().contains(&location), "{raw}");
    let (status, _) = http_get(
        setup.http,
        "/.well-known/acme-challenge/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "shop.tenant.test",
    );
    assert!(status.contains("404"), "{status}");
    let (status, _) = http_get(
        setup.http,
        "/.well-known/acme-challenge/..%2F..%2Fetc",
        "shop.tenant.test",
    );
    assert!(status.contains("400"), "{status}");

    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_requests_refused_total",
            &[("reason", "misdirected")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_http_requests_total",
            &[("kind", "redirect")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_http_requests_total",
            &[("kind", "challenge_miss")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tenant_edge_http_requests_total",
            &[("kind", "bad_token")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hosts_are_refused_on_both_ports() {
    use std::io::Write;
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    let (https, http) = (setup.https, setup.http);
    tokio::task::spawn_blocking(move || {
        for len in [254, 60_000] {
            let host = format!("{}.tenant.test:443", "a".repeat(len));
            let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let mut tls = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
            tls.write_all(request.as_bytes()).unwrap();
            let (head, _) = read_response(&mut tls);
            assert!(
                head.starts_with("HTTP/1.1 421") || head.starts_with("HTTP/1.1 400"),
                "{len}-byte host on :443: {head}"
            );
            let mut plain = tcp_from("127.0.0.1", http);
            plain.write_all(request.as_bytes()).unwrap();
            let (head, _) = read_response(&mut plain);
            assert!(
                head.starts_with("HTTP/1.1 400"),
                "{len}-byte host on :80: {head}"
            );
        }
    })
    .await
    .unwrap();
}
