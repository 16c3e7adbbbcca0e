//! The PROXY protocol (v1 and v2) on both listeners, from a trusted balancer and from anyone
//! else: the address in the header is the one the upstream, the per-client limits and the logs
//! see; a header from an untrusted peer, or no header where one is expected, is refused.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::*;

fn closed_total(setup: &EdgeSetup, reason: &str) -> f64 {
    metric(
        &setup.scrape(),
        "tenant_edge_connections_closed_total",
        &[("reason", reason)],
    )
}

/// An edge whose two listeners expect PROXY headers from 127.0.0.1 only.
fn start(setup: &EdgeSetup, extra: &str) -> (Proc, Proc) {
    let (up, a) = upstream(setup.dir.path(), "a");
    let extra = format!("forwarding:\n  trusted_proxies: [\"127.0.0.1/32\"]\n{extra}");
    let path = setup.config(&[a], &extra);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            &format!("  https: {}\n", setup.https),
            &format!(
                "  https: {{address: \"{}\", proxy_protocol: true}}\n",
                setup.https
            ),
        )
        .replace(
            &format!("  http: {}\n", setup.http),
            &format!(
                "  http: [{{address: \"{}\", proxy_protocol: true}}]\n",
                setup.http
            ),
        );
    std::fs::write(&path, text).unwrap();
    let edge = setup.start(&path);
    (up, edge)
}

fn v1(src: &str, dst: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {src} {} 40000 {}\r\n", dst.ip(), dst.port()).into_bytes()
}

fn v2(src: IpAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V4(d)) => {
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.to_ipv6_mapped().octets());
        }
        _ => unreachable!("the edge listens on IPv4 loopback"),
    }
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// A connection from `from` to `addr` that starts with `header`.
fn with_header(from: &str, addr: SocketAddr, header: &[u8]) -> TcpStream {
    let mut tcp = tcp_from(from, addr);
    tcp.write_all(header).unwrap();
    tcp
}

/// What the upstream saw of a request sent through a TLS connection that began with `header`
/// (`Err`: the handshake failed).
fn through_https(from: &str, addr: SocketAddr, header: &[u8]) -> Result<String, String> {
    let tcp = with_header(from, addr, header);
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut s = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("shop.tenant.test", tcp)
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(String::from_utf8_lossy(&body).to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_a_trusted_balancer_set_the_client_address() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "");
    let https = setup.https;
    tokio::task::spawn_blocking(move || {
        let seen = through_https("127.0.0.1", https, &v1("203.0.113.9", https)).unwrap();
        assert!(seen.contains("x-forwarded-for: 203.0.113.9\n"), "{seen}");
        assert!(!seen.contains("1.2.3.4"), "{seen}");

        let seen = through_https(
            "127.0.0.1",
            https,
            &v2("198.51.100.4".parse().unwrap(), https),
        )
        .unwrap();
        assert!(seen.contains("x-forwarded-for: 198.51.100.4\n"), "{seen}");

        let seen = through_https(
            "127.0.0.1",
            https,
            &v2("2001:db8::7".parse().unwrap(), https),
        )
        .unwrap();
        assert!(seen.contains("x-forwarded-for: 2001:db8::7\n"), "{seen}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_untrusted_peers_and_missing_headers_are_refused() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "");
    let (https, http) = (setup.https, setup.http);
    let before_invalid = closed_total(&setup, "proxy_protocol_invalid");
    tokio::task::spawn_blocking(move || {
        // A valid header, but from a peer outside trusted_proxies.
        let refused = through_https("127.0.0.2", https, &v1("203.0.113.9", https));
        assert!(refused.is_err(), "an untrusted PROXY header was accepted");
        let mut plain = with_header("127.0.0.2", http, &v1("203.0.113.9", http));
        // (The edge may have closed already: the write can fail.)
        let _ = plain.write_all(b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\n\r\n");
        plain
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(read_until_closed(&mut plain, Duration::from_secs(5)).is_empty());
        // A trusted peer that sends no header where one is expected.
        let missing = through_https("127.0.0.1", https, b"");
        assert!(
            missing.is_err(),
            "a connection without its PROXY header was served"
        );
    })
    .await
    .unwrap();
    assert_eq!(closed_total(&setup, "proxy_protocol_untrusted"), 2.0);
    assert!(closed_total(&setup, "proxy_protocol_invalid") > before_invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_count_the_address_in_the_proxy_header() {
    let setup = EdgeSetup::new();
    let (_up, _edge) = start(&setup, "limits:\n  connections:\n    per_client: 2\n");
    let http = setup.http;
    tokio::task::spawn_blocking(move || {
        let request = |src: &str| {
            let mut s = with_header("127.0.0.1", http, &v1(src, http));
            let _ = s.write_all(
                b"GET / HTTP/1.1\r\nHost: shop.tenant.test\r\nConnection: close\r\n\r\n",
            );
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(5))).to_string()
        };
        // Two idle connections on behalf of 203.0.113.9, through the same balancer...
        let _held: Vec<_> = (0..2)
            .map(|_| with_header("127.0.0.1", http, &v1("203.0.113.9", http)))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // ...fill that client's quota, not the balancer's.
        assert_eq!(
            request("203.0.113.9"),
            "",
            "a third connection for one client was served"
        );
        let other = request("203.0.113.10");
        assert!(other.starts_with("HTTP/1.1 308"), "{other}");
    })
    .await
    .unwrap();
    assert_eq!(closed_total(&setup, "max_connections_per_client"), 1.0);
}
