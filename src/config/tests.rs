//! Table-driven tests: every bad-input rule names its key path (and the value where one exists).

use super::*;
use crate::allow::pattern::NamePattern;
use crate::certs::issuer::KeyType;
use crate::domain::Domain;
use crate::http::upstream::HealthCheckKind;
use std::time::Duration;

/// The text of a valid file but for its issuer (a config must name one).
macro_rules! base_text {
    () => {
        r#"
data_dir: /tmp/tenant-edge-test
listen:
  https: 127.0.0.1:8443
  http: 127.0.0.1:8880
  metrics: 127.0.0.1:9731
allow:
  platform_domains: ["*.localhost", "example.com"]
upstreams:
  pools:
    app:
      backends: ["127.0.0.1:3000"]
      health_check:
        type: http
        path: /up
        interval: 2s
"#
    };
}

const BASE_NO_ISSUER: &str = base_text!();

/// A valid file, with the internal CA.
const BASE: &str = concat!(base_text!(), "issuer:\n  internal: {}\n");

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_yaml(text, "test.yaml", &no_env)
}

/// Replace `from` in BASE (which must occur) with `to`.
fn variant(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn a_config_without_an_issuer_names_both_choices() {
    let err = parse(BASE_NO_ISSUER).unwrap_err().to_string();
    assert!(
        err.contains("issuer") && err.contains("acme") && err.contains("internal"),
        "{err}"
    );
}

#[test]
fn base_is_valid_and_typed() {
    let c = parse(BASE).expect("valid");
    assert_eq!(c.listen.https, vec!["127.0.0.1:8443".parse().unwrap()]);
    assert_eq!(c.listen.redirect_https_port, 8443);
    assert_eq!(c.tls.key_type, KeyType::EcdsaP256);
    assert_eq!(c.upstreams.pools[0].name, "app");
    assert_eq!(c.upstreams.default_pool, 0);
    let hc = c.upstreams.pools[0].health_check.as_ref().unwrap();
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert!(
        matches!(&hc.kind, HealthCheckKind::Http { path, expected_status: (200, 299), .. } if path == "/up")
    );
    assert!(matches!(c.issuer, IssuerConfig::Internal(_)));
    let p = &c.allow.platform_domains;
    assert_eq!(
        p[0],
        NamePattern::Below(Domain::parse("localhost").unwrap())
    );
    assert_eq!(
        p[1],
        NamePattern::Exact(Domain::parse("example.com").unwrap())
    );
}

#[test]
fn each_bad_input_names_its_key_path_and_value() {
    // (description, document, key path that must be reported, text the value must show)
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "unknown top-level key",
            format!("{BASE}\nlisten_https: 1\n"),
            "listen_https",
            None,
        ),
        (
            "unknown nested key",
            variant("  metrics:", "  htps: 127.0.0.1:1\n  metrics:"),
            "listen.htps",
            None,
        ),
        (
            "unknown key in a pool",
            variant("      backends:", "      backend: x\n      backends:"),
            "upstreams.pools.app.backend",
            None,
        ),
        (
            "bad address",
            variant("https: 127.0.0.1:8443", "https: localhost:8443"),
            "listen.https",
            Some("localhost:8443"),
        ),
        (
            "bad address in a list",
            variant("https: 127.0.0.1:8443", "https: [127.0.0.1:8443, 1.2.3.4]"),
            "listen.https[1]",
            Some("1.2.3.4"),
        ),
        (
            "bad backend",
            variant("\"127.0.0.1:3000\"", "\"127.0.0.1:99999\""),
            "upstreams.pools.app.backends[0]",
            Some("127.0.0.1:99999"),
        ),
        (
            "bad duration",
            variant("interval: 2s", "interval: 2 fortnights"),
            "upstreams.pools.app.health_check.interval",
            Some("2 fortnights"),
        ),
        (
            "duration without unit",
            variant("interval: 2s", "interval: 2"),
            "upstreams.pools.app.health_check.interval",
            Some("2"),
        ),
        (
            "zero duration",
            variant("interval: 2s", "interval: 0s"),
            "upstreams.pools.app.health_check.interval",
            Some("0s"),
        ),
        (
            "bad enum",
            variant("type: http", "type: udp"),
            "upstreams.pools.app.health_check.type",
            Some("udp"),
        ),
        (
            "bad health path",
            variant("path: /up", "path: up"),
            "upstreams.pools.app.health_check.path",
            Some("up"),
        ),
        (
            "missing pool",
            variant("upstreams:", "upstreams:\n  default_pool: web"),
            "upstreams.default_pool",
            Some("web"),
        ),
        (
            "route to a missing pool",
            variant(
                "upstreams:",
                "upstreams:\n  routes:\n    - suffix: admin.example.com\n      pool: admin",
            ),
            "upstreams.routes[0].pool",
            Some("admin"),
        ),
        (
            "bad route suffix",
            variant(
                "upstreams:",
                "upstreams:\n  routes:\n    - suffix: \"bad name\"\n      pool: app",
            ),
            "upstreams.routes[0].suffix",
            Some("bad name"),
        ),
        (
            "no pools",
            BASE[..BASE.find("upstreams:").unwrap()].to_string(),
            "upstreams.pools",
            None,
        ),
        (
            "empty backends",
            variant("backends: [\"127.0.0.1:3000\"]", "backends: []"),
            "upstreams.pools.app.backends",
            None,
        ),
        (
            "bad platform domain",
            variant("\"example.com\"", "\"exa mple.com\""),
            "allow.platform_domains[1]",
            Some("exa mple.com"),
        ),
        (
            "bad wildcard",
            variant("\"*.localhost\"", "\"*.*.localhost\""),
            "allow.platform_domains[0]",
            Some("*.*.localhost"),
        ),
        (
            "ip as platform domain",
            variant("\"example.com\"", "\"10.0.0.1\""),
            "allow.platform_domains[1]",
            Some("10.0.0.1"),
        ),
        (
            "missing data_dir",
            variant("data_dir: /tmp/tenant-edge-test", ""),
            "data_dir",
            None,
        ),
        (
            "missing https",
            variant("  https: 127.0.0.1:8443\n", ""),
            "listen.https",
            None,
        ),
        (
            "duplicate listener",
            variant("metrics: 127.0.0.1:9731", "metrics: 127.0.0.1:8880"),
            "listen.metrics",
            Some("127.0.0.1:8880"),
        ),
        (
            "threads not a number",
            format!("{BASE}server:\n  threads: many\n"),
            "server.threads",
            Some("many"),
        ),
        (
            "bad key type",
            format!("{BASE}tls:\n  key_type: dsa\n"),
            "tls.key_type",
            Some("dsa"),
        ),
        (
            "bad default name",
            format!("{BASE}tls:\n  default_name: 127.0.0.1\n"),
            "tls.default_name",
            Some("127.0.0.1"),
        ),
        (
            "issue timeout over Pingora's cap",
            format!("{BASE}tls:\n  issue_timeout: 2m\n"),
            "tls.issue_timeout",
            Some("2m"),
        ),
        (
            "both issuers",
            format!("{BASE_NO_ISSUER}issuer:\n  internal: {{}}\n  acme: {{}}\n"),
            "issuer",
            None,
        ),
        (
            "lifetime too short",
            format!("{BASE_NO_ISSUER}issuer:\n  internal:\n    lifetime: 30s\n"),
            "issuer.internal.lifetime",
            None,
        ),
        (
            "bad challenge",
            format!("{BASE_NO_ISSUER}issuer:\n  acme:\n    challenges: [dns-01]\n"),
            "issuer.acme.challenges[0]",
            Some("dns-01"),
        ),
        (
            "bad contact",
            format!("{BASE_NO_ISSUER}issuer:\n  acme:\n    contact: [\"not-an-email\"]\n"),
            "issuer.acme.contact[0]",
            Some("not-an-email"),
        ),
        (
            "database url not postgres",
            BASE.replace("allow:\n", "allow:\n  database:\n    url: mysql://x\n"),
            "allow.database.url",
            None,
        ),
        (
            "missing env var",
            format!("{BASE_NO_ISSUER}issuer:\n  acme:\n    contact: [\"${{ACME_EMAIL}}\"]\n"),
            "issuer.acme.contact[0]",
            None,
        ),
        (
            "query without $1",
            BASE.replace(
                "allow:\n",
                "allow:\n  database:\n    url: postgres://localhost/app\n    query: SELECT 1\n",
            ),
            "allow.database.query",
            Some("SELECT 1"),
        ),
    ];
    for (what, doc, path, value) in cases {
        let err = match parse(&doc) {
            Ok(_) => panic!("{what}: accepted:\n{doc}"),
            Err(e) => e,
        };
        let found = err.errors.iter().find(|e| e.path == path);
        let Some(found) = found else {
            panic!("{what}: no error for {path}; got:\n{err}");
        };
        if let Some(v) = value {
            let shown = found.value.as_deref().unwrap_or_default();
            assert!(
                shown.contains(v),
                "{what}: value {v:?} not shown in {found}"
            );
            assert!(
                err.to_string().contains(path),
                "{what}: message lacks the path: {err}"
            );
        }
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let doc = BASE
        .replace("https: 127.0.0.1:8443", "https: nope")
        .replace("interval: 2s", "interval: soon")
        .replace(
            "metrics: 127.0.0.1:9731",
            "metrics: 127.0.0.1:9731\n  typo: 1",
        );
    let err = parse(&doc).unwrap_err();
    for path in [
        "listen.https",
        "upstreams.pools.app.health_check.interval",
        "listen.typo",
    ] {
        assert!(err.mentions(path), "missing {path} in:\n{err}");
    }
    assert_eq!(err.errors.len(), 3, "{err}");
}

#[test]
fn structural_errors_name_the_path() {
    let err = parse(&variant("  pools:\n", "  pools: [1, 2]\n  unused:\n")).unwrap_err();
    assert!(err.errors[0].path.starts_with("upstreams.pools"), "{err}");
}

#[test]
fn env_vars_are_expanded() {
    let doc = format!("{BASE_NO_ISSUER}issuer:\n  acme:\n    contact: [\"${{ACME_EMAIL}}\"]\n");
    let env = |name: &str| (name == "ACME_EMAIL").then(|| "ops@example.com".to_string());
    let c = Config::from_yaml(&doc, "t", &env).expect("valid");
    match c.issuer {
        IssuerConfig::Acme(a) => assert_eq!(a.contact, vec!["mailto:ops@example.com"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn database_password_is_not_echoed() {
    let doc = BASE.replace(
        "allow:\n",
        "allow:\n  database:\n    url: mysql://user:s3cret@db/app\n",
    );
    let err = parse(&doc).unwrap_err();
    assert!(err.mentions("allow.database.url"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn routes_are_longest_suffix_first() {
    let doc = BASE.replace(
        "upstreams:\n",
        "upstreams:\n  default_pool: app\n  routes:\n    - {suffix: example.com, pool: app}\n    - {suffix: admin.example.com, pool: app}\n",
    );
    let c = parse(&doc).expect("valid");
    assert_eq!(c.upstreams.routes[0].suffix.as_str(), "admin.example.com");
}

#[test]
fn the_account_budget_applies_to_acme_and_to_the_internal_ca_only_when_asked() {
    let internal = parse(BASE).expect("valid");
    assert_eq!(internal.limits.issuance.account, None);
    let asked = parse(&format!(
        "{BASE}limits:\n  issuance:\n    orders_per_3h: 50\n"
    ))
    .expect("valid");
    let budget = asked.limits.issuance.account.expect("asked for");
    assert_eq!((budget.limit, budget.renewal_reserve), (50, 10));
    let acme = parse(&format!(
        "{BASE_NO_ISSUER}issuer:\n  acme:\n    directory: https://ca.test/dir\n    contact: [\"a@b.test\"]\n"
    ))
    .expect("valid");
    let budget = acme
        .limits
        .issuance
        .account
        .expect("on by default with ACME");
    assert_eq!((budget.limit, budget.renewal_reserve), (300, 60));
}
