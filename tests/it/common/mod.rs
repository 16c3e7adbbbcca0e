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

/// Whether `port` was not handed out before in this test process, noting it. A picked port is
/// released until its user binds it, and the kernel may give the same one to the next pick:
/// two processes of one test (an edge and pebble-challtestsrv, say) then collide.
fn first_time(port: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    if handed.contains(&port) {
        return false;
    }
    handed.push(port);
    true
}

/// A port free on every one of `ips` (bound on the first, checked on the others), never one
/// handed out before in this process.
pub fn free_port_on(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind(format!("{}:0", ips[0]))
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(format!("{ip}:{port}")).is_ok())
            && first_time(port)
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A free TCP port on 127.0.0.1 (bound, then released), never one handed out before in this
/// process.
pub fn free_port() -> u16 {
    free_port_on(&["127.0.0.1"])
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
        // A failing test shows what the process said (the data directory is deleted after).
        if std::thread::panicking() {
            let log = self.log_text();
            let tail = &log[log.len().saturating_sub(6000)..];
            let start = (0..=tail.len().min(4))
                .find(|&i| tail.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!(
                "--- {} (last lines) ---\n{}",
                self.log.display(),
                &tail[start..]
            );
        }
    }
}

/// A demo upstream named `name` on a fresh port.
pub fn upstream(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (upstream_on(dir, name, addr), addr)
}

/// A demo upstream named `name` on `addr` (to restart one where it was).
pub fn upstream_on(dir: &Path, name: &str, addr: SocketAddr) -> Proc {
    let log = dir.join(format!("upstream-{name}-{}.log", free_port()));
    let child = Command::new(UPSTREAM)
        .args(["--listen", &addr.to_string(), "--name", name])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn demo-upstream");
    wait_for_port(addr, Duration::from_secs(10));
    Proc { child, log }
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
        let metrics: SocketAddr = format!("{ip}:{}", free_port_on(&[ip])).parse().unwrap();
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
        // The internal CA unless the test names an issuer (a config must name one).
        let issuer = if extra.contains("issuer:") {
            ""
        } else {
            "issuer:\n  internal: {}\n"
        };
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
{allow}{issuer}upstreams:
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
        // Every listener the config names: each service starts its own (the plain-HTTP one
        // may be up a moment after the HTTPS one).
        let text = std::fs::read_to_string(config).unwrap_or_default();
        let http = text.contains(&self.http.to_string()).then_some(self.http);
        loop {
            if TcpStream::connect(self.metrics).is_ok()
                && TcpStream::connect(self.https).is_ok()
                && http.is_none_or(|a| TcpStream::connect(a).is_ok())
            {
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

/// A TCP connection to `addr` from source address `from` (any 127.0.0.0/8 address works on
/// Linux without configuration), Nagle off.
pub fn tcp_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// A TLS connection over `tcp` for `sni`, offering `alpn` (e.g. `["h2"]`), not verifying the
/// server.
pub fn tls_over(tcp: TcpStream, sni: &str, alpn: &[&str]) -> openssl::ssl::SslStream<TcpStream> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    if !alpn.is_empty() {
        let mut wire = Vec::new();
        for p in alpn {
            wire.push(p.len() as u8);
            wire.extend_from_slice(p.as_bytes());
        }
        builder.set_alpn_protos(&wire).unwrap();
    }
    let connector = builder.build();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    connector
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect(sni, tcp)
        .unwrap()
}

/// Whether a read error is a read timeout (not the peer closing).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Read from `s` (whose socket has a short read timeout) until the peer closes; panics if it
/// is still open after `limit`. Returns the bytes read.
pub fn read_until_closed(s: &mut impl Read, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        assert!(
            Instant::now() < deadline,
            "still open after {limit:?} (read {} bytes)",
            out.len()
        );
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) => {}
            Err(_) => return out,
        }
    }
}

/// Send `bytes` one at a time, reading in between for the socket's read timeout (the pace of
/// the trickle): returns how long the peer kept the connection open, or panics if it
/// outlasts `limit`.
pub fn trickle(s: &mut (impl Read + Write), bytes: &[u8], limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for b in bytes.iter().cycle() {
        assert!(started.elapsed() < limit, "still open after {limit:?}");
        if s.write_all(&[*b]).and_then(|()| s.flush()).is_err() {
            return started.elapsed();
        }
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {
                read_until_closed(s, limit);
                return started.elapsed();
            }
            Err(e) if timed_out(&e) => {}
            Err(_) => return started.elapsed(),
        }
    }
    unreachable!("cycle never ends")
}

/// Read one HTTP/1.1 response with a `Content-Length` from `s`; returns (head, body).
pub fn read_response(s: &mut impl Read) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read a response head");
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = raw[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut buf).expect("read a response body");
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    (head, body)
}

/// What one TLS connection of `tls_visit` ended with.
pub struct TlsVisit {
    pub session: openssl::ssl::SslSession,
    pub reused: bool,
    /// The names in the certificate it was served.
    pub names: Vec<String>,
    /// Sessions (tickets) the server sent on it, when counted.
    pub tickets: usize,
}

/// A connection for `sni` at `version`, resuming `session` when given, with one request.
/// `count_tickets` turns on the client's session cache, which sees every ticket (and changes
/// which session the connection ends with: leave it off to resume elsewhere).
pub fn tls_visit(
    addr: SocketAddr,
    sni: &str,
    version: openssl::ssl::SslVersion,
    session: Option<&openssl::ssl::SslSession>,
    count_tickets: bool,
) -> TlsVisit {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tickets = std::sync::Arc::new(AtomicUsize::new(0));
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(version)).unwrap();
    b.set_max_proto_version(Some(version)).unwrap();
    if count_tickets {
        // Every session the server sends reaches the callback (client-side caching on).
        b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::CLIENT);
        let counted = tickets.clone();
        b.set_new_session_callback(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
    }
    let mut ssl = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl(sni)
        .unwrap();
    if let Some(session) = session {
        // SAFETY: the session came from a connection with the same settings.
        unsafe { ssl.set_session(session).unwrap() };
    }
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = ssl.connect(tcp).unwrap();
    // A request, so that TLS 1.3 session tickets (sent after the handshake, before any
    // response) are read.
    write!(s, "GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n").unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let reused = s.ssl().session_reused();
    let names = s
        .ssl()
        .peer_certificate()
        .map(|c| sans(&c))
        .unwrap_or_default();
    let session = s.ssl().session().unwrap().to_owned();
    // A close_notify, or OpenSSL marks the session not resumable when the connection is freed.
    let _ = s.shutdown();
    TlsVisit {
        session,
        reused,
        names,
        tickets: tickets.load(Ordering::SeqCst),
    }
}

/// `tls_visit` as (the session it ends with, whether it was resumed, the certificate's names).
pub fn tls_session(
    addr: SocketAddr,
    sni: &str,
    version: openssl::ssl::SslVersion,
    session: Option<&openssl::ssl::SslSession>,
) -> (openssl::ssl::SslSession, bool, Vec<String>) {
    let v = tls_visit(addr, sni, version, session, false);
    (v.session, v.reused, v.names)
}
