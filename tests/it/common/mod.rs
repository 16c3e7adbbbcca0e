//! Test harness: real processes on loopback, ports picked at run time, a data directory per test.
#![allow(dead_code)]

pub mod pebble;
pub mod pg;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;

pub const EDGE: &str = env!("CARGO_BIN_EXE_tenant-edge");
pub const UPSTREAM: &str = env!("CARGO_BIN_EXE_demo-upstream");

/// A port free on every one of `ips` (bound on the first, checked on the others).
pub fn free_port_on(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind(format!("{}:0", ips[0]))
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(format!("{ip}:{port}")).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr} after {timeout:?}");
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A demo upstream named `name` on a fresh port.
pub fn upstream(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.join(format!("upstream-{name}.log"));
    let child = Command::new(UPSTREAM)
        .args(["--listen", &addr.to_string(), "--name", name])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn demo-upstream");
    wait_for_port(addr, Duration::from_secs(10));
    (Proc { child, log }, addr)
}

/// Ports and paths of one edge under test.
pub struct EdgeSetup {
    pub dir: tempfile::TempDir,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

impl EdgeSetup {
    pub fn new() -> EdgeSetup {
        let p = |_| format!("127.0.0.1:{}", free_port()).parse().unwrap();
        EdgeSetup {
            dir: tempfile::tempdir().unwrap(),
            https: p(0),
            http: p(1),
            metrics: p(2),
        }
    }

    /// An edge on `ip` with the given HTTPS and HTTP ports (several hosts on one machine share
    /// the ports Pebble validates on, each on its own loopback address).
    pub fn on(ip: &str, https: u16, http: u16) -> EdgeSetup {
        let metrics = TcpListener::bind(format!("{ip}:0"))
            .and_then(|l| l.local_addr())
            .expect("a free port");
        EdgeSetup {
            dir: tempfile::tempdir().unwrap(),
            https: format!("{ip}:{https}").parse().unwrap(),
            http: format!("{ip}:{http}").parse().unwrap(),
            metrics,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca_root(&self) -> PathBuf {
        self.data().join("ca/root.pem")
    }

    /// A config with these ports, platform domains `*.tenant.test` + `tenant.test`, the given
    /// backends (round robin, HTTP health check every 500ms) and `extra` YAML appended.
    pub fn config(&self, backends: &[SocketAddr], extra: &str) -> PathBuf {
        self.config_with(
            backends,
            "  platform_domains: [\"tenant.test\", \"*.tenant.test\"]\n",
            extra,
        )
    }

    /// `config` with the body of the `allow:` section given (indented two spaces).
    pub fn config_with(&self, backends: &[SocketAddr], allow: &str, extra: &str) -> PathBuf {
        let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        let text = format!(
            r#"data_dir: {data}
listen:
  https: {https}
  http: {http}
  metrics: {metrics}
server:
  threads: 2
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {dir}/edge.pid
  upgrade_sock: {dir}/upgrade.sock
allow:
{allow}upstreams:
  pools:
    app:
      backends: [{backends}]
      connect_timeout: 1s
      health_check:
        type: http
        path: /up
        interval: 500ms
        timeout: 500ms
{extra}"#,
            data = self.data().display(),
            https = self.https,
            http = self.http,
            metrics = self.metrics,
            dir = self.dir.path().display(),
            backends = backends.join(", "),
        );
        let path = self.dir.path().join("edge.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Start `tenant-edge run -c config` and wait for its listeners.
    pub fn start(&self, config: &Path) -> Proc {
        let log = self.dir.path().join(format!("edge-{}.log", free_port()));
        let child = Command::new(EDGE)
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tenant-edge");
        let mut proc = Proc { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(self.metrics).is_ok() && TcpStream::connect(self.https).is_ok() {
                return proc;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("tenant-edge exited with {status}:\n{}", proc.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "tenant-edge did not start:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Files under data/certs (what was written for names).
    pub fn cert_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data().join("certs"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn scrape(&self) -> String {
        http_get(self.metrics, "/metrics", "127.0.0.1").1
    }

    /// A reqwest client that resolves every `names` entry to the edge and trusts its CA.
    pub fn client(&self, names: &[&str]) -> reqwest::Client {
        self.client_with(names, |b| b)
    }

    /// `client`, with extra builder settings (`|b| b.http1_only()`).
    pub fn client_with(
        &self,
        names: &[&str],
        f: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> reqwest::Client {
        self.client_trusting(&std::fs::read(self.ca_root()).unwrap(), names, f)
    }

    /// A client that trusts only `root_pem` (e.g. Pebble's issuing root).
    pub fn client_trusting(
        &self,
        root_pem: &[u8],
        names: &[&str],
        f: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(root_pem).unwrap();
        let mut b = reqwest::Client::builder()
            .tls_certs_only([root])
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15));
        for n in names {
            b = b.resolve(n, self.https);
        }
        f(b).build().unwrap()
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.https.port())
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`; returns (status line, body).
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> (String, String) {
    let raw = http_raw(addr, path, host);
    let status = raw.lines().next().unwrap_or_default().to_string();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Raw response head + body of a plain HTTP/1.1 request.
pub fn http_raw(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The sum of the samples of `name` whose labels include every `labels` pair (0 if none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Outcome of a raw TLS handshake with an arbitrary SNI (or none).
pub struct Handshake {
    pub ok: bool,
    pub error: String,
    /// Leaf first, as sent by the server.
    pub chain: Vec<X509>,
}

/// Handshake with OpenSSL, sending `sni` verbatim (even invalid names and IP literals), and
/// verifying the chain against `root` when given.
pub fn handshake(addr: SocketAddr, sni: Option<&str>, root: Option<&Path>) -> Handshake {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    match root {
        Some(root) => {
            builder.set_ca_file(root).unwrap();
            builder.set_verify(SslVerifyMode::PEER);
        }
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    let connector = builder.build();
    let mut config = connector.configure().unwrap();
    config.set_use_server_name_indication(false);
    config.set_verify_hostname(false);
    let mut ssl = config.into_ssl("unused").unwrap();
    if let Some(sni) = sni {
        ssl.set_hostname(sni).unwrap();
    }
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    match ssl.connect(tcp) {
        Ok(stream) => {
            let chain = stream
                .ssl()
                .peer_cert_chain()
                .map(|c| c.iter().map(|x| x.to_owned()).collect())
                .unwrap_or_default();
            Handshake {
                ok: true,
                error: String::new(),
                chain,
            }
        }
        Err(e) => Handshake {
            ok: false,
            error: e.to_string(),
            chain: Vec::new(),
        },
    }
}

/// DNS names in a certificate's subjectAltName.
pub fn sans(cert: &X509) -> Vec<String> {
    cert.subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|g| g.dnsname().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
