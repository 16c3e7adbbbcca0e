//! The PostgreSQL shared store against a real server: migrations, certificates (with and
//! without encryption), ACME accounts, challenges, issuance leases and an unreachable database.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::common::pg::TestDb;
use tenant_edge::certs::store::{CertMeta, Store, StoredCert};
use tenant_edge::domain::Domain;
use tenant_edge::shared::locks::CERTS_CHANNEL;
use tenant_edge::shared::migrate::MIGRATIONS;
use tenant_edge::shared::store::{SharedError, SharedStore, KEY_ENV};

const TIMEOUT: Duration = Duration::from_secs(5);
const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

fn name(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn store(db: &TestDb, key: Option<[u8; 32]>) -> SharedStore {
    SharedStore::new(&db.url, key, TIMEOUT).unwrap()
}

async fn migrated(db: &TestDb, key: Option<[u8; 32]>) -> SharedStore {
    let s = store(db, key);
    s.migrate().await.unwrap();
    s
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|(v, _)| *v).collect()
}

#[tokio::test]
async fn migrate_applies_each_version_once() {
    let db = TestDb::create().await;
    let s = store(&db, None);
    assert_eq!(s.migrate().await.unwrap(), all_versions());
    assert_eq!(s.migrate().await.unwrap(), Vec::<i32>::new());
    let tables: Vec<String> = db
        .client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'tenant\\_edge\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "tenant_edge_acme_accounts",
            "tenant_edge_allowed",
            "tenant_edge_certificates",
            "tenant_edge_challenges",
            "tenant_edge_locks",
            "tenant_edge_orders",
            "tenant_edge_schema_migrations",
            "tenant_edge_ticket_keys"
        ]
    );
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let db = TestDb::create().await;
    let (a, b, c) = (store(&db, None), store(&db, None), store(&db, None));
    let (ra, rb, rc) = tokio::join!(a.migrate(), b.migrate(), c.migrate());
    let mut applied: Vec<i32> = [ra.unwrap(), rb.unwrap(), rc.unwrap()].concat();
    applied.sort();
    assert_eq!(applied, all_versions());
    let rows: Vec<i32> = db
        .client
        .query(
            "SELECT version FROM tenant_edge_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, all_versions());
}

#[tokio::test]
async fn without_migration_the_error_says_to_migrate() {
    let db = TestDb::create().await;
    let s = store(&db, None);
    let err = s.http01("token").await.unwrap_err();
    assert_eq!(err.kind(), "query");
    assert!(err.to_string().contains("tenant-edge migrate"), "{err}");
}

#[tokio::test]
async fn certificates_roundtrip() {
    let db = TestDb::create().await;
    let s = migrated(&db, None).await;
    let a = name("a.test");
    assert_eq!(s.load(&a).await.unwrap(), None);
    assert_eq!(s.list().await.unwrap(), Vec::<Domain>::new());
    assert!(!s.remove(&a).await.unwrap());

    let cert = StoredCert {
        bundle: PEM.as_bytes().to_vec(),
        meta: Some(CertMeta {
            issuer: "acme".into(),
            issued_at: 1_700_000_000,
            not_before: 1_700_000_000,
            not_after: 1_707_776_000,
        }),
    };
    s.save(&a, &cert).await.unwrap();
    s.save(
        &name("b.test"),
        &StoredCert {
            bundle: b"b".to_vec(),
            meta: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.load(&a).await.unwrap(), Some(cert.clone()));
    assert_eq!(s.list().await.unwrap(), vec![a.clone(), name("b.test")]);

    // A save replaces everything, meta included.
    let renewed = StoredCert {
        bundle: b"renewed".to_vec(),
        meta: None,
    };
    s.save(&a, &renewed).await.unwrap();
    assert_eq!(s.load(&a).await.unwrap(), Some(renewed));

    // Without a key the bundle is stored as is.
    let raw: Vec<u8> = db
        .client
        .query_one(
            "SELECT bundle FROM tenant_edge_certificates WHERE name = 'b.test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, b"b");

    assert!(s.remove(&a).await.unwrap());
    assert_eq!(s.load(&a).await.unwrap(), None);
    assert_eq!(s.list().await.unwrap(), vec![name("b.test")]);

    // A second host sees what the first saved.
    let other = store(&db, None);
    assert_eq!(
        other.load(&name("b.test")).await.unwrap().map(|c| c.bundle),
        Some(b"b".to_vec())
    );
}

#[tokio::test]
async fn encrypted_certificates_need_the_same_key() {
    let db = TestDb::create().await;
    let key = [0x42; 32];
    let s = migrated(&db, Some(key)).await;
    let a = name("secret.test");
    let cert = StoredCert {
        bundle: PEM.as_bytes().to_vec(),
        meta: Some(CertMeta {
            issuer: "acme".into(),
            issued_at: 1,
            not_before: 2,
            not_after: 3,
        }),
    };
    s.save(&a, &cert).await.unwrap();

    let row = db
        .client
        .query_one(
            "SELECT bundle, key_nonce FROM tenant_edge_certificates WHERE name = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap();
    let (raw, nonce): (Vec<u8>, Option<Vec<u8>>) = (row.get(0), row.get(1));
    assert_eq!(nonce.map(|n| n.len()), Some(12));
    for needle in ["PRIVATE KEY", "BEGIN", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the stored bundle contains {needle:?}"
        );
    }
    assert_eq!(s.load(&a).await.unwrap(), Some(cert.clone()));
    // Another host with the same key reads it; each write uses a fresh nonce.
    assert_eq!(
        store(&db, Some(key)).load(&a).await.unwrap(),
        Some(cert.clone())
    );
    s.save(&a, &cert).await.unwrap();
    let raw2: Vec<u8> = db
        .client
        .query_one(
            "SELECT bundle FROM tenant_edge_certificates WHERE name = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(raw, raw2);

    // A wrong key, or no key, is an error naming the key variable, never "absent".
    let err = store(&db, Some([0x43; 32])).load(&a).await.unwrap_err();
    assert!(err.to_string().contains(KEY_ENV), "{err}");
    let shared = SharedError::in_store_error(&err).unwrap();
    assert_eq!(shared.kind(), "wrong_key");
    let err = store(&db, None).load(&a).await.unwrap_err();
    assert_eq!(
        SharedError::in_store_error(&err).unwrap().kind(),
        "key_missing"
    );

    // A row moved to another name does not decrypt (the name is authenticated).
    db.client
        .execute(
            "INSERT INTO tenant_edge_certificates (name, bundle, key_nonce, meta)
             SELECT 'moved.test', bundle, key_nonce, meta FROM tenant_edge_certificates WHERE name = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap();
    assert!(s.load(&name("moved.test")).await.is_err());

    // A plaintext row (written before the key was set) is refused until `migrate` encrypts it.
    let plain = store(&db, None);
    let p = name("plain.test");
    plain
        .save(
            &p,
            &StoredCert {
                bundle: b"plain".to_vec(),
                meta: None,
            },
        )
        .await
        .unwrap();
    let refused = s.load(&p).await.unwrap_err();
    assert!(refused.to_string().contains("not encrypted"), "{refused}");
    assert_eq!(s.encrypt_plaintext_rows().await.unwrap(), 1);
    assert_eq!(
        s.load(&p).await.unwrap().map(|c| c.bundle),
        Some(b"plain".to_vec())
    );
    assert_eq!(s.encrypt_plaintext_rows().await.unwrap(), 0, "done once");
}

#[tokio::test]
async fn concurrent_loads_see_old_or_new() {
    let db = TestDb::create().await;
    let s = std::sync::Arc::new(migrated(&db, Some([1; 32])).await);
    let n = name("race.test");
    let versions: Vec<StoredCert> = (0..2u8)
        .map(|v| StoredCert {
            bundle: vec![b'a' + v; 64 * 1024],
            meta: Some(CertMeta {
                issuer: format!("v{v}"),
                ..CertMeta::default()
            }),
        })
        .collect();
    s.save(&n, &versions[0]).await.unwrap();
    let writer = {
        let (s, n, versions) = (s.clone(), n.clone(), versions.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                s.save(&n, &versions[i % 2]).await.unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let got = s.load(&n).await.unwrap().expect("present");
        assert!(versions.contains(&got), "a mixed entry");
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn racing_account_creation_has_one_winner() {
    let db = TestDb::create().await;
    let key = Some([9; 32]);
    let a = migrated(&db, key).await;
    let b = store(&db, key);
    let dir = "https://acme.test/directory";
    assert_eq!(a.load_account(dir).await.unwrap(), None);
    let (ra, rb) = tokio::join!(
        a.insert_account(dir, b"account-a"),
        b.insert_account(dir, b"account-b")
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra, rb);
    assert!(ra == b"account-a" || ra == b"account-b");
    assert_eq!(a.load_account(dir).await.unwrap(), Some(ra.clone()));
    // Later inserts keep the first account.
    assert_eq!(b.insert_account(dir, b"account-c").await.unwrap(), ra);
    // Another directory is another account; the credentials are encrypted.
    assert_eq!(
        a.insert_account("https://other.test/dir", b"other")
            .await
            .unwrap(),
        b"other"
    );
    let raw: Vec<u8> = db
        .client
        .query_one(
            "SELECT credentials FROM tenant_edge_acme_accounts WHERE directory = $1",
            &[&dir],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!raw.windows(8).any(|w| w == b"account-"));

    // Many racers, fresh stores: still one winner.
    let dir2 = "https://race.test/directory";
    let stores: Vec<SharedStore> = (0..6).map(|_| store(&db, key)).collect();
    let results =
        join_all(
            stores
                .iter()
                .enumerate()
                .map(|(i, s)| async move {
                    s.insert_account(dir2, format!("acct-{i}").as_bytes()).await
                })
                .collect(),
        )
        .await;
    let first = results[0].as_ref().unwrap().clone();
    for r in &results {
        assert_eq!(r.as_ref().unwrap(), &first);
    }
}

/// Run futures concurrently on this task, results in order (no `futures` dev-dependency).
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.expect("ready")).collect()
}

#[tokio::test]
async fn challenges_are_shared_and_expire() {
    let db = TestDb::create().await;
    let placer = migrated(&db, None).await;
    let answerer = store(&db, None);
    assert_eq!(answerer.http01("tok").await.unwrap(), None);
    placer
        .put_http01("tok", "tok.thumbprint", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        answerer.http01("tok").await.unwrap().as_deref(),
        Some("tok.thumbprint")
    );
    // Putting again replaces.
    placer
        .put_http01("tok", "tok.other", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        answerer.http01("tok").await.unwrap().as_deref(),
        Some("tok.other")
    );
    placer.delete_http01("tok").await.unwrap();
    assert_eq!(answerer.http01("tok").await.unwrap(), None);
    placer.delete_http01("tok").await.unwrap();

    let n = name("alpn.test");
    assert_eq!(answerer.tls_alpn01(&n).await.unwrap(), None);
    placer
        .put_tls_alpn01(&n, PEM.as_bytes(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        answerer.tls_alpn01(&n).await.unwrap().as_deref(),
        Some(PEM.as_bytes())
    );
    // HTTP-01 tokens and TLS-ALPN-01 names live side by side.
    assert_eq!(answerer.http01("alpn.test").await.unwrap(), None);
    placer.delete_tls_alpn01(&n).await.unwrap();
    assert_eq!(answerer.tls_alpn01(&n).await.unwrap(), None);

    // Expired rows are absent, and the next put clears them out.
    placer
        .put_http01("short", "short.thumb", Duration::from_secs(1))
        .await
        .unwrap();
    placer
        .put_tls_alpn01(&n, b"short", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(answerer.http01("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(answerer.http01("short").await.unwrap(), None);
    assert_eq!(answerer.tls_alpn01(&n).await.unwrap(), None);
    placer
        .put_http01("fresh", "fresh.thumb", Duration::from_secs(60))
        .await
        .unwrap();
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM tenant_edge_challenges", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

async fn lock_row(db: &TestDb, n: &Domain) -> Option<String> {
    db.client
        .query_opt(
            "SELECT holder FROM tenant_edge_locks WHERE name = $1",
            &[&n.as_str()],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn locks_are_exclusive_leases() {
    let db = TestDb::create().await;
    let a = migrated(&db, None).await;
    let b = store(&db, None);
    let n = name("lock.test");
    let lease = Duration::from_secs(30);

    assert!(a.try_lock(&n, "host-a", lease).await.unwrap());
    assert!(!b.try_lock(&n, "host-b", lease).await.unwrap());
    assert!(
        !a.try_lock(&n, "host-a", lease).await.unwrap(),
        "not re-entrant"
    );
    assert!(a.extend_lock(&n, "host-a", lease).await.unwrap());
    assert!(!b.extend_lock(&n, "host-b", lease).await.unwrap());
    // B's unlock does not release A's lock.
    b.unlock(&n, "host-b").await.unwrap();
    assert_eq!(lock_row(&db, &n).await.as_deref(), Some("host-a"));
    a.unlock(&n, "host-a").await.unwrap();
    assert_eq!(lock_row(&db, &n).await, None);
    assert!(b.try_lock(&n, "host-b", lease).await.unwrap());
    assert_eq!(lock_row(&db, &n).await.as_deref(), Some("host-b"));
    // Other names are independent.
    assert!(a
        .try_lock(&name("other.test"), "host-a", lease)
        .await
        .unwrap());
}

#[tokio::test]
async fn an_expired_lease_can_be_taken_and_is_lost() {
    let db = TestDb::create().await;
    let a = migrated(&db, None).await;
    let b = store(&db, None);
    let n = name("lease.test");
    assert!(a
        .try_lock(&n, "host-a", Duration::from_secs(1))
        .await
        .unwrap());
    assert!(!b
        .try_lock(&n, "host-b", Duration::from_secs(30))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(b
        .try_lock(&n, "host-b", Duration::from_secs(30))
        .await
        .unwrap());
    assert!(!a
        .extend_lock(&n, "host-a", Duration::from_secs(30))
        .await
        .unwrap());
    a.unlock(&n, "host-a").await.unwrap();
    assert_eq!(lock_row(&db, &n).await.as_deref(), Some("host-b"));
    // An expired lease nobody took is still its holder's to extend.
    let m = name("lapsed.test");
    assert!(a
        .try_lock(&m, "host-a", Duration::from_millis(200))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a
        .extend_lock(&m, "host-a", Duration::from_secs(30))
        .await
        .unwrap());
    assert!(!b
        .try_lock(&m, "host-b", Duration::from_secs(30))
        .await
        .unwrap());
}

#[tokio::test]
async fn a_dead_holder_loses_its_lock_after_the_lease() {
    let db = TestDb::create().await;
    let b = migrated(&db, None).await;
    let n = name("dead.test");
    {
        let a = store(&db, None);
        assert!(a
            .try_lock(&n, "host-a", Duration::from_secs(2))
            .await
            .unwrap());
        // `a` "dies": its store and connection go away without unlocking.
    }
    // The lease is a row, not a session lock: losing the connection does not release it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b
        .try_lock(&n, "host-b", Duration::from_secs(30))
        .await
        .unwrap());
    assert_eq!(lock_row(&db, &n).await.as_deref(), Some("host-a"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if b.try_lock(&n, "host-b", Duration::from_secs(30))
            .await
            .unwrap()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lock_row(&db, &n).await.as_deref(), Some("host-b"));
}

#[tokio::test]
async fn racing_hosts_take_a_lock_once() {
    let db = TestDb::create().await;
    migrated(&db, None).await;
    let n = name("contended.test");
    let stores: Vec<SharedStore> = (0..8).map(|_| store(&db, None)).collect();
    let results = join_all(
        stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n = n.clone();
                async move {
                    s.try_lock(&n, &format!("host-{i}"), Duration::from_secs(30))
                        .await
                }
            })
            .collect(),
    )
    .await;
    let won = results.iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1);
}

#[tokio::test]
async fn notify_reaches_listeners() {
    let db = TestDb::create().await;
    let s = store(&db, None);
    let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CERTS_CHANNEL}"))
        .await
        .unwrap();
    s.notify_issued(&name("issued.test")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(got, (CERTS_CHANNEL.to_string(), "issued.test".to_string()));
}

/// Every operation against `s`, each with its own deadline check.
async fn every_operation_fails(s: &SharedStore, bound: Duration) {
    let n = name("down.test");
    let cert = StoredCert {
        bundle: b"x".to_vec(),
        meta: None,
    };
    let ttl = Duration::from_secs(60);
    macro_rules! fails {
        ($what:expr, $fut:expr) => {{
            let started = Instant::now();
            let result = tokio::time::timeout(bound * 4, $fut)
                .await
                .unwrap_or_else(|_| panic!("{} hung", $what));
            let elapsed = started.elapsed();
            assert!(result.is_err(), "{} succeeded", $what);
            assert!(elapsed < bound * 2, "{} took {elapsed:?}", $what);
            let message = format!("{}", result.err().unwrap());
            assert!(!message.contains("hunter2"), "{}: {message}", $what);
        }};
    }
    fails!("migrate", s.migrate());
    fails!("load_account", s.load_account("https://acme.test/dir"));
    fails!(
        "insert_account",
        s.insert_account("https://acme.test/dir", b"c")
    );
    fails!("put_http01", s.put_http01("t", "t.k", ttl));
    fails!("http01", s.http01("t"));
    fails!("delete_http01", s.delete_http01("t"));
    fails!("put_tls_alpn01", s.put_tls_alpn01(&n, b"pem", ttl));
    fails!("tls_alpn01", s.tls_alpn01(&n));
    fails!("delete_tls_alpn01", s.delete_tls_alpn01(&n));
    fails!("try_lock", s.try_lock(&n, "h", ttl));
    fails!("extend_lock", s.extend_lock(&n, "h", ttl));
    fails!("unlock", s.unlock(&n, "h"));
    fails!("notify_issued", s.notify_issued(&n));
    fails!("load", s.load(&n));
    fails!("save", s.save(&n, &cert));
    fails!("remove", s.remove(&n));
    fails!("list", s.list());
}

#[tokio::test]
async fn a_closed_port_fails_fast() {
    let port = crate::common::free_port();
    let timeout = Duration::from_millis(500);
    let s = SharedStore::new(
        &format!("postgres://edge:hunter2@127.0.0.1:{port}/shared"),
        None,
        timeout,
    )
    .unwrap();
    every_operation_fails(&s, timeout).await;
    let err = s.http01("t").await.unwrap_err();
    assert_eq!(err.kind(), "unavailable", "{err}");
}

#[tokio::test]
async fn a_silent_server_is_bounded_by_the_timeout() {
    // Accepts connections and never answers: only the timeout ends an operation.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let timeout = Duration::from_millis(400);
    let s = SharedStore::new(
        &format!("postgres://edge:hunter2@{addr}/shared"),
        None,
        timeout,
    )
    .unwrap();
    every_operation_fails(&s, timeout).await;
    let err = s.http01("t").await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
}

#[tokio::test]
async fn the_store_reconnects_after_an_outage() {
    let db = TestDb::create().await;
    migrated(&db, None).await;
    let proxy = crate::common::pg::TcpProxy::start(crate::common::pg::server_addr()).await;
    let url = crate::common::pg::with_address(&db.url, proxy.addr);
    let s = SharedStore::new(&url, None, Duration::from_secs(1)).unwrap();
    s.put_http01("t", "t.k", Duration::from_secs(60))
        .await
        .unwrap();
    proxy.stop().await;
    assert!(s.http01("t").await.is_err());
    proxy.restart().await;
    // The broken connection was dropped; the next operations open new ones.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match s.http01("t").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some("t.k"));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
