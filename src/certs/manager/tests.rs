use super::*;
use crate::allow::pattern::NamePattern;
use crate::certs::disk::DiskStore;
use crate::certs::issuer::internal::InternalCa;
use crate::certs::issuer::{Issued, IssuerKind, KeyType};
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The real internal CA, counting calls and optionally slowed down.
struct Counting {
    ca: Arc<InternalCa>,
    calls: AtomicUsize,
    delay: Duration,
}

#[async_trait]
impl Issuer for Counting {
    fn kind(&self) -> IssuerKind {
        IssuerKind::Internal
    }
    async fn issue(&self, name: &Domain) -> Result<Issued, IssueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.ca.sign(name)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    issuer: Arc<Counting>,
    manager: Arc<CertManager>,
    metrics: Arc<Metrics>,
}

fn fixture_in(
    data: &std::path::Path,
    delay: Duration,
    timeout: Duration,
) -> (Arc<Counting>, Arc<CertManager>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new().unwrap());
    let ca =
        InternalCa::load_or_create(data, Duration::from_secs(3600), KeyType::EcdsaP256).unwrap();
    let issuer = Arc::new(Counting {
        ca,
        calls: AtomicUsize::new(0),
        delay,
    });
    let allow = Arc::new(AllowList::new(
        vec![NamePattern::Below(Domain::parse("localhost").unwrap())],
        vec![],
        metrics.clone(),
    ));
    let store = Arc::new(DiskStore::open(data).unwrap());
    let manager = CertManager::new(
        allow,
        store,
        issuer.clone(),
        ManagerSettings {
            default_name: None,
            issue_timeout: timeout,
            cache_capacity: 1000,
            shared: None,
        },
        crate::limits::issuance::Limits::in_memory(
            crate::limits::issuance::LimitSettings::default(),
        ),
        metrics.clone(),
    );
    (issuer, manager, metrics)
}

fn fixture(delay: Duration, timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (issuer, manager, metrics) = fixture_in(&data, delay, timeout);
    Fixture {
        _dir: dir,
        data,
        issuer,
        manager,
        metrics,
    }
}

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_lookups_issue_once() {
    let f = fixture(Duration::from_millis(50), Duration::from_secs(5));
    let name = d("shop.localhost");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (m, n) = (f.manager.clone(), name.clone());
            tokio::spawn(async move { m.certificate(&n).await })
        })
        .collect();
    for t in tasks {
        let (ck, source) = t.await.unwrap().expect("served");
        assert_eq!(ck.names, vec!["shop.localhost"]);
        assert_ne!(source, CertSource::Disk);
    }
    assert_eq!(f.issuer.calls.load(Ordering::SeqCst), 1);
    let (_, source) = f.manager.certificate(&name).await.unwrap();
    assert_eq!(source, CertSource::Memory);
}

#[tokio::test]
async fn restart_loads_from_disk_without_issuing() {
    let f = fixture(Duration::ZERO, Duration::from_secs(5));
    f.manager.certificate(&d("a.localhost")).await.unwrap();
    let (issuer, manager, _) = fixture_in(&f.data, Duration::ZERO, Duration::from_secs(5));
    let (_, source) = manager.certificate(&d("a.localhost")).await.unwrap();
    assert_eq!(source, CertSource::Disk);
    assert_eq!(issuer.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn corrupt_bundle_is_counted_and_replaced() {
    let f = fixture(Duration::ZERO, Duration::from_secs(5));
    let name = d("b.localhost");
    f.manager.certificate(&name).await.unwrap();
    let bundle = f.data.join("certs/b.localhost/bundle.pem");
    let bytes = std::fs::read(&bundle).unwrap();
    std::fs::write(&bundle, &bytes[..bytes.len() / 2]).unwrap();

    let (issuer, manager, metrics) = fixture_in(&f.data, Duration::ZERO, Duration::from_secs(5));
    let (ck, source) = manager.certificate(&name).await.unwrap();
    assert_eq!(source, CertSource::Issued);
    assert_eq!(ck.names, vec!["b.localhost"]);
    assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
    let corrupt: u64 = ["unparsable", "no_key", "no_certificate"]
        .iter()
        .map(|k| metrics.store_corrupt.with_label_values(&[k]).get())
        .sum();
    assert_eq!(corrupt, 1);
    // The file on disk was replaced by a whole one.
    assert!(CertifiedKey::from_bundle(&std::fs::read(&bundle).unwrap(), Some(&name)).is_ok());
}

#[tokio::test]
async fn a_bundle_for_another_name_is_never_served() {
    let f = fixture(Duration::ZERO, Duration::from_secs(5));
    f.manager.certificate(&d("one.localhost")).await.unwrap();
    let other = f.data.join("certs/two.localhost");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(
        f.data.join("certs/one.localhost/bundle.pem"),
        other.join("bundle.pem"),
    )
    .unwrap();
    let (ck, source) = f.manager.certificate(&d("two.localhost")).await.unwrap();
    assert_eq!(source, CertSource::Issued);
    assert_eq!(ck.names, vec!["two.localhost"]);
    assert_eq!(
        f.metrics
            .store_corrupt
            .with_label_values(&["name_mismatch"])
            .get(),
        1
    );
}

#[tokio::test]
async fn refused_names_write_nothing() {
    let f = fixture(Duration::ZERO, Duration::from_secs(5));
    let err = f.manager.certificate(&d("example.com")).await.unwrap_err();
    assert!(matches!(err, Refusal::NotAllowed(_)), "{err}");
    assert_eq!(f.issuer.calls.load(Ordering::SeqCst), 0);
    let entries = std::fs::read_dir(f.data.join("certs")).unwrap().count();
    assert_eq!(entries, 0);
    assert!(matches!(
        f.manager.handshake_name(None),
        Err(Refusal::NoSni)
    ));
    assert!(matches!(
        f.manager.handshake_name(Some("10.0.0.1")),
        Err(Refusal::BadName(DomainError::IpLiteral))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_outlives_a_handshake_that_gave_up() {
    let f = fixture(Duration::from_millis(400), Duration::from_millis(50));
    let name = d("slow.localhost");
    let err = f.manager.certificate(&name).await.unwrap_err();
    assert!(matches!(err, Refusal::IssueTimeout(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, source) = f.manager.certificate(&name).await.unwrap();
    assert_eq!(source, CertSource::Memory);
    assert_eq!(f.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_renewal_for_a_name_no_longer_allowed_drops_it_and_keeps_its_files() {
    let f = fixture(Duration::ZERO, Duration::from_secs(5));
    let name = d("gone.localhost");
    let (old, _) = f.manager.certificate(&name).await.unwrap();
    // The same data, but an allow-list that no longer has the name.
    let metrics = Arc::new(Metrics::new().unwrap());
    let allow = Arc::new(AllowList::new(
        vec![NamePattern::Exact(d("other.localhost"))],
        vec![],
        metrics.clone(),
    ));
    let manager = CertManager::new(
        allow,
        Arc::new(DiskStore::open(&f.data).unwrap()),
        f.issuer.clone(),
        ManagerSettings {
            default_name: None,
            issue_timeout: Duration::from_secs(5),
            cache_capacity: 100,
            shared: None,
        },
        crate::limits::issuance::Limits::in_memory(
            crate::limits::issuance::LimitSettings::default(),
        ),
        metrics.clone(),
    );
    assert!(matches!(
        manager.renew(&name, &old).await,
        RenewOutcome::NotAllowed
    ));
    assert!(manager.cached(&name).is_none());
    assert!(matches!(
        manager.certificate(&name).await,
        Err(Refusal::NotAllowed(_))
    ));
    assert_eq!(
        metrics
            .renewals
            .with_label_values(&["skipped_not_allowed"])
            .get(),
        1
    );
    assert_eq!(f.issuer.calls.load(Ordering::SeqCst), 1, "no renewal order");
    assert!(
        f.data.join("certs/gone.localhost/bundle.pem").exists(),
        "files stay until expiry"
    );
}
