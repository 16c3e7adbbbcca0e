use super::*;
use crate::net::cidr::client_key;
use crate::tls::client_hello::tests::{client_hello, split_records};
use pingora::tls::ssl::{
    Ssl, SslAcceptor, SslContext, SslFiletype, SslMethod, SslVerifyMode, SslVersion,
};
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new().unwrap())
}

fn limited(m: &Metrics) -> u64 {
    m.issuances_limited.with_label_values(&["client"]).get()
}

fn gate(settings: ClientGateSettings, m: Arc<Metrics>) -> ClientGate {
    let known = |name: &Domain| name.as_str().ends_with(".known.test");
    ClientGate::new(settings, Arc::new(known), m)
}

fn never(s: &str) -> Seen {
    Seen::NeverSeen(Domain::parse(s).unwrap())
}

#[test]
fn defaults_are_valid() {
    let s = ClientGateSettings::default();
    assert!(s.validate().is_empty());
    assert_eq!((s.burst, s.refill_interval), (20, Duration::from_secs(1)));
    let bad = ClientGateSettings {
        burst: 0,
        ipv6_prefix_len: 129,
        hello_timeout: Duration::ZERO,
        ..s
    };
    let fields: Vec<_> = bad.validate().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["burst", "ipv6_prefix_len", "hello_timeout"]);
}

#[test]
fn per_client_burst_then_refusal_then_refill() {
    let m = metrics();
    let g = gate(
        ClientGateSettings {
            burst: 3,
            ..Default::default()
        },
        m.clone(),
    );
    let ip: IpAddr = Ipv4Addr::new(203, 0, 113, 7).into();
    let t0 = Instant::now();
    for i in 0..3 {
        assert!(g.admit_at(ip, &never(&format!("n{i}.tenant.test")), t0));
    }
    assert!(!g.admit_at(ip, &never("n3.tenant.test"), t0));
    assert!(
        !g.admit_at(ip, &Seen::Unproven, t0),
        "unproven costs a token too"
    );
    assert_eq!(limited(&m), 2);
    // Known names and lookups that cannot happen are never limited.
    for _ in 0..100 {
        assert!(g.admit_at(ip, &Seen::Known, t0));
        assert!(g.admit_at(ip, &Seen::NoLookup, t0));
    }
    // Another client is independent.
    let other: IpAddr = Ipv4Addr::new(203, 0, 113, 8).into();
    assert!(g.admit_at(other, &never("n0.tenant.test"), t0));
    // One token per second comes back.
    assert!(!g.admit_at(ip, &never("x.tenant.test"), t0 + Duration::from_millis(900)));
    assert!(g.admit_at(ip, &never("x.tenant.test"), t0 + Duration::from_secs(1)));
    assert!(!g.admit_at(ip, &never("y.tenant.test"), t0 + Duration::from_secs(1)));
    assert_eq!(limited(&m), 4);
}

#[test]
fn ipv6_clients_share_a_bucket_per_64() {
    let g = gate(
        ClientGateSettings {
            burst: 2,
            ..Default::default()
        },
        metrics(),
    );
    let t0 = Instant::now();
    let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
    let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
    assert!(g.admit_at(a, &never("a.tenant.test"), t0));
    assert!(g.admit_at(b, &never("b.tenant.test"), t0));
    assert!(!g.admit_at(a, &never("c.tenant.test"), t0), "same /64");
    assert!(g.admit_at(c, &never("c.tenant.test"), t0), "next /64");

    // IPv4-mapped addresses (a dual-stack listener) count as the IPv4 address.
    let v4: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
    let mapped: IpAddr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().into();
    assert_eq!(client_key(mapped, 64), v4);
    assert_eq!(client_key(a, 128), a);
    assert_eq!(client_key(a, 0), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    assert_eq!(
        client_key(b, 64),
        "2001:db8:1:2::".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn classification() {
    let g = gate(ClientGateSettings::default(), metrics());
    let hello = |name: &[u8]| Hello::Sni(Cow::Owned(name.to_vec()));
    assert_eq!(g.classify(hello(b"shop.known.test")), Seen::Known);
    assert_eq!(g.classify(hello(b"SHOP.Known.test.")), Seen::Known);
    assert_eq!(
        g.classify(hello(b"new.tenant.test")),
        never("new.tenant.test")
    );
    assert_eq!(g.classify(hello(b"bad_name.test")), Seen::NoLookup);
    assert_eq!(g.classify(hello(b"")), Seen::NoLookup);
    assert_eq!(g.classify(hello(b"\xff\xfe")), Seen::NoLookup);
    assert_eq!(g.classify(Hello::NoSni), Seen::NoLookup);
    assert_eq!(g.classify(Hello::NotTls), Seen::NoLookup);
    assert_eq!(g.classify(Hello::Malformed), Seen::Unproven);
}

#[tokio::test]
async fn read_hello_waits_for_the_rest_within_the_bound() {
    let g = gate(
        ClientGateSettings {
            hello_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        metrics(),
    );
    let hello = client_hello(Some("slow.tenant.test"), SslVersion::TLS1_3);

    // Sent in three pieces with pauses: read whole, bytes kept in order.
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for piece in [&sent[..3], &sent[3..100], &sent[100..]] {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        client
    });
    let mut buf = HelloBuf::new();
    let seen = g.read_hello(&mut server, &mut buf).await;
    assert_eq!(seen, never("slow.tenant.test"));
    assert_eq!(buf.filled(), &hello[..]);
    let _client = writer.await.unwrap();

    // Silent: passed on after the bound, nothing read.
    let (_client, mut server) = tokio::io::duplex(1024);
    let started = Instant::now();
    let mut buf = HelloBuf::new();
    assert_eq!(g.read_hello(&mut server, &mut buf).await, Seen::Unproven);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(2));
    assert!(buf.filled().is_empty());

    // Half a hello, then the client hangs up: no lookup can follow.
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    {
        use tokio::io::AsyncWriteExt;
        client.write_all(&hello[..50]).await.unwrap();
    }
    drop(client);
    let mut buf = HelloBuf::new();
    assert_eq!(g.read_hello(&mut server, &mut buf).await, Seen::NoLookup);
    assert_eq!(buf.filled(), &hello[..50]);

    // Over the size cap: unproven, without waiting for the rest.
    let small = gate(
        ClientGateSettings {
            max_hello_bytes: 512,
            ..Default::default()
        },
        metrics(),
    );
    let mut padded = hello.clone();
    padded.truncate(5);
    padded[3..5].copy_from_slice(&4000u16.to_be_bytes());
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    {
        use tokio::io::AsyncWriteExt;
        client.write_all(&padded).await.unwrap();
    }
    let started = Instant::now();
    let mut buf = HelloBuf::new();
    assert_eq!(
        small.read_hello(&mut server, &mut buf).await,
        Seen::Unproven
    );
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn a_hello_larger_than_the_inline_buffer_moves_to_the_heap() {
    let g = gate(ClientGateSettings::default(), metrics());
    let hello = client_hello(Some("big.tenant.test"), SslVersion::TLS1_3);
    // The handshake in 1-byte records (6 bytes each): well beyond the inline 4 KiB.
    let split = split_records(&hello, 1);
    assert!(split.len() > INLINE, "{}", split.len());
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    {
        use tokio::io::AsyncWriteExt;
        client.write_all(&split).await.unwrap();
    }
    let mut buf = HelloBuf::new();
    assert_eq!(
        g.read_hello(&mut server, &mut buf).await,
        never("big.tenant.test")
    );
    assert_eq!(buf.filled(), &split[..]);
}

/// A self-signed certificate for the loopback TLS server.
fn acceptor() -> SslAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["shop.tenant.test".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate_chain_file(&cert).unwrap();
    b.set_private_key_file(&key, SslFiletype::PEM).unwrap();
    b.build()
}

/// A blocking OpenSSL client for `sni` on its own thread; `Ok` when its handshake completes.
fn tls_client(
    addr: std::net::SocketAddr,
    sni: &str,
) -> std::thread::JoinHandle<Result<(), String>> {
    let sni = sni.to_string();
    std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut ctx = SslContext::builder(SslMethod::tls_client()).unwrap();
        ctx.set_verify(SslVerifyMode::NONE);
        let mut ssl = Ssl::new(&ctx.build()).unwrap();
        ssl.set_hostname(&sni).unwrap();
        ssl.connect(tcp).map(|_| ()).map_err(|e| e.to_string())
    })
}

/// Accept one connection as Pingora does (socket digest set), run the gate, then the TLS
/// handshake over the same stream.
async fn serve_one(
    listener: &tokio::net::TcpListener,
    gate: &ClientGate,
    acceptor: &SslAcceptor,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let fd = tcp.as_raw_fd();
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(pingora::protocols::SocketDigest::from_raw_fd(fd));
    gate.process(&mut stream)
        .await
        .map_err(|e| format!("gate: {e}"))?;
    pingora::protocols::tls::server::handshake(acceptor, stream)
        .await
        .map(|_| ())
        .map_err(|e| format!("tls: {e}"))
}

#[tokio::test]
async fn process_on_a_real_connection_rewinds_and_limits() {
    let m = metrics();
    let g = gate(
        ClientGateSettings {
            burst: 1,
            refill_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        m.clone(),
    );
    let acceptor = acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // A never-seen name within the budget: the handshake completes over the rewound bytes.
    let client = tls_client(addr, "shop.tenant.test");
    serve_one(&listener, &g, &acceptor).await.expect("first");
    client.join().unwrap().expect("client handshake");

    // Known names always pass, even with the client's bucket empty.
    let client = tls_client(addr, "www.known.test");
    serve_one(&listener, &g, &acceptor).await.expect("known");
    client.join().unwrap().expect("client handshake");
    assert_eq!(limited(&m), 0);

    // The second never-seen name from 127.0.0.1 is dropped before TLS.
    let client = tls_client(addr, "other.tenant.test");
    let err = serve_one(&listener, &g, &acceptor).await.unwrap_err();
    assert!(err.starts_with("gate:"), "{err}");
    assert!(client.join().unwrap().is_err());
    assert_eq!(limited(&m), 1);
}
