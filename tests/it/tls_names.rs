//! The name a connection is served under is the name it negotiated: a second ClientHello
//! (after a HelloRetryRequest) cannot switch SNI, a session made for one name does not resume
//! under another, and names refused without a lookup get `unrecognized_name`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use openssl::ssl::SslVersion;

use crate::common::*;

/// A TLS 1.3-only ClientHello for `sni` offering X25519 (and TLS_AES_128_GCM_SHA256), with a
/// key share for it or, when `key_share` is false, none (which makes the server ask again).
fn client_hello(sni: &str, key_share: bool) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut exts = Vec::new();
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    ext(&mut exts, 0x0000, &sn);
    ext(&mut exts, 0x002b, &[0x02, 0x03, 0x04]); // supported_versions: TLS 1.3
    ext(&mut exts, 0x000a, &[0x00, 0x02, 0x00, 0x1d]); // supported_groups: x25519
    ext(
        &mut exts,
        0x000d,
        &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    ); // signature_algorithms
    if key_share {
        let mut ks = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
        ks.extend((0..32).map(|i| i as u8 + 9));
        ext(&mut exts, 0x0033, &ks);
    } else {
        ext(&mut exts, 0x0033, &[0x00, 0x00]);
    }
    let mut body = vec![0x03, 0x03];
    body.extend((0..32).map(|i| i as u8));
    body.push(0); // no legacy session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// SHA-256("HelloRetryRequest"): the `random` of a ServerHello that is a HelloRetryRequest.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// The next TLS record from `s`: (content type, payload); `None` when the server closed.
fn record(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[0], payload))
}

/// What the server answered a second ClientHello for `second_sni`, after a first one for
/// `shop.tenant.test` drew a HelloRetryRequest.
enum Second {
    ServerHello,
    Alert(u8),
    Closed,
}

fn retry_with(addr: SocketAddr, second_sni: &str) -> Second {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&client_hello("shop.tenant.test", false))
        .unwrap();
    let (kind, hrr) = record(&mut s).expect("an answer to the first ClientHello");
    assert_eq!(kind, 22, "a handshake record");
    // ServerHello: type 2, length (3), version (2), then random.
    assert_eq!(hrr[0], 2);
    assert_eq!(
        &hrr[6..38],
        &HRR_RANDOM,
        "the first ClientHello drew a HelloRetryRequest"
    );
    s.write_all(&client_hello(second_sni, true)).unwrap();
    loop {
        match record(&mut s) {
            None => return Second::Closed,
            Some((20, _)) => continue, // change_cipher_spec (middlebox compatibility)
            Some((21, alert)) => return Second::Alert(alert[1]),
            Some((22, hello)) if hello[0] == 2 => return Second::ServerHello,
            Some((kind, _)) => panic!("unexpected record type {kind}"),
        }
    }
}

#[test]
fn a_second_client_hello_cannot_switch_the_name() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    // The same name twice: the handshake goes on.
    assert!(matches!(
        retry_with(setup.https, "shop.tenant.test"),
        Second::ServerHello
    ));
    // Another (also allowed) name in the second ClientHello: illegal_parameter.
    match retry_with(setup.https, "other.tenant.test") {
        Second::Alert(47) => {}
        Second::Alert(a) => panic!("alert {a}, expected illegal_parameter (47)"),
        Second::ServerHello => panic!("the server went on under another name"),
        Second::Closed => panic!("closed without an alert"),
    }
}

#[test]
fn a_session_resumes_only_under_the_name_it_was_made_for() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
        let (session, reused, _) = tls_session(setup.https, "shop.tenant.test", version, None);
        assert!(!reused);
        // Under the same name, the session resumes (so resumption works at all)...
        let (_, reused, _) = tls_session(setup.https, "shop.tenant.test", version, Some(&session));
        assert!(reused, "{version:?}: the same name did not resume");
        // ...under another, the server runs a full handshake and its certificate is chosen
        // for the new name.
        let (_, reused, names) =
            tls_session(setup.https, "other.tenant.test", version, Some(&session));
        assert!(!reused, "{version:?}: a session resumed under another name");
        assert_eq!(names, ["other.tenant.test"], "{version:?}");
    }
}

#[test]
fn names_refused_without_a_lookup_get_unrecognized_name() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    for sni in [None, Some("not_a_name!"), Some("elsewhere.example")] {
        let h = handshake(setup.https, sni, None);
        assert!(!h.ok, "{sni:?} was served");
        assert!(
            h.error.contains("unrecognized name"),
            "{sni:?}: {}",
            h.error
        );
    }
}
