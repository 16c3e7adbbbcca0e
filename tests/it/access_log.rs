//! The access log and the request id, read as an operator would: the JSON lines the edge
//! writes for real requests, a file rotated under it (SIGUSR1), sampling, and the
//! `X-Request-Id` the upstream receives.

use crate::common::*;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The access-log lines in `path` (parsed), waiting up to 5 s until `until` holds for them.
fn lines_until(
    path: &Path,
    until: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
            .collect();
        if until(&lines) || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An edge (upstream "a") whose access log goes to `<dir>/access.log`, with `access` more
/// keys of `access_log:` (indented two spaces) and `extra` YAML before it.
struct Logged {
    edge: Proc,
    _up: Proc,
    backend: std::net::SocketAddr,
    log: std::path::PathBuf,
    setup: EdgeSetup,
}

fn logged(access: &str, extra: &str) -> Logged {
    let setup = EdgeSetup::new();
    let (up, backend) = upstream(setup.dir.path(), "a");
    let log = setup.dir.path().join("access.log");
    let config = setup.config(
        &[backend],
        &format!("{extra}access_log:\n  path: {}\n{access}", log.display()),
    );
    Logged {
        edge: setup.start(&config),
        _up: up,
        backend,
        log,
        setup,
    }
}

/// `GET /misdirected` over HTTP/1.1 on a connection for shop.tenant.test with another Host:
/// the edge answers 421 itself.
fn misdirected(setup: &EdgeSetup) {
    use std::io::Write;
    let mut tls = tls_over(
        tcp_from("127.0.0.1", setup.https),
        "shop.tenant.test",
        &["http/1.1"],
    );
    tls.write_all(
        b"GET /misdirected HTTP/1.1\r\nHost: other.tenant.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let head = read_response(&mut tls).0;
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
}

fn with_path<'a>(lines: &'a [serde_json::Value], path: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["path"] == path).collect()
}

/// The value of header `name` in the demo upstream's echo of the request it received.
fn echoed_header(body: &str, name: &str) -> Option<String> {
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_json_line_with_every_field() {
    let Logged {
        setup,
        backend,
        log,
        ..
    } = &logged("", "");
    let client = setup.client(&["shop.tenant.test"]);
    let resp = client
        .post(setup.url("shop.tenant.test", "/orders/42?token=secret"))
        .header("x-request-id", "chosen-by-the-client")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let sent_upstream = echoed_header(&body, "x-request-id").expect("an id went upstream");

    let lines = lines_until(log, |l| !with_path(l, "/orders/42").is_empty());
    let found = with_path(&lines, "/orders/42");
    assert_eq!(found.len(), 1, "one line per request: {lines:?}");
    let line = found[0];
    assert_eq!(line["event"], "request");
    assert!(
        line["time"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC: {line}"
    );
    let client_addr: std::net::SocketAddr = line["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(client_addr.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(line["tls_name"], "shop.tenant.test");
    assert_eq!(line["tls_version"], "TLSv1.3");
    assert_eq!(line["alpn"], "h2");
    assert_eq!(line["resumed"], false);
    assert_eq!(line["method"], "POST");
    assert_eq!(
        line["host"],
        format!("shop.tenant.test:{}", setup.https.port()),
        "the Host header as sent"
    );
    assert_eq!(line["path"], "/orders/42", "no query unless asked: {line}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["bytes_in"], 10);
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert_eq!(line["upstream"], backend.to_string());
    assert_eq!(line["pool"], "app");
    assert_eq!(line["refusal"], serde_json::Value::Null);
    // The client is not a trusted peer: its id is replaced, and the upstream got the same id
    // the log shows.
    let id = line["request_id"].as_str().unwrap();
    assert_ne!(id, "chosen-by-the-client");
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(id, sent_upstream);

    // A request the edge refuses itself (Host ≠ the TLS name) is logged with its reason.
    misdirected(setup);
    let lines = lines_until(log, |l| !with_path(l, "/misdirected").is_empty());
    let refused = with_path(&lines, "/misdirected");
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert_eq!(refused[0]["status"], 421);
    assert_eq!(refused[0]["refusal"], "misdirected");
    assert_eq!(refused[0]["alpn"], "http/1.1");
    assert_eq!(refused[0]["upstream"], serde_json::Value::Null);

    // The handshakes are counted by protocol version and ALPN.
    let m = setup.scrape();
    for alpn in ["h2", "http/1.1"] {
        assert!(
            metric(
                &m,
                "tenant_edge_tls_handshakes_completed_total",
                &[("version", "TLSv1.3"), ("alpn", alpn), ("resumed", "false")]
            ) >= 1.0,
            "{alpn}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_request_id_is_kept_and_others_are_generated() {
    let Logged { setup, log, .. } =
        &logged("", "forwarding:\n  trusted_proxies: [\"127.0.0.2/32\"]\n");
    let from = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        setup.client_with(&["shop.tenant.test"], move |b| b.local_address(ip))
    };
    let get = |client: reqwest::Client, path: &'static str, id: Option<&'static str>| {
        let url = setup.url("shop.tenant.test", path);
        async move {
            let mut req = client.get(url);
            if let Some(id) = id {
                req = req.header("x-request-id", id);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            echoed_header(&resp.text().await.unwrap(), "x-request-id").expect("an id upstream")
        }
    };

    // From the trusted balancer: its id is kept, upstream and in the log.
    let kept = get(from("127.0.0.2"), "/trusted", Some("lb-7f3a-0001")).await;
    assert_eq!(kept, "lb-7f3a-0001");
    // From the trusted balancer without an id: one is generated.
    let generated = get(from("127.0.0.2"), "/trusted-none", None).await;
    assert_eq!(generated.len(), 32, "{generated}");
    // From anyone else: the client's id is replaced.
    let replaced = get(from("127.0.0.1"), "/untrusted", Some("lb-7f3a-0001")).await;
    assert_ne!(replaced, "lb-7f3a-0001");
    assert_eq!(replaced.len(), 32, "{replaced}");
    assert!(
        replaced.bytes().all(|b| b.is_ascii_hexdigit()),
        "{replaced}"
    );
    assert_ne!(replaced, generated);

    let lines = lines_until(log, |l| l.len() >= 3);
    for (path, id) in [
        ("/trusted", kept.as_str()),
        ("/trusted-none", generated.as_str()),
        ("/untrusted", replaced.as_str()),
    ] {
        let found = with_path(&lines, path);
        assert_eq!(found.len(), 1, "{path}: {lines:?}");
        assert_eq!(found[0]["request_id"], id, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_rotation() {
    let Logged {
        setup, log, edge, ..
    } = &logged("", "");
    let rotated = setup.dir.path().join("access.log.1");
    let client = setup.client(&["shop.tenant.test"]);
    let get = |path: &str| client.get(setup.url("shop.tenant.test", path)).send();
    assert_eq!(get("/before").await.unwrap().status(), 200);
    assert_eq!(
        with_path(&lines_until(log, |l| !l.is_empty()), "/before").len(),
        1
    );

    // logrotate: rename, then SIGUSR1.
    std::fs::rename(log, &rotated).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-USR1", &edge.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The reopen happens on the writer thread; requests made meanwhile go to one file or the
    // other, never lost: wait until the new file exists.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(
            Instant::now() < deadline,
            "no new file after SIGUSR1:\n{}",
            edge.log_text()
        );
        get("/probe").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("/after").await.unwrap().status(), 200);
    let new = lines_until(log, |l| !with_path(l, "/after").is_empty());
    assert_eq!(with_path(&new, "/after").len(), 1, "{new:?}");
    assert!(with_path(&new, "/before").is_empty(), "{new:?}");
    let old = lines_until(&rotated, |_| true);
    assert_eq!(with_path(&old, "/before").len(), 1, "{old:?}");
    assert!(with_path(&old, "/after").is_empty(), "{old:?}");
    assert!(edge.log_text().contains("reopen"), "{}", edge.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_drops_successes_but_keeps_refusals() {
    let Logged { setup, log, .. } = &logged("  sample: 0\n", "");
    let client = setup.client(&["shop.tenant.test"]);
    for _ in 0..20 {
        let resp = client
            .get(setup.url("shop.tenant.test", "/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A request the edge refuses (421, Host ≠ the TLS name) is an error status: logged.
    misdirected(setup);
    // A refused handshake (a name outside the allow-list) is logged as such.
    let refused = handshake(setup.https, Some("stranger.example"), None);
    assert!(!refused.ok);

    let lines = lines_until(log, |l| {
        l.iter().any(|x| x["event"] == "handshake_refused")
            && !with_path(l, "/misdirected").is_empty()
    });
    assert!(
        with_path(&lines, "/ok").is_empty(),
        "successes sampled out: {lines:?}"
    );
    assert_eq!(with_path(&lines, "/misdirected").len(), 1, "{lines:?}");
    let handshake_line = lines
        .iter()
        .find(|l| l["event"] == "handshake_refused")
        .unwrap_or_else(|| panic!("no refused handshake: {lines:?}"));
    assert_eq!(handshake_line["tls_name"], "stranger.example");
    assert!(handshake_line["refusal"].is_string(), "{handshake_line}");
    assert!(handshake_line["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1"));
}
