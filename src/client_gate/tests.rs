use super::*;
use pingora::tls::ssl::{
    Ssl, SslAcceptor, SslContext, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion,
};
use rand::{Rng, RngCore};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A transport that records what the client writes and has nothing to read: the handshake
/// stops after the ClientHello.
#[derive(Default)]
struct Capture(Vec<u8>);

impl Read for Capture {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A real ClientHello from OpenSSL for `sni` (none when `None`), pinned to one version.
fn client_hello(sni: Option<&str>, version: SslVersion) -> Vec<u8> {
    let mut ctx = SslContext::builder(SslMethod::tls_client()).unwrap();
    ctx.set_min_proto_version(Some(version)).unwrap();
    ctx.set_max_proto_version(Some(version)).unwrap();
    let mut ssl = Ssl::new(&ctx.build()).unwrap();
    if let Some(name) = sni {
        ssl.set_hostname(name).unwrap();
    }
    ssl.set_connect_state();
    let mut stream = SslStream::new(ssl, Capture::default()).unwrap();
    assert!(
        stream.do_handshake().is_err(),
        "stops for lack of an answer"
    );
    stream.get_ref().0.clone()
}

fn sni(hello: &Hello<'_>) -> Option<String> {
    match hello {
        Hello::Sni(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Re-frame the handshake message of a one-record ClientHello into records of `chunk`.
fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
    let message = &hello[RECORD_HEADER..];
    let mut out = Vec::new();
    for piece in message.chunks(chunk) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

#[test]
fn extracts_the_sni_of_real_client_hellos() {
    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        for name in ["shop.tenant.test", "Shop.Example.COM", "a.b.example.co.uk"] {
            let hello = client_hello(Some(name), version);
            assert_eq!(sni(&parse_client_hello(&hello)).as_deref(), Some(name));
        }
        let hello = client_hello(None, version);
        assert_eq!(parse_client_hello(&hello), Hello::NoSni, "{version:?}");
    }
    // The TLS 1.3 hello of this OpenSSL carries a large key share (ML-KEM when offered).
    let big = client_hello(Some("shop.tenant.test"), SslVersion::TLS1_3);
    assert!(big.len() > 200, "{}", big.len());
}

#[test]
fn reassembles_a_client_hello_split_over_records() {
    let hello = client_hello(Some("split.tenant.test"), SslVersion::TLS1_3);
    for chunk in [1, 3, 4, 5, 100, 1000] {
        let split = split_records(&hello, chunk);
        let got = parse_client_hello(&split);
        assert_eq!(sni(&got).as_deref(), Some("split.tenant.test"), "{chunk}");
        assert!(matches!(got, Hello::Sni(Cow::Owned(_))) || chunk >= hello.len());
        // Every strict prefix asks for more, with a `need` beyond what it has.
        for cut in [0, 1, 4, 5, 6, split.len() / 2, split.len() - 1] {
            match parse_client_hello(&split[..cut]) {
                Hello::Incomplete { need } => assert!(need > cut, "{chunk} {cut}"),
                other => panic!("{chunk} {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_truncation_asks_for_more_and_the_need_is_exact() {
    let hello = client_hello(Some("shop.tenant.test"), SslVersion::TLS1_2);
    for cut in 0..hello.len() {
        match parse_client_hello(&hello[..cut]) {
            Hello::Incomplete { need } => {
                assert!(need > cut && need <= hello.len(), "{cut}: {need}")
            }
            other => panic!("{cut}: {other:?}"),
        }
    }
    // Extra bytes after the ClientHello (0-RTT data, the next record) do not matter.
    let mut more = hello.clone();
    more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    assert_eq!(
        sni(&parse_client_hello(&more)).as_deref(),
        Some("shop.tenant.test")
    );
}

#[test]
fn garbage_is_never_an_sni_and_never_panics() {
    let cases: &[(&[u8], Hello<'_>)] = &[
        (b"GET / HTTP/1.1\r\n", Hello::NotTls),
        (b"G", Hello::NotTls),
        (&[22, 2], Hello::NotTls),
        (&[0x80, 0x2e, 0x01, 0x03, 0x01], Hello::NotTls), // SSLv2-style hello
        (&[22, 3, 1, 0, 0], Hello::Malformed),            // empty record
        (&[22, 3, 1, 0x40, 0x01], Hello::Malformed),      // record over 2^14
        (&[22, 3, 1, 0, 4, 2, 0, 0, 0], Hello::Malformed), // ServerHello
        (&[22, 3, 1, 0, 4, 1, 0, 0, 0], Hello::Malformed), // empty ClientHello body
        (&[22], Hello::Incomplete { need: 5 }),
        (&[], Hello::Incomplete { need: 5 }),
    ];
    for (input, want) in cases {
        assert_eq!(&parse_client_hello(input), want, "{input:?}");
    }

    let mut rng = rand::rng();
    let mut buf = vec![0u8; 600];
    for i in 0..20_000 {
        let len = rng.random_range(0..buf.len());
        rng.fill_bytes(&mut buf[..len]);
        if i % 2 == 0 && len >= 9 {
            // Make most of it look like a handshake record so the parser goes deep.
            buf[..6].copy_from_slice(&[22, 3, 1, 0, 0, 1]);
            let body = (len - 5) as u16;
            buf[3..5].copy_from_slice(&body.to_be_bytes());
        }
        let _ = parse_client_hello(&buf[..len]);
    }
}

#[test]
fn corrupting_a_real_client_hello_never_panics() {
    let hello = client_hello(Some("shop.tenant.test"), SslVersion::TLS1_2);
    let mut rng = rand::rng();
    for i in 0..hello.len() {
        for value in [0u8, 0xff, rng.random()] {
            let mut bad = hello.clone();
            bad[i] = value;
            if let Hello::Sni(name) = parse_client_hello(&bad) {
                assert!(name.len() <= hello.len());
            }
        }
    }
    // Lengths that point past the end of their container.
    let mut bad = hello.clone();
    let n = bad.len();
    bad[n - 2] = 0xff;
    bad[n - 1] = 0xff;
    let _ = parse_client_hello(&bad);
}

#[test]
fn server_name_follows_openssl() {
    let entry = |kind: u8, name: &[u8]| {
        let mut e = vec![kind];
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(name);
        e
    };
    let list = |entries: &[Vec<u8>]| {
        let body: Vec<u8> = entries.concat();
        let mut l = (body.len() as u16).to_be_bytes().to_vec();
        l.extend_from_slice(&body);
        l
    };
    assert_eq!(
        server_name(&list(&[entry(0, b"a.example"), entry(0, b"b.example")])),
        Some(&b"a.example"[..])
    );
    assert_eq!(server_name(&list(&[entry(1, b"a.example")])), None);
    assert_eq!(server_name(&list(&[])), None);
    let mut trailing = list(&[entry(0, b"a.example")]);
    trailing.push(0);
    assert_eq!(server_name(&trailing), None);
    assert_eq!(server_name(&[0, 9, 0, 0]), None);
}

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
