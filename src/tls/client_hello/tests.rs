use super::*;
use pingora::tls::ssl::{Ssl, SslContext, SslMethod, SslStream, SslVersion};
use rand::{Rng, RngCore};
use std::io::{Read, Write};

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
pub(crate) fn client_hello(sni: Option<&str>, version: SslVersion) -> Vec<u8> {
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
pub(crate) fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
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
