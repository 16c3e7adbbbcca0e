//! PostgreSQL for tests: a throwaway database per test (Rails-like `companies` schema from
//! ARCHITECTURE.md) and a TCP proxy in front of the server that a test can stop and restart to
//! simulate an outage. The admin URL is `DATABASE_URL`, else the project machines' server
//! (`postgres://postgres@127.0.0.1:5432/postgres`, trust auth).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// `url` with its database (the path) replaced by `db`; the query string is kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").expect("a URL with a scheme") + 3;
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with its host and port replaced by `addr` (user and password kept).
pub fn with_address(url: &str, addr: SocketAddr) -> String {
    let scheme_end = url.find("://").expect("a URL with a scheme") + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    format!(
        "{}{userinfo}{addr}{}",
        &url[..scheme_end],
        &rest[authority_end..]
    )
}

/// The TCP address of the PostgreSQL server the admin URL names.
pub fn server_addr() -> SocketAddr {
    let config: tokio_postgres::Config = admin_url().parse().expect("DATABASE_URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .expect("a TCP PostgreSQL address")
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own, dropped (best effort, `WITH (FORCE)`) when the value is dropped.
pub struct TestDb {
    pub name: String,
    /// URL of the test database, straight to the server.
    pub url: String,
    /// A connection for the test's own statements.
    pub client: tokio_postgres::Client,
}

impl TestDb {
    /// Create `te_dec_<pid>_<random>` with citext and the Rails-like schema.
    pub async fn create() -> TestDb {
        let name = format!(
            "te_dec_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let url = with_database(&admin_url(), &name);
        let client = connect(&url).await;
        client
            .batch_execute(
                "CREATE EXTENSION IF NOT EXISTS citext;
                 CREATE TABLE companies (
                     id bigserial PRIMARY KEY,
                     name text,
                     dns_names citext[] NOT NULL DEFAULT '{}',
                     active boolean NOT NULL DEFAULT true
                 );
                 CREATE INDEX index_companies_on_dns_names ON companies USING gin (dns_names);",
            )
            .await
            .expect("create the schema");
        TestDb { name, url, client }
    }

    /// Insert a company owning `dns_names` (a PostgreSQL array literal such as `{a.test,b.test}`).
    pub async fn add_company(&self, name: &str, dns_names: &str, active: bool) {
        self.client
            .execute(
                "INSERT INTO companies (name, dns_names, active) VALUES ($1, $2::text::citext[], $3)",
                &[&name, &dns_names, &active],
            )
            .await
            .expect("insert a company");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy on a fixed loopback port that forwards to `target`. `stop` closes the listener
/// and every forwarded connection (the client sees its connections break and new ones
/// refused); `start` listens again on the same port.
pub struct TcpProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<Running>>,
    /// Bytes forwarded from clients to `target` so far (every query is some).
    to_server: Arc<AtomicU64>,
    /// While set, every byte (of every connection, new ones too) is swallowed: a hung server.
    hung: Arc<std::sync::atomic::AtomicBool>,
    /// Connections numbered below this are swallowed: a path that silently dropped them.
    silent_below: Arc<AtomicU64>,
    next_id: Arc<AtomicU64>,
}

struct Running {
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = TcpProxy {
            addr,
            target,
            running: Mutex::new(None),
            to_server: Arc::default(),
            hung: Arc::default(),
            silent_below: Arc::default(),
            next_id: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let to_server = self.to_server.clone();
        let (hung, silent_below, next_id) = (
            self.hung.clone(),
            self.silent_below.clone(),
            self.next_id.clone(),
        );
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let conns = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let counted = to_server.clone();
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                let (hung, silent_below) = (hung.clone(), silent_below.clone());
                let task = tokio::spawn(async move {
                    let silent = move || {
                        hung.load(Ordering::SeqCst) || id < silent_below.load(Ordering::SeqCst)
                    };
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        let silent_up = silent.clone();
                        let up = async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while let Ok(n) = from_client.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                if silent_up() {
                                    continue; // swallowed
                                }
                                if to_server.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                counted.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            let _ = to_server.shutdown().await;
                        };
                        let down = async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while let Ok(n) = from_server.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                if silent() {
                                    continue;
                                }
                                if to_client.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = to_client.shutdown().await;
                        };
                        tokio::join!(up, down);
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        *self.running.lock().unwrap() = Some(Running {
            accept,
            connections,
        });
    }

    /// Swallow every byte, of every connection (new ones too), until `unhang`: a server that
    /// accepts connections and never answers.
    pub fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
    }

    pub fn unhang(&self) {
        self.hung.store(false, Ordering::SeqCst);
    }

    /// Swallow, for ever, every byte of the connections open now (new ones work): a network
    /// path (a NAT, a firewall) that silently forgot them.
    pub fn silence_existing(&self) {
        self.silent_below
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Bytes clients sent through the proxy so far.
    pub fn bytes_to_server(&self) -> u64 {
        self.to_server.load(Ordering::Relaxed)
    }

    /// Close the listener and every connection through it.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(running) = running {
            running.accept.abort();
            let _ = running.accept.await;
            let tasks: Vec<_> = running.connections.lock().unwrap().drain(..).collect();
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&self) {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}
