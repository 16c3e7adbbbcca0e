//! The operator commands: `check` on every shipped file and on broken ones, `allow`, and `run`
//! refusing what it cannot do.

use crate::common::*;
use std::process::Command;

fn tenant_edge(args: &[&str]) -> (i32, String) {
    // conf/production.yaml reads these from the environment.
    let out = Command::new(EDGE)
        .args(args)
        .env(
            "DATABASE_URL",
            "postgres://tenant_edge@db.internal:5432/app",
        )
        .env("ACME_EMAIL", "ops@example.com")
        .output()
        .expect("run tenant-edge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_shipped_config_passes_check() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (code, out) = tenant_edge(&["check", "--syntax-only", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}:\n{out}", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "expected dev.yaml and production.yaml");

    // dev.yaml is what `make run` uses: the full check (ports, data dir) passes too.
    let dev = conf.join("dev.yaml");
    let (code, out) = tenant_edge(&["check", "-c", dev.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok    listen.https 127.0.0.1:8443"), "{out}");
}

#[test]
fn check_names_a_taken_port_and_every_config_error() {
    let setup = EdgeSetup::new();
    let taken = std::net::TcpListener::bind(setup.https).unwrap();
    let config = setup.config(&[setup.http], "");
    let (code, out) = tenant_edge(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "error listen.https {}: already in use",
            setup.https
        )),
        "{out}"
    );
    // The holder is named from /proc: this test process.
    assert!(
        out.contains(&format!("(pid {}:", std::process::id())),
        "the holder is not named: {out}"
    );
    drop(taken);

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval: 500ms", "interval: often")
        .replace("threads: 2", "threads: 2\n  thread: 3");
    std::fs::write(&config, text).unwrap();
    let (code, out) = tenant_edge(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error upstreams.pools.app.health_check.interval: expected a duration"),
        "{out}"
    );
    assert!(out.contains("\"often\""), "{out}");
    assert!(out.contains("error server.thread: unknown key"), "{out}");
}

#[test]
fn allow_says_which_rule_allows_a_name_and_why_not() {
    let setup = EdgeSetup::new();
    let config = setup.config(&[setup.http], "");
    let c = config.to_str().unwrap();
    let (code, out) = tenant_edge(&["allow", "Shop.Tenant.Test", "-c", c]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "shop.tenant.test is allowed by platform (allow.platform_domains: *.tenant.test)"
        ),
        "{out}"
    );
    let (code, out) = tenant_edge(&["allow", "shop.other.test", "-c", c]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not allowed: no entry of allow.platform_domains matches"),
        "{out}"
    );
    let (code, out) = tenant_edge(&["allow", "10.1.2.3", "-c", c]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("an IP address is not a DNS name"), "{out}");
}

#[test]
fn run_refuses_a_bad_file_with_every_error() {
    let setup = EdgeSetup::new();
    let config = setup.config(&[setup.http], "tls:\n  key_type: dsa\n");
    let (code, out) = tenant_edge(&["run", "-c", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        out.contains("tls.key_type: expected one of: ecdsa_p256, rsa2048 (got \"dsa\")"),
        "{out}"
    );
}

#[test]
fn run_refuses_to_start_when_a_listen_port_is_taken() {
    let setup = EdgeSetup::new();
    let _kamal_proxy = std::net::TcpListener::bind(setup.https).unwrap();
    let config = setup.config(&[setup.http], "");
    let started = std::time::Instant::now();
    let (code, out) = tenant_edge(&["run", "-c", config.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        out.contains(&format!("listen.https {}", setup.https)),
        "{out}"
    );
    assert!(
        out.contains(&format!("(pid {}:", std::process::id())),
        "the holder is not named: {out}"
    );
}

#[test]
fn check_names_the_process_holding_the_metrics_port() {
    let setup = EdgeSetup::new();
    // Another program on the metrics port (as node_exporter on 9100 would be).
    let _holder = upstream_on(setup.dir.path(), "squatter", setup.metrics);
    let config = setup.config(&[setup.http], "");
    let (code, out) = tenant_edge(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("error listen.metrics {}", setup.metrics)))
        .unwrap_or_else(|| panic!("no finding for the metrics port: {out}"));
    assert!(
        line.contains("already in use by demo-upstream (pid "),
        "{line}"
    );
    assert!(line.contains("--name squatter"), "the command line: {line}");
    assert!(
        line.contains("stop it, or listen on another address"),
        "{line}"
    );
}

#[test]
fn a_syntax_check_needs_no_secret() {
    let prod = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/production.yaml");
    let out = Command::new(EDGE)
        .args(["check", "--syntax-only", "-c"])
        .arg(&prod)
        .env_remove("DATABASE_URL")
        .env_remove("ACME_EMAIL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warn  ${ACME_EMAIL}: the environment variable is not set"),
        "{text}"
    );
    // Without --syntax-only, an unset variable is an error naming it, not a placeholder.
    let out = Command::new(EDGE)
        .args(["check", "-c"])
        .arg(&prod)
        .env_remove("DATABASE_URL")
        .env_remove("ACME_EMAIL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("environment variable ACME_EMAIL is not set"),
        "{text}"
    );
    assert!(!text.contains("(got \"${ACME_EMAIL}\")"), "{text}");
}

/// Stops a daemonized edge (by its pid file) when dropped.
struct Daemon(std::path::PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn run_as_a_daemon_with_a_relative_data_dir_keeps_everything_under_the_start_directory() {
    let setup = EdgeSetup::new();
    let start = setup.dir.path();
    let (_up, backend) = upstream(start, "app");
    let name = format!("d{}.tenant.test", setup.https.port());
    let config = format!(
        "data_dir: data\nlisten:\n  https: {}\n  http: {}\n  metrics: {}\nserver:\n  threads: 1\n  error_log: edge.log\nallow:\n  platform_domains: [\"*.tenant.test\"]\nissuer:\n  internal: {{}}\nupstreams:\n  pools:\n    app:\n      backends: [\"{backend}\"]\n",
        setup.https, setup.http, setup.metrics
    );
    std::fs::write(start.join("edge.yaml"), config).unwrap();
    let _daemon = Daemon(start.join("data/tenant-edge.pid"));
    let status = Command::new(EDGE)
        .args(["run", "-d", "-c", "edge.yaml"])
        .current_dir(start)
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_port(setup.https, std::time::Duration::from_secs(20));
    let hs = handshake(
        setup.https,
        Some(&name),
        Some(&start.join("data/ca/root.pem")),
    );
    assert!(
        hs.ok,
        "{}: {}",
        hs.error,
        std::fs::read_to_string(start.join("edge.log")).unwrap_or_default()
    );
    for file in [
        "data/ca/root.pem".to_string(),
        format!("data/certs/{name}/bundle.pem"),
        "data/tenant-edge.pid".to_string(),
        "data/admin.sock".to_string(),
        "edge.log".to_string(),
    ] {
        assert!(
            start.join(&file).exists(),
            "{file} is not under the start directory"
        );
    }
    // Nothing under / (where a daemon's working directory is).
    assert!(!std::path::Path::new("/data/certs").join(&name).exists());
    assert!(!std::path::Path::new("/edge.log").exists());
}

#[test]
fn ipv4_and_ipv6_wildcards_can_both_be_listed() {
    let setup = EdgeSetup::new();
    let (_up, up) = upstream(setup.dir.path(), "a");
    let port = setup.https.port();
    let config = setup.config(&[up], "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("https: {}", setup.https),
        &format!("https: [\"127.0.0.1:{port}\", \"[::1]:{port}\"]"),
    );
    std::fs::write(&config, text).unwrap();
    let _edge = setup.start(&config);
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let h = handshake(
            addr.parse().unwrap(),
            Some("v6.tenant.test"),
            Some(&setup.ca_root()),
        );
        assert!(h.ok, "{addr}: {}", h.error);
    }
}
