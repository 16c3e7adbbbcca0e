//! `tenant-edge certs …` end to end: the real binary against a real edge on loopback, Pebble
//! where certificates come from ACME, PostgreSQL where the allow-list lives there.

use crate::common::pebble::Pebble;
use crate::common::pg::TestDb;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use time::{Duration as Span, OffsetDateTime};

/// Run `tenant-edge certs ARGS -c CONFIG`; (exit code, stdout, stderr).
fn certs(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(EDGE)
        .arg("certs")
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run tenant-edge certs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of a `certs list` table for `name`.
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

/// A root CA and an intermediate signed by it, as a Caddy-imported chain would have.
struct TestCa {
    root_pem: String,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

fn test_ca() -> TestCa {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("certs-cli test root");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().unwrap();
    let int_params = ca_params("certs-cli test intermediate");
    let int_cert = int_params.signed_by(&int_key, &root).unwrap();
    TestCa {
        root_pem: root_cert.pem(),
        intermediate_pem: int_cert.pem(),
        intermediate: Issuer::new(int_params, int_key),
    }
}

impl TestCa {
    /// (chain PEM = leaf + intermediate, key PEM) for `name`, valid from `from` to `until`.
    fn leaf(&self, name: &str, from: OffsetDateTime, until: OffsetDateTime) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = from;
        params.not_after = until;
        let cert = params.signed_by(&key, &self.intermediate).unwrap();
        (
            format!("{}{}", cert.pem(), self.intermediate_pem),
            key.serialize_pem(),
        )
    }
}

/// Write `certificates/<issuer>/<dir_name>/<dir_name>.{crt,key,json}` under `caddy`.
fn caddy_entry(caddy: &Path, issuer: &str, dir_name: &str, crt: &str, key: &str) {
    let dir = caddy.join("certificates").join(issuer).join(dir_name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{dir_name}.crt")), crt).unwrap();
    std::fs::write(dir.join(format!("{dir_name}.key")), key).unwrap();
    std::fs::write(
        dir.join(format!("{dir_name}.json")),
        format!("{{\"sans\":[\"{dir_name}\"],\"issuer_data\":{{}}}}"),
    )
    .unwrap();
}

const LE: &str = "acme-v02.api.letsencrypt.org-directory";
const ZEROSSL: &str = "acme.zerossl.com-v2-dv90";
/// Sorts after the other two: processed last.
const LOCAL: &str = "local";

/// `YYYY-MM-DD` of `days` from now (UTC).
fn day(now: OffsetDateTime, days: i64) -> String {
    let d = (now + Span::days(days)).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_caddy_serves_valid_certificates_without_orders_and_reports_the_rest() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let pebble = Pebble::start(setup.dir.path(), setup.http.port(), setup.https.port());
    let config = setup.config(&[up], &pebble.issuer_yaml(&["http-01"]));

    let ca = test_ca();
    let now = OffsetDateTime::now_utc();
    let caddy = setup.dir.path().join("caddy");
    // Valid, 60 days left.
    let (crt, key) = ca.leaf(
        "good.tenant.test",
        now - Span::days(1),
        now + Span::days(60),
    );
    caddy_entry(&caddy, LE, "good.tenant.test", &crt, &key);
    // The same name from a second issuer, expiring sooner: the later one must win.
    let (crt, key) = ca.leaf(
        "good.tenant.test",
        now - Span::days(1),
        now + Span::days(20),
    );
    caddy_entry(&caddy, ZEROSSL, "good.tenant.test", &crt, &key);
    // A third issuer with a later expiry: it replaces what the first one stored.
    let (crt, key) = ca.leaf(
        "good.tenant.test",
        now - Span::days(1),
        now + Span::days(80),
    );
    caddy_entry(&caddy, LOCAL, "good.tenant.test", &crt, &key);
    // Expired.
    let (crt, key) = ca.leaf(
        "old.tenant.test",
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2021, 1, 1),
    );
    caddy_entry(&caddy, LE, "old.tenant.test", &crt, &key);
    // A key that belongs to another certificate.
    let (crt, _) = ca.leaf(
        "mixed.tenant.test",
        now - Span::days(1),
        now + Span::days(60),
    );
    let (_, other_key) = ca.leaf(
        "other.tenant.test",
        now - Span::days(1),
        now + Span::days(60),
    );
    caddy_entry(&caddy, LE, "mixed.tenant.test", &crt, &other_key);
    // Not a certificate at all.
    let (_, key) = ca.leaf(
        "broken.tenant.test",
        now - Span::days(1),
        now + Span::days(60),
    );
    caddy_entry(&caddy, LE, "broken.tenant.test", "garbage\n", &key);
    // A wildcard certificate (Caddy's directory naming).
    let (crt, key) = ca.leaf("*.tenant.test", now - Span::days(1), now + Span::days(60));
    caddy_entry(&caddy, LE, "wildcard_.tenant.test", &crt, &key);

    let (code, out, err) = certs(&config, &["import-caddy", caddy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let has = |prefix: &str| out.lines().any(|l| l.starts_with(prefix));
    assert!(
        has(&format!(
            "imported good.tenant.test (expires {}, from {LE})",
            day(now, 60)
        )),
        "{out}"
    );
    assert!(
        has(&format!(
            "imported good.tenant.test (expires {}, from {LOCAL}, replaces a stored certificate that expires sooner)",
            day(now, 80)
        )),
        "{out}"
    );
    assert!(
        has("skipped  good.tenant.test: already have a newer certificate"),
        "{out}"
    );
    assert!(
        has("skipped  old.tenant.test: expired on 2021-01-01"),
        "{out}"
    );
    assert!(
        has("skipped  mixed.tenant.test: key does not match the certificate"),
        "{out}"
    );
    assert!(
        has(&format!(
            "skipped  broken.tenant.test: unparsable: {LE}/broken.tenant.test/broken.tenant.test.crt"
        )),
        "{out}"
    );
    assert!(
        has("skipped  wildcard_.tenant.test: wildcard certificate (*.tenant.test)"),
        "{out}"
    );
    assert!(
        out.contains("import-caddy: 2 imported, 5 skipped, 0 error(s)"),
        "{out}"
    );
    assert_eq!(setup.cert_dirs(), vec!["good.tenant.test".to_string()]);

    // Re-running changes nothing.
    let (code, again, _) = certs(&config, &["import-caddy", caddy.to_str().unwrap()]);
    assert_eq!(code, 0, "{again}");
    assert!(
        again.contains("skipped  good.tenant.test: already imported"),
        "{again}"
    );
    assert!(again.contains("0 imported, 7 skipped"), "{again}");

    // The stored entry is what the edge expects: one 0600 bundle, meta saying where it came from.
    let (code, table, _) = certs(&config, &["list"]);
    assert_eq!(code, 0, "{table}");
    let good = row(&table, "good.tenant.test").unwrap_or_else(|| panic!("{table}"));
    assert!(good.contains("caddy-import"), "{good}");
    assert!(good.contains(" valid "), "{good}");
    assert!(good.contains("allowed by platform"), "{good}");

    // Served as imported, with no ACME order.
    let _edge = setup.start(&config);
    let root = setup.dir.path().join("caddy-root.pem");
    std::fs::write(&root, &ca.root_pem).unwrap();
    let hs = handshake(setup.https, Some("good.tenant.test"), Some(&root));
    assert!(hs.ok, "{}", hs.error);
    assert_eq!(sans(&hs.chain[0]), vec!["good.tenant.test".to_string()]);
    // The one that expires last.
    let day_70 = openssl::asn1::Asn1Time::days_from_now(70).unwrap();
    assert!(hs.chain[0].not_after() > day_70);
    assert_eq!(hs.chain.len(), 2, "leaf and intermediate");
    assert_eq!(pebble.orders(), 0);

    // The expired one was not imported: it takes an order.
    let pebble_root = setup.dir.path().join("pebble-root.pem");
    std::fs::write(&pebble_root, pebble.issuing_root().to_pem().unwrap()).unwrap();
    let hs = handshake(setup.https, Some("old.tenant.test"), Some(&pebble_root));
    assert!(hs.ok, "{}", hs.error);
    assert_eq!(pebble.orders(), 1);
}

#[test]
fn import_caddy_without_a_caddy_directory_is_an_error() {
    let setup = EdgeSetup::new();
    let config = setup.config(&[setup.http], "");
    let missing = setup.dir.path().join("nope");
    let (code, out, err) = certs(&config, &["import-caddy", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("{}/certificates", missing.display())),
        "{err}"
    );
}

#[test]
fn list_show_and_remove() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let config = setup.config(&[up], "");
    let (code, out, _) = certs(&config, &["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("no certificates stored"), "{out}");

    let edge = setup.start(&config);
    for name in ["b.tenant.test", "a.tenant.test"] {
        let hs = handshake(setup.https, Some(name), Some(&setup.ca_root()));
        assert!(hs.ok, "{name}: {}\n{}", hs.error, edge.log_text());
    }
    // A damaged entry is listed, not hidden.
    let bad: PathBuf = setup.data().join("certs/bad.tenant.test");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("bundle.pem"), "not pem").unwrap();

    let (code, table, err) = certs(&config, &["list"]);
    assert_eq!(code, 0, "{table}{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[0].contains("DAYS LEFT"), "{table}");
    let names: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["a.tenant.test", "b.tenant.test", "bad.tenant.test"]);
    for name in ["a.tenant.test", "b.tenant.test"] {
        let line = row(&table, name).unwrap();
        assert!(line.contains(" internal "), "{line}");
        assert!(line.contains(" valid "), "{line}");
        assert!(line.ends_with("allowed by platform"), "{line}");
    }
    let line = row(&table, "bad.tenant.test").unwrap();
    assert!(line.contains("unreadable: "), "{line}");

    let (code, shown, _) = certs(&config, &["show", "a.tenant.test"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("SANs:      a.tenant.test\n"), "{shown}");
    assert!(shown.contains("key:       ECDSA P-256\n"), "{shown}");
    assert!(shown.contains("sha256:"), "{shown}");
    assert!(shown.contains("issuer:"), "{shown}");
    let bundle_line = shown
        .lines()
        .find(|l| l.contains("a.tenant.test/bundle.pem"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(bundle_line.contains("  0600  "), "{bundle_line}");
    assert!(shown.contains("\"issuer\": \"internal\""), "{shown}");

    let (code, out, _) = certs(&config, &["show", "none.tenant.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no certificate stored for none.tenant.test"),
        "{out}"
    );

    let served_before = serial(&setup, "a.tenant.test");
    let (code, out, _) = certs(&config, &["remove", "a.tenant.test"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the running edge forgot its copy"),
        "{out}\n{}",
        edge.log_text()
    );
    let (_, table, _) = certs(&config, &["list"]);
    assert!(row(&table, "a.tenant.test").is_none(), "{table}");
    assert!(row(&table, "b.tenant.test").is_some(), "{table}");
    let (code, _, _) = certs(&config, &["remove", "a.tenant.test"]);
    assert_eq!(code, 1);

    // The running edge forgot it: the next handshake is served a newly issued certificate,
    // stored again.
    let served_after = serial(&setup, "a.tenant.test");
    assert_ne!(
        served_before, served_after,
        "the removed certificate is still served"
    );
    let (_, table, _) = certs(&config, &["list"]);
    assert!(row(&table, "a.tenant.test").is_some(), "{table}");
}

/// The serial number (hex) of the certificate the edge serves for `name`.
fn serial(setup: &EdgeSetup, name: &str) -> String {
    let hs = handshake(setup.https, Some(name), Some(&setup.ca_root()));
    assert!(hs.ok, "{name}: {}", hs.error);
    hs.chain[0]
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// The serial number of the certificate served for `name`, trusting only `root`.
fn serial_trusting(addr: std::net::SocketAddr, name: &str, root: &Path) -> Result<String, String> {
    let hs = handshake(addr, Some(name), Some(root));
    if !hs.ok {
        return Err(hs.error);
    }
    Ok(hs.chain[0]
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_replaces_a_certificate_while_the_old_one_is_served() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    // Pebble waits up to 2 s before validating: the renewal takes a while.
    let pebble = Pebble::start_opts(
        setup.dir.path(),
        setup.http.port(),
        setup.https.port(),
        None,
        "127.0.0.1",
        Some(2),
    );
    let config = setup.config(&[up], &pebble.issuer_yaml(&["http-01"]));
    let edge = setup.start(&config);
    let root = setup.dir.path().join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root().to_pem().unwrap()).unwrap();
    let name = "renew.tenant.test";
    let old = serial_trusting(setup.https, name, &root).expect("first certificate");
    assert_eq!(pebble.orders(), 1);

    let (code, out, _) = certs(&config, &["renew", "nothing.tenant.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has no certificate to renew"), "{out}");

    let cfg = config.clone();
    let renewal = std::thread::spawn(move || certs(&cfg, &["renew", name]));
    // Handshakes during the renewal: every one succeeds, the old certificate until the new
    // one is stored, then only the new one.
    let mut served = Vec::new();
    while !renewal.is_finished() {
        served.push(serial_trusting(setup.https, name, &root).expect("served during renewal"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, out, err) = renewal.join().unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", edge.log_text());
    assert!(out.contains(&format!("renewed {name}")), "{out}");
    let new = serial_trusting(setup.https, name, &root).unwrap();
    assert_ne!(new, old, "the renewed certificate is not served");
    assert_eq!(pebble.orders(), 2);
    assert!(
        served.first() == Some(&old),
        "not served during the renewal: {served:?}"
    );
    let first_new = served
        .iter()
        .position(|s| *s != old)
        .unwrap_or(served.len());
    assert!(
        served[first_new..].iter().all(|s| *s == new),
        "old and new alternated: {served:?}"
    );
    // What is stored is the new one (a restart serves it).
    let (_, shown, _) = certs(&config, &["show", name]);
    assert!(shown.contains(&format!("serial:      {new}\n")), "{shown}");
}

/// `allow:` with a database and no platform name to warm; `provisioning` off so that only
/// `certs` issues.
fn db_config(setup: &EdgeSetup, up: std::net::SocketAddr, url: &str) -> PathBuf {
    setup.config_with(
        &[up],
        &format!(
            "  platform_domains: [\"*.platform.test\"]\n  database:\n    url: \"{url}\"\n    timeout: 2s\n"
        ),
        "provisioning:\n  enabled: false\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_and_warm_through_the_running_edge() {
    let db = TestDb::create().await;
    db.add_company("Cartier", "{One.Shop.test,two.shop.test}", true)
        .await;
    db.add_company("Dior", "{three.dior.test}", true).await;
    db.add_company("Gone", "{gone.shop.test}", false).await;
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "app");
    let config = db_config(&setup, up, &db.url);
    let run = |args: &[&str]| {
        let config = config.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            certs(&config, &args)
        })
    };

    // Nothing runs yet: say so.
    let (code, out, _) = run(&["issue", "one.shop.test"]).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("start the edge first: `tenant-edge run -c"),
        "{out}"
    );
    let (code, out, _) = run(&["warm"]).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("start the edge first"), "{out}");

    let edge = setup.start(&config);
    let (code, out, err) = run(&["issue", "one.shop.test"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", edge.log_text());
    assert!(
        out.contains("one.shop.test is allowed by database"),
        "{out}"
    );
    assert!(out.contains("issued one.shop.test"), "{out}");
    assert!(out.contains("SANs:      one.shop.test\n"), "{out}");

    for name in ["gone.shop.test", "nobody.shop.test"] {
        let (code, out, _) = run(&["issue", name]).await.unwrap();
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&format!("{name} is not allowed: ")), "{out}");
        assert!(
            out.contains("the database has no active company with this name"),
            "{out}"
        );
    }
    assert_eq!(setup.cert_dirs(), vec!["one.shop.test".to_string()]);

    let (code, out, err) = run(&["warm", "--concurrency", "2"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", edge.log_text());
    assert!(
        out.contains("warm: 3 allowed name(s): 2 issued, 1 already valid, 0 failed"),
        "{out}"
    );
    assert!(err.contains("[2/2]"), "progress: {err}");
    assert_eq!(
        setup.cert_dirs(),
        ["one.shop.test", "three.dior.test", "two.shop.test"]
    );
    let (code, out, _) = run(&["warm"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warm: 3 allowed name(s): 0 issued, 3 already valid, 0 failed"),
        "{out}"
    );

    let (code, table, _) = run(&["list"]).await.unwrap();
    assert_eq!(code, 0, "{table}");
    for name in ["one.shop.test", "two.shop.test", "three.dior.test"] {
        let line = row(&table, name).unwrap_or_else(|| panic!("{table}"));
        assert!(line.ends_with("allowed by database"), "{line}");
    }
}
