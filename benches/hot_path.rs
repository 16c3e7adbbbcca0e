//! Criterion benchmarks of the per-handshake hot path.
//!
//! - `domain_parse`: `Domain::parse` on the SNI shapes a handshake sees.
//! - `cert_lookup_10k`: what `EdgeTls::certificate_callback` does for a name already in the
//!   memory cache, with 10,000 names cached (`handshake_name` + `certificate`), and the bare
//!   cache read (`cached`).
//! - `tls_handshake_cached`: a full TLS 1.3 handshake (default groups, i.e. hybrid
//!   X25519MLKEM768, and X25519 alone) and a TLS 1.2 one over `tokio::io::duplex`, the server
//!   side being Pingora's `handshake_with_callback` with the edge's own callbacks
//!   (`EdgeTls`). The time is client *and* server CPU (both run in one task);
//!   no sockets, no ports.
//!
//! `cargo bench --bench hot_path` takes about 1.5 minutes on 2 cores (the pre-warm's 10,000
//! ECDSA signatures about 5 s of it). `cargo test --all-targets` runs each benchmark once with
//! only a few names cached, so it stays fast.

// A benchmark that cannot set itself up has nothing to measure: it stops at once, saying why.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::cell::Cell;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::tls::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use pingora::tls::tokio_ssl::SslStream as ClientTlsStream;
use tenant_edge::certs::manager::CertManager;
use tenant_edge::config::Config;
use tenant_edge::domain::Domain;
use tenant_edge::server::edge::{build_edge, Edge};
use tenant_edge::tls::handshake::EdgeTls;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Names cached before `cert_lookup_10k` when benchmarking (`--bench`).
const BENCH_NAMES: usize = 10_000;
/// Names cached in test mode (`cargo test --all-targets`): enough to exercise the cycling.
const TEST_NAMES: usize = 16;
/// Pre-warm issuances in flight at once (signing is CPU, saving is fsync on blocking threads).
const PREWARM_CONCURRENCY: usize = 64;
/// The SNI the handshake benchmarks send (`n1` is cached by the pre-warm).
const HANDSHAKE_SNI: &str = "n1.tenant.test";

/// True under `cargo bench`; false under `cargo test` (criterion's own rule: it benchmarks when
/// given `--bench` and not `--test`).
fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// An edge with `names` cached, and the runtime the async benchmarks run on.
struct Fixture {
    rt: Runtime,
    edge: Edge,
    /// `n0.tenant.test` …, as the SNI string a ClientHello carries.
    snis: Vec<String>,
    /// The same names, parsed.
    names: Vec<Domain>,
    /// Keeps the data directory (CA, stored certificates) alive for the whole run.
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(count: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let text = format!(
            r#"data_dir: {data}
listen:
  https: 127.0.0.1:8443
tls:
  cache_capacity: {capacity}
allow:
  platform_domains: ["*.tenant.test"]
issuer:
  internal:
    lifetime: 30d
# The pre-warm issues thousands of certificates under one registered domain at once: no order
# rate limit, no weekly budget, no failure backoff.
limits:
  issuance:
    interval: off
    max_concurrent: {concurrency}
    backoff_initial: off
    budget_per_week: off
upstreams:
  pools:
    app:
      backends: ["127.0.0.1:9"]
"#,
            data = dir.path().join("data").display(),
            capacity = (count * 2).max(100),
            concurrency = PREWARM_CONCURRENCY,
        );
        let config = Config::from_yaml(&text, "bench", &|_| None).expect("the bench config");
        let edge = build_edge(&config).expect("build_edge");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let snis: Vec<String> = (0..count).map(|i| format!("n{i}.tenant.test")).collect();
        let names: Vec<Domain> = snis
            .iter()
            .map(|s| Domain::parse(s).expect("a valid bench name"))
            .collect();

        let started = Instant::now();
        rt.block_on(prewarm(&edge.manager, &names));
        eprintln!(
            "hot_path: cached {count} certificates in {:.1?}",
            started.elapsed()
        );
        for name in &names {
            assert!(
                edge.manager.cached(name).is_some(),
                "{name} is not in the memory cache after the pre-warm"
            );
        }
        Fixture {
            rt,
            edge,
            snis,
            names,
            _dir: dir,
        }
    }
}

/// Issue (internal CA), store and cache a certificate for every name, a few at a time.
async fn prewarm(manager: &Arc<CertManager>, names: &[Domain]) {
    let mut tasks = JoinSet::new();
    for name in names {
        if tasks.len() >= PREWARM_CONCURRENCY {
            join_one(&mut tasks).await;
        }
        let (manager, name) = (manager.clone(), name.clone());
        tasks.spawn(async move {
            manager
                .certificate(&name)
                .await
                .map(|_| ())
                .map_err(|e| format!("{name}: {e}"))
        });
    }
    while !tasks.is_empty() {
        join_one(&mut tasks).await;
    }
}

async fn join_one(tasks: &mut JoinSet<Result<(), String>>) {
    match tasks.join_next().await {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => panic!("pre-warm: {e}"),
        Some(Err(e)) => panic!("pre-warm task: {e}"),
    }
}

/// The next index in `0..len`, round robin.
fn next(counter: &Cell<usize>, len: usize) -> usize {
    let i = counter.get();
    counter.set(if i + 1 == len { 0 } else { i + 1 });
    i
}

fn domain_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("domain_parse");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (label, input) in [
        ("lowercase", "shop.tenant.example.com"),
        ("mixed_case", "Shop.Tenant.Example.COM"),
        ("idn", "bücher.example"),
        ("rejected", "bad_name.example"),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(label), input, |b, input| {
            b.iter(|| Domain::parse(std::hint::black_box(input)))
        });
    }
    group.finish();
}

fn cert_lookup(c: &mut Criterion, fixture: &OnceLock<Fixture>, count: usize) {
    let mut group = c.benchmark_group("cert_lookup_10k");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));

    // Exactly what the certificate callback does for a cached name: parse the SNI, decide
    // (platform domains), read the memory cache.
    group.bench_function("handshake_name+certificate", |b| {
        let f = fixture.get_or_init(|| Fixture::new(count));
        let counter = Cell::new(0);
        b.to_async(&f.rt).iter(|| {
            let sni = f.snis[next(&counter, f.snis.len())].as_str();
            let manager = &f.edge.manager;
            async move {
                let name = manager
                    .handshake_name(Some(std::hint::black_box(sni)))
                    .expect("a valid SNI");
                manager
                    .certificate(&name)
                    .await
                    .expect("a cached certificate")
            }
        })
    });

    group.bench_function("cached", |b| {
        let f = fixture.get_or_init(|| Fixture::new(count));
        let counter = Cell::new(0);
        b.iter(|| {
            let name = &f.names[next(&counter, f.names.len())];
            f.edge
                .manager
                .cached(std::hint::black_box(name))
                .expect("a cached certificate")
        })
    });
    group.finish();
}

/// A client that sends `HANDSHAKE_SNI`, does not verify, offers exactly `version` and, when
/// given, only the key-exchange `groups` (OpenSSL's list syntax).
fn client_connector(version: SslVersion, groups: Option<&str>) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("a client context");
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(version))
        .expect("min TLS version");
    b.set_max_proto_version(Some(version))
        .expect("max TLS version");
    if let Some(groups) = groups {
        b.set_groups_list(groups).expect("key-exchange groups");
    }
    b.build()
}

/// One full handshake: the callbacks on the server side, a fresh client session (no resumption).
async fn handshake(acceptor: &SslAcceptor, callbacks: &EdgeTls, connector: &SslConnector) {
    let (client_io, server_io) = tokio::io::duplex(16 * 1024);
    let client = async {
        let mut ssl = Ssl::new(connector.context()).expect("a client Ssl");
        ssl.set_hostname(HANDSHAKE_SNI).expect("set SNI");
        let mut stream = ClientTlsStream::new(ssl, client_io).expect("a client TLS stream");
        Pin::new(&mut stream)
            .connect()
            .await
            .expect("client handshake");
        stream
    };
    let server = handshake_with_callback(acceptor, server_io, callbacks);
    let (client, server) = tokio::join!(client, server);
    let server = server.expect("server handshake");
    assert!(
        !server.ssl().session_reused(),
        "every benchmarked handshake must be a full one"
    );
    drop((client, server));
}

fn tls_handshake(c: &mut Criterion, fixture: &OnceLock<Fixture>, count: usize) {
    let mut group = c.benchmark_group("tls_handshake_cached");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    // `tls13`: the client's default groups. The OpenSSL that Pingora vendors (3.5+) offers and
    // accepts the hybrid post-quantum X25519MLKEM768 first, as current browsers do, so that is
    // what gets negotiated; `tls13_x25519` is the classic exchange (what an OpenSSL 3.0 client,
    // or nginx on Debian 12, negotiates).
    for (label, version, groups) in [
        ("tls13", SslVersion::TLS1_3, None),
        ("tls13_x25519", SslVersion::TLS1_3, Some("X25519")),
        ("tls12", SslVersion::TLS1_2, None),
    ] {
        group.bench_function(label, |b| {
            let f = fixture.get_or_init(|| Fixture::new(count));
            let acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
                .expect("an acceptor")
                .build();
            let callbacks = EdgeTls::new(f.edge.manager.clone(), f.edge.challenges.clone());
            let connector = client_connector(version, groups);
            let name = Domain::parse(HANDSHAKE_SNI).expect("a valid SNI");
            assert!(
                f.edge.manager.cached(&name).is_some(),
                "{HANDSHAKE_SNI} must be cached before the handshake benchmark"
            );
            b.to_async(&f.rt)
                .iter(|| handshake(&acceptor, &callbacks, &connector))
        });
    }
    group.finish();
}

fn main() {
    let count = if benchmarking() {
        BENCH_NAMES
    } else {
        TEST_NAMES
    };
    let mut c = Criterion::default().configure_from_args();
    // Built on first use, so `cargo bench -- domain_parse` skips the 10,000 signatures.
    let fixture = OnceLock::new();
    domain_parse(&mut c);
    cert_lookup(&mut c, &fixture, count);
    tls_handshake(&mut c, &fixture, count);
    c.final_summary();
}
