//! Session tickets: the keys rotate on schedule (the previous period's key still decrypts), and
//! with the shared store a session made on one host resumes on another.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::ssl::{SslSession, SslVersion};

use crate::common::pg::TestDb;
use crate::common::*;

extern "C" {
    // libssl, linked through the openssl crate (which does not wrap this getter).
    fn SSL_SESSION_get0_ticket(s: *const std::ffi::c_void, tick: *mut *const u8, len: *mut usize);
}

/// The name of the key that encrypted `session`'s ticket (its first 16 bytes).
fn ticket_key_name(session: &SslSession) -> Vec<u8> {
    let mut data: *const u8 = std::ptr::null();
    let mut len = 0usize;
    // SAFETY: a getter on a live session; the ticket bytes are owned by `session`.
    unsafe {
        SSL_SESSION_get0_ticket(
            foreign_types::ForeignType::as_ptr(session).cast(),
            &mut data,
            &mut len,
        );
        assert!(!data.is_null() && len > 16, "the session has no ticket");
        std::slice::from_raw_parts(data, 16).to_vec()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleep until `offset_ms` into the next rotation period of `period_ms`.
fn sleep_until_offset(period_ms: u64, offset_ms: u64) {
    let now = now_ms();
    let mut target = now - now % period_ms + offset_ms;
    if target <= now {
        target += period_ms;
    }
    std::thread::sleep(Duration::from_millis(target - now));
}

fn new_session(addr: SocketAddr, version: SslVersion) -> SslSession {
    let (session, reused, _) = tls_session(addr, "shop.tenant.test", version, None);
    assert!(!reused);
    session
}

fn resumes(addr: SocketAddr, version: SslVersion, session: &SslSession) -> bool {
    tls_session(addr, "shop.tenant.test", version, Some(session)).1
}

#[test]
fn ticket_keys_rotate_every_period_and_the_previous_key_still_decrypts() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], "tls:\n  ticket_key_rotation: 4s\n"));
    const PERIOD: u64 = 4000;
    for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
        // Late in a period: two sessions, one key.
        sleep_until_offset(PERIOD, 2500);
        let first = new_session(setup.https, version);
        let same_period = new_session(setup.https, version);
        assert_eq!(ticket_key_name(&first), ticket_key_name(&same_period));

        // Early in the next period: new tickets use a new key, and the ticket of the period
        // before still resumes (it is younger than its lifetime, one period).
        sleep_until_offset(PERIOD, 800);
        let next = new_session(setup.https, version);
        assert_ne!(
            ticket_key_name(&first),
            ticket_key_name(&next),
            "{version:?}: the ticket key did not rotate"
        );
        assert!(
            resumes(setup.https, version, &first),
            "{version:?}: the previous period's ticket did not resume"
        );
    }
    let m = setup.scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_tls_handshakes_completed_total",
            &[("resumed", "true")]
        ),
        2.0,
        "{m}"
    );
}

#[test]
fn one_ticket_per_tls13_handshake_full_or_resumed() {
    let setup = EdgeSetup::new();
    let (_up, a) = upstream(setup.dir.path(), "a");
    let _edge = setup.start(&setup.config(&[a], ""));
    let full = tls_visit(
        setup.https,
        "shop.tenant.test",
        SslVersion::TLS1_3,
        None,
        true,
    );
    assert_eq!((full.tickets, full.reused), (1, false));
    // A resumed connection gets one fresh ticket too (resuming a session taken without the
    // counting cache: see `tls_visit`).
    let first = new_session(setup.https, SslVersion::TLS1_3);
    let resumed = tls_visit(
        setup.https,
        "shop.tenant.test",
        SslVersion::TLS1_3,
        Some(&first),
        true,
    );
    assert_eq!((resumed.tickets, resumed.reused), (1, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_host_resumes_on_another() {
    let db = TestDb::create().await;
    let ips = ["127.0.0.2", "127.0.0.3"];
    let https = free_port_on(&ips);
    let http = free_port_on(&ips);
    let dir = tempfile::tempdir().unwrap();
    let (_up, a) = upstream(dir.path(), "a");
    let hosts: Vec<EdgeSetup> = ips
        .iter()
        .map(|ip| EdgeSetup::on(ip, https, http))
        .collect();
    let extra = format!("store:\n  shared:\n    url: \"{}\"\n", db.url);
    let configs: Vec<_> = hosts.iter().map(|h| h.config(&[a], &extra)).collect();
    let out = std::process::Command::new(EDGE)
        .args(["migrate", "-c"])
        .arg(&configs[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _edges: Vec<Proc> = hosts
        .iter()
        .zip(&configs)
        .map(|(h, c)| h.start(c))
        .collect();
    let (on_a, on_b) = (hosts[0].https, hosts[1].https);
    tokio::task::spawn_blocking(move || {
        // Give both hosts a moment to load the shared keys (they start with a random one).
        std::thread::sleep(Duration::from_millis(500));
        for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
            let session = new_session(on_a, version);
            assert!(
                resumes(on_b, version, &session),
                "{version:?}: a session from host A was not resumed on host B"
            );
        }
    })
    .await
    .unwrap();
    let m = hosts[1].scrape();
    assert_eq!(
        metric(
            &m,
            "tenant_edge_tls_handshakes_completed_total",
            &[("resumed", "true")]
        ),
        2.0,
        "{m}"
    );
    let rows: i64 = db
        .client
        .query_one("SELECT count(*) FROM tenant_edge_ticket_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "one key for this period and one for the next");
}
