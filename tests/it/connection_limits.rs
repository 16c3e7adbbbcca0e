//! Connection limits with real clients from several loopback addresses: the total and
//! per-address caps, requests and resets per connection, HTTP/2 concurrent streams.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

use crate::common::*;

fn closed_total(setup: &EdgeSetup, reason: &str) -> f64 {
    metric(
        &setup.scrape(),
        "tenant_edge_connections_closed_total",
        &[("reason", reason)],
    )
}

fn start(setup: &EdgeSetup, limits: &str) -> (Proc, Proc) {
    let (up, a) = upstream(setup.dir.path(), "a");
    let extra = format!("limits:\n  connections:\n{limits}");
    let edge = setup.start(&setup.config(&[a], &extra));
    (up, edge)
}

/// A TLS connection from `from`, or the handshake error.
fn try_tls(from: &str, addr: SocketAddr) -> Result<SslStream<TcpStream>, String> {
    let tcp = tcp_from(from, addr);
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("shop.tenant.test", tcp)
        .map_err(|e| e.to_string())
}

/// One request over a plain connection from `from` to port 80: the status line, or why not.
fn try_plain(from: &str, addr: SocketAddr) -> Result<String, String> {
    let mut s = tcp_from(from, addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let answer = read_until_closed(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&answer).to_string();
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(line.to_string()),
        _ => Err("closed without an answer".to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_refused_beyond_its_cap_while_another_is_served() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "    per_client: 4\n");
    let https = setup.https;
    let http = setup.http;
    let held = tokio::task::spawn_blocking(move || {
        // 127.0.0.2 holds its four connections (idle, inside the idle timeout)...
        let held: Vec<_> = (0..4)
            .map(|i| try_tls("127.0.0.2", https).unwrap_or_else(|e| panic!("connection {i}: {e}")))
            .collect();
        // ...and a fifth is refused, on either port.
        assert!(
            try_tls("127.0.0.2", https).is_err(),
            "a fifth TLS connection was accepted"
        );
        assert!(
            try_plain("127.0.0.2", http).is_err(),
            "a fifth connection on :80 was served"
        );
        held
    })
    .await
    .unwrap();

    // Meanwhile another address is served on both ports.
    let client = setup.client(&["shop.tenant.test"]);
    for _ in 0..5 {
        let resp = client
            .get(setup.url("shop.tenant.test", "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let status = tokio::task::spawn_blocking(move || try_plain("127.0.0.1", http))
        .await
        .unwrap()
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 308"), "{status}");
    assert_eq!(closed_total(&setup, "max_connections_per_client"), 2.0);

    // A slot is given back when a connection closes.
    drop(held);
    let again = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        try_tls("127.0.0.2", https).map(|_| ())
    });
    again.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_refuses_every_address_beyond_it() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "    max: 5\n    per_client: 3\n");
    let https = setup.https;
    tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for from in [
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.3",
        ] {
            held.push(try_tls(from, https).unwrap());
        }
        let refused = try_tls("127.0.0.4", https);
        assert!(refused.is_err(), "a sixth connection was accepted");
        held.pop();
        std::thread::sleep(Duration::from_millis(200));
        try_tls("127.0.0.4", https).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(closed_total(&setup, "max_connections"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_close_after_their_request_limit() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "    requests_per_connection: 3\n");
    let https = setup.https;
    tokio::task::spawn_blocking(move || {
        let mut s = try_tls("127.0.0.1", https).unwrap();
        for i in 1..=3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\n\r\n")
                .unwrap();
            let (head, _) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let closes = head.to_ascii_lowercase().contains("connection: close");
            assert_eq!(closes, i == 3, "request {i}: {head}");
        }
        s.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        read_until_closed(&mut s, Duration::from_secs(5));
    })
    .await
    .unwrap();
}

/// An HTTP/2 client connection (h2 crate over OpenSSL).
async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x02h2").unwrap();
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl("shop.tenant.test")
        .unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut tls).connect().await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

fn get() -> http::Request<()> {
    http::Request::get("https://shop.tenant.test/")
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_request_limit_are_refused_and_the_stream_cap_is_advertised() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(
        &setup,
        "    requests_per_connection: 3\n    h2_streams: 7\n",
    );
    let (send, _conn) = h2_client(setup.https).await;
    let mut send = send.ready().await.unwrap();
    for i in 1..=4 {
        let (response, _) = send.send_request(get(), true).unwrap();
        let answer = response.await;
        if i <= 3 {
            assert_eq!(answer.unwrap().status(), 200, "request {i}");
        } else {
            let err = answer.expect_err("a fourth request on the connection was served");
            assert_eq!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err}");
        }
        send = send.ready().await.unwrap();
        // The server's SETTINGS have arrived by the first response.
        assert_eq!(send.current_max_send_streams(), 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_reset_flood_closes_the_connection() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "    resets_per_connection: 10\n");
    let (send, conn) = h2_client(setup.https).await;
    let mut send = send.ready().await.unwrap();
    // Open a stream (the edge starts proxying it), then cancel it; again and again.
    let mut sent = 0;
    for _ in 0..200 {
        let req = http::Request::post("https://shop.tenant.test/")
            .header("content-length", "100")
            .body(())
            .unwrap();
        let Ok((_response, mut body)) = send.send_request(req, false) else {
            break;
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        body.send_reset(h2::Reason::CANCEL);
        sent += 1;
        match tokio::time::timeout(Duration::from_secs(2), send.clone().ready()).await {
            Ok(Ok(ready)) => send = ready,
            _ => break,
        }
        if conn.is_finished() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(closed.is_ok(), "the connection survived {sent} resets");
    assert!(sent <= 30, "closed only after {sent} resets");
    assert_eq!(closed_total(&setup, "reset_flood"), 1.0);
}
