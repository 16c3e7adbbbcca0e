//! Client timeouts, with real clients on loopback: every way of holding a connection without
//! making progress is cut at its configured deadline and counted by reason, while a normal
//! client keeps being served.

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use crate::common::*;

const TIMEOUTS: &str = "timeouts:
  header: 1s
  idle: 2s
  h2_idle: 2s
  h2_preface: 1s
  body: 1s
  body_min_rate: 1000
  send: 1s
";

/// Pace of the slow clients (each socket's read timeout).
const PACE: Duration = Duration::from_millis(200);

fn closed_total(setup: &EdgeSetup, reason: &str) -> f64 {
    metric(
        &setup.scrape(),
        "tenant_edge_connections_closed_total",
        &[("reason", reason)],
    )
}

/// Assert `took` is within `[timeout - 100ms, timeout + slack]`.
fn near(took: Duration, timeout: Duration, slack: Duration, what: &str) {
    assert!(
        took + Duration::from_millis(100) >= timeout && took <= timeout + slack,
        "{what}: closed after {took:?}, configured {timeout:?}"
    );
}

/// A client making ordinary requests every 100 ms for as long as it lives; `finish` asserts
/// that every one of them was served.
struct Prober {
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(setup: &EdgeSetup) -> Prober {
        let client = setup.client(&["shop.tenant.test"]);
        let url = setup.url("shop.tenant.test", "/probe");
        let ok = Arc::new(AtomicUsize::new(0));
        let counted = ok.clone();
        let task = tokio::spawn(async move {
            loop {
                let resp = client
                    .get(&url)
                    .send()
                    .await
                    .expect("a normal client was refused");
                assert_eq!(resp.status(), 200);
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Prober { ok, task }
    }

    async fn finish(self) {
        assert!(
            !self.task.is_finished(),
            "the normal client failed: {:?}",
            self.task.await
        );
        self.task.abort();
        assert!(
            self.ok.load(Ordering::Relaxed) >= 5,
            "too few normal requests served"
        );
    }
}

/// Clients misbehaving is routine: nothing about it at WARN or ERROR.
fn assert_quiet(edge: &Proc) {
    let log = edge.log_text();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}

fn start(setup: &EdgeSetup) -> (Proc, Proc) {
    let (up, a) = upstream(setup.dir.path(), "a");
    let edge = setup.start(&setup.config(&[a], TIMEOUTS));
    (up, edge)
}

/// A TLS connection to `https` that made one request (answered 200) and now waits, its reads
/// paced by `PACE`.
fn kept_alive(https: SocketAddr) -> openssl::ssl::SslStream<std::net::TcpStream> {
    let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.get_ref().set_read_timeout(Some(PACE)).unwrap();
    s
}

fn plain(addr: SocketAddr) -> std::net::TcpStream {
    let s = tcp_from("127.0.0.1", addr);
    s.set_read_timeout(Some(PACE)).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_at_the_header_timeout_on_both_ports() {
    let setup = EdgeSetup::new();
    let (_up, edge) = start(&setup);
    let prober = Prober::start(&setup);
    let head = format!(
        "GET / HTTP/1.1\r\nHost: shop.tenant.test\r\nX-Slow: {}",
        "b".repeat(10_000)
    );
    let (https, http) = (setup.https, setup.http);
    let head2 = head.clone();
    let tls_took = tokio::task::spawn_blocking(move || {
        let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
        s.get_ref().set_read_timeout(Some(PACE)).unwrap();
        trickle(&mut s, head.as_bytes(), Duration::from_secs(10))
    });
    let plain_took = tokio::task::spawn_blocking(move || {
        trickle(&mut plain(http), head2.as_bytes(), Duration::from_secs(10))
    });
    let (tls_took, plain_took) = (tls_took.await.unwrap(), plain_took.await.unwrap());
    near(
        tls_took,
        Duration::from_secs(1),
        Duration::from_millis(1500),
        "slow head on :443",
    );
    near(
        plain_took,
        Duration::from_secs(1),
        Duration::from_millis(1500),
        "slow head on :80",
    );
    prober.finish().await;
    assert_quiet(&edge);
    assert_eq!(closed_total(&setup, "header_timeout"), 2.0);
}

/// A shutdown (SIGTERM: Pingora's grace period, then the shutdown signal) closes connections
/// waiting for a request at once (one kept alive after a request over TLS, one on port 80 that
/// sent nothing yet), long before their idle timeout and before the process exits (it waits
/// `graceful_shutdown_timeout` more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_closes_idle_keep_alive_connections_before_the_process_exits() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let config = setup.config(&[a], "timeouts:\n  idle: 60s\n");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "graceful_shutdown_timeout: 1s",
        "graceful_shutdown_timeout: 4s",
    );
    std::fs::write(&config, text).unwrap();
    let mut edge = setup.start(&config);
    let (https, http) = (setup.https, setup.http);
    // One request on each, then idle.
    let mut tls = tokio::task::spawn_blocking(move || kept_alive(https))
        .await
        .unwrap();
    // Port 80: connected, no request yet (the wait for a first request).
    let mut on_80 = plain(http);
    let pid = edge.child.id().to_string();
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let (tls_closed, http_closed) = tokio::task::spawn_blocking(move || {
        read_until_closed(&mut tls, Duration::from_secs(20));
        let tls_closed = sent.elapsed();
        read_until_closed(&mut on_80, Duration::from_secs(20));
        (tls_closed, sent.elapsed())
    })
    .await
    .unwrap();
    assert!(
        edge.child.try_wait().unwrap().is_none(),
        "the connections were closed only by the process exiting"
    );
    // The grace period (1 s) and some slack; the idle timeout is 60 s.
    for (what, took) in [("https", tls_closed), ("http", http_closed)] {
        assert!(
            took < Duration::from_secs(4),
            "{what}: closed {took:?} after SIGTERM"
        );
    }
    let exited = edge.child.wait().unwrap();
    assert!(exited.success(), "{exited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let setup = EdgeSetup::new();
    let (_up, edge) = start(&setup);
    let prober = Prober::start(&setup);
    let (https, http) = (setup.https, setup.http);
    let after_request = tokio::task::spawn_blocking(move || {
        let mut s = kept_alive(https);
        let idle = Instant::now();
        read_until_closed(&mut s, Duration::from_secs(10));
        idle.elapsed()
    });
    let never_asked = tokio::task::spawn_blocking(move || {
        let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
        s.get_ref().set_read_timeout(Some(PACE)).unwrap();
        let idle = Instant::now();
        read_until_closed(&mut s, Duration::from_secs(10));
        idle.elapsed()
    });
    let on_80 = tokio::task::spawn_blocking(move || {
        let mut s = plain(http);
        let idle = Instant::now();
        read_until_closed(&mut s, Duration::from_secs(10));
        idle.elapsed()
    });
    let two = Duration::from_secs(2);
    let slack = Duration::from_millis(1500);
    near(
        after_request.await.unwrap(),
        two,
        slack,
        "idle after a response",
    );
    near(
        never_asked.await.unwrap(),
        two,
        slack,
        "idle after the handshake",
    );
    near(on_80.await.unwrap(), two, slack, "idle on :80");
    prober.finish().await;
    assert_quiet(&edge);
    // The prober's own pooled connection may also have idled out between its requests.
    assert!(closed_total(&setup, "idle_timeout") >= 3.0);
}

/// An HTTP/2 client connection (h2 crate over OpenSSL) to the edge.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_http2_connections_are_closed_at_their_timeouts() {
    let setup = EdgeSetup::new();
    let (_up, edge) = start(&setup);
    let prober = Prober::start(&setup);

    // A connection that sent its preface and settings, then nothing.
    let (send, conn) = h2_client(setup.https).await;
    let idle = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection was still open after 10 s"
    );
    near(
        idle.elapsed(),
        Duration::from_secs(2),
        Duration::from_millis(1500),
        "idle h2",
    );
    drop(send);

    // A connection that negotiated h2 and never sent the preface.
    let https = setup.https;
    let silent = tokio::task::spawn_blocking(move || {
        let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &["h2"]);
        assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        s.get_ref().set_read_timeout(Some(PACE)).unwrap();
        let started = Instant::now();
        read_until_closed(&mut s, Duration::from_secs(10));
        started.elapsed()
    });
    near(
        silent.await.unwrap(),
        Duration::from_secs(1),
        Duration::from_millis(1500),
        "silent h2 preface",
    );
    prober.finish().await;
    assert_quiet(&edge);
    assert_eq!(closed_total(&setup, "h2_idle_timeout"), 1.0);
    assert_eq!(closed_total(&setup, "h2_preface_timeout"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_at_the_body_timeout_on_http1_and_http2() {
    let setup = EdgeSetup::new();
    let (_up, edge) = start(&setup);
    let prober = Prober::start(&setup);

    let https = setup.https;
    let h1 = tokio::task::spawn_blocking(move || {
        let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: shop.tenant.test\r\nContent-Length: 1000\r\n\r\n0123456789")
            .unwrap();
        let started = Instant::now();
        s.get_ref().set_read_timeout(Some(PACE)).unwrap();
        let answer = read_until_closed(&mut s, Duration::from_secs(10));
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).to_string(),
        )
    });

    let (mut send, _conn) = h2_client(setup.https).await;
    let req = http::Request::post("https://shop.tenant.test/upload")
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"0123456789"), false)
        .unwrap();
    let started = Instant::now();
    let h2_result = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an HTTP/2 stream with a stalled body was still open after 10 s");
    let h2_took = started.elapsed();
    match h2_result {
        Ok(resp) => assert_eq!(resp.status(), 408),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e}"),
    }

    let (h1_took, h1_answer) = h1.await.unwrap();
    assert!(h1_answer.starts_with("HTTP/1.1 408"), "{h1_answer}");
    let one = Duration::from_secs(1);
    near(
        h1_took,
        one,
        Duration::from_millis(1500),
        "stalled HTTP/1.1 body",
    );
    near(
        h2_took,
        one,
        Duration::from_millis(1500),
        "stalled HTTP/2 body",
    );
    prober.finish().await;
    assert_quiet(&edge);
    assert_eq!(closed_total(&setup, "body_timeout"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_body_is_cut_at_the_minimum_rate() {
    let setup = EdgeSetup::new();
    let (_up, edge) = start(&setup);
    let prober = Prober::start(&setup);
    let https = setup.https;
    let took = tokio::task::spawn_blocking(move || {
        let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: shop.tenant.test\r\nContent-Length: 100000\r\n\r\n",
        )
        .unwrap();
        s.get_ref().set_read_timeout(Some(PACE)).unwrap();
        // A byte every 200 ms: never idle for `body` (1 s), far below 1000 bytes/s.
        trickle(&mut s, &[b'x'; 100_000], Duration::from_secs(10))
    })
    .await
    .unwrap();
    near(
        took,
        Duration::from_secs(1),
        Duration::from_millis(1500),
        "trickled body",
    );
    prober.finish().await;
    assert_quiet(&edge);
    assert_eq!(closed_total(&setup, "body_too_slow"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let setup = EdgeSetup::new();
    let (_up, edge) = start(&setup);
    let prober = Prober::start(&setup);
    const SIZE: usize = 64 << 20;
    let https = setup.https;
    let mut s = tokio::task::spawn_blocking(move || {
        let mut s = tls_over(tcp_from("127.0.0.1", https), "shop.tenant.test", &[]);
        write!(
            s,
            "GET /bytes/{SIZE} HTTP/1.1\r\nHost: shop.tenant.test\r\n\r\n"
        )
        .unwrap();
        s
    })
    .await
    .unwrap();
    // Read nothing: the socket buffers fill, then the edge's writes stall.
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed_total(&setup, "send_timeout") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a client that stopped reading was never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = tokio::task::spawn_blocking(move || {
        s.get_ref().set_read_timeout(Some(PACE)).unwrap();
        read_until_closed(&mut s, Duration::from_secs(30)).len()
    })
    .await
    .unwrap();
    assert!(
        read < SIZE,
        "the whole response was delivered after all ({read} bytes)"
    );
    prober.finish().await;
    assert_quiet(&edge);
}

#[test]
fn client_sockets_have_tcp_keepalive() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup);
    let _held = tcp_from("127.0.0.1", setup.https);
    std::thread::sleep(Duration::from_millis(300));
    // The edge's side of the connection, as the kernel sees it.
    let filter = format!("( sport = :{} )", setup.https.port());
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", &filter])
        .output()
        .expect("ss (iproute2) is needed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("timer:(keepalive"),
        "no keepalive timer: {text}"
    );
}
