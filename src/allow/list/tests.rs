use super::*;
use async_trait::async_trait;
use std::sync::atomic::AtomicUsize;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// A source whose answer the test sets: `Some(yes)` or `None` for "unavailable".
struct Scripted {
    answer: Mutex<Option<bool>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl Scripted {
    fn new(answer: Option<bool>) -> Arc<Scripted> {
        Arc::new(Scripted {
            answer: Mutex::new(answer),
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
        })
    }
    fn set(&self, answer: Option<bool>) {
        *self.answer.lock().unwrap() = answer;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl DecisionSource for Scripted {
    fn source(&self) -> Source {
        Source::Database
    }
    async fn allows(&self, _: &Domain) -> Result<bool, DecisionError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Read when asked, answer later: like a query that saw the row before it changed.
        let answer = *self.answer.lock().unwrap();
        tokio::time::sleep(self.delay).await;
        answer.ok_or_else(|| DecisionError::Unavailable {
            what: "database",
            message: "scripted outage".into(),
        })
    }
}

fn list(source: Arc<Scripted>, allowed: u64, denied: u64) -> (AllowList, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new().unwrap());
    let settings = DecisionSettings {
        allowed_ttl: Duration::from_millis(allowed),
        denied_ttl: Duration::from_millis(denied),
        stale_ttl: Duration::from_millis(1),
    };
    let list = AllowList::with_settings(vec![], vec![source], settings, metrics.clone());
    (list, metrics)
}

fn count(metrics: &Metrics, source: &str, result: &str) -> u64 {
    metrics.decisions.with_label_values(&[source, result]).get()
}

#[tokio::test]
async fn platform_patterns_then_sources() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let platform = vec![
        NamePattern::Exact(d("example.com")),
        NamePattern::Below(d("localhost")),
    ];
    let list = AllowList::new(platform.clone(), vec![], metrics.clone());
    assert_eq!(
        list.decide(&d("example.com")).await.unwrap(),
        Decision::Allowed(Source::Platform)
    );
    assert_eq!(
        list.decide(&d("a.b.localhost")).await.unwrap(),
        Decision::Allowed(Source::Platform)
    );
    assert_eq!(
        list.decide(&d("localhost")).await.unwrap(),
        Decision::Denied
    );
    assert_eq!(
        list.decide(&d("www.example.com")).await.unwrap(),
        Decision::Denied
    );
    assert!(list.is_known(&d("example.com")));
    assert!(!list.is_known(&d("www.example.com")));

    let with_db = AllowList::new(platform, vec![Scripted::new(Some(true))], metrics.clone());
    assert_eq!(
        with_db.decide(&d("tenant.test")).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    assert_eq!(count(&metrics, "database", "allowed"), 1);
    // A platform name never reaches the sources.
    assert_eq!(
        with_db.decide(&d("example.com")).await.unwrap(),
        Decision::Allowed(Source::Platform)
    );
    assert_eq!(count(&metrics, "database", "allowed"), 1);
}

#[tokio::test]
async fn yes_and_no_are_cached_with_their_own_ttls() {
    let source = Scripted::new(Some(false));
    let (list, metrics) = list(source.clone(), 60_000, 150);
    let name = d("new.tenant.test");
    assert!(!list.is_known(&name));
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert!(list.is_known(&name));
    source.set(Some(true));
    // The no is still cached.
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert_eq!(source.calls(), 1);
    assert_eq!(count(&metrics, "cache", "denied"), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!list.is_known(&name));
    assert_eq!(
        list.decide(&name).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    // The yes outlives the denied TTL.
    tokio::time::sleep(Duration::from_millis(250)).await;
    source.set(Some(false));
    assert!(list.decide(&name).await.unwrap().is_allowed());
    assert_eq!(source.calls(), 2);
    // `forget` drops it: the next decision asks again.
    list.forget(&name);
    assert!(!list.is_known(&name));
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert_eq!(source.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_one_query() {
    let source = Arc::new(Scripted {
        answer: Mutex::new(Some(true)),
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(100),
    });
    let (list, metrics) = list(source.clone(), 60_000, 60_000);
    let list = Arc::new(list);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let list = list.clone();
        tasks.spawn(async move { list.decide(&d("shop.tenant.test")).await.unwrap() });
    }
    while let Some(decision) = tasks.join_next().await {
        assert_eq!(decision.unwrap(), Decision::Allowed(Source::Database));
    }
    assert_eq!(source.calls(), 1);
    assert_eq!(count(&metrics, "database", "allowed"), 1);
    assert_eq!(count(&metrics, "cache", "allowed"), 19);
}

#[tokio::test]
async fn stale_if_error_then_fail_closed_then_recovery() {
    let source = Scripted::new(Some(true));
    let (list, metrics) = list(source.clone(), 50, 50);
    let known = d("shop.tenant.test");
    assert!(list.decide(&known).await.unwrap().is_allowed());
    tokio::time::sleep(Duration::from_millis(120)).await;

    source.set(None);
    assert_eq!(
        list.decide(&known).await.unwrap(),
        Decision::Allowed(Source::Database)
    );
    assert_eq!(count(&metrics, "database", "stale_allowed"), 1);
    let never = d("never.tenant.test");
    assert_eq!(list.decide(&never).await.unwrap(), Decision::Denied);
    assert_eq!(count(&metrics, "database", "fail_closed"), 1);
    assert_eq!(count(&metrics, "database", "error"), 2);
    // Failures are cached for `stale_ttl` only (1 ms here): then the next call asks again.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!list.is_known(&never));
    source.set(Some(true));
    assert!(list.decide(&never).await.unwrap().is_allowed());
}

#[tokio::test]
async fn a_brownout_costs_one_lookup_per_name_per_stale_ttl() {
    let source = Scripted::new(Some(true));
    let metrics = Arc::new(Metrics::new().unwrap());
    let settings = DecisionSettings {
        allowed_ttl: Duration::from_millis(50),
        denied_ttl: Duration::from_millis(50),
        stale_ttl: Duration::from_millis(300),
    };
    let list = AllowList::with_settings(vec![], vec![source.clone()], settings, metrics.clone());
    let known = d("shop.tenant.test");
    assert!(list.decide(&known).await.unwrap().is_allowed());
    tokio::time::sleep(Duration::from_millis(80)).await;
    source.set(None);
    let before = source.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert!(list.decide(&known).await.unwrap().is_allowed());
        assert_eq!(
            list.decide(&d("new.tenant.test")).await.unwrap(),
            Decision::Denied
        );
    }
    assert_eq!(
        source.calls.load(Ordering::SeqCst) - before,
        2,
        "one failed lookup per name, then the stale answers"
    );
    assert_eq!(count(&metrics, "cache", "stale_allowed"), 19);
    assert_eq!(count(&metrics, "cache", "fail_closed"), 19);
    // After stale_ttl the source is asked again (and recovery shows at once).
    source.set(Some(false));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(list.decide(&known).await.unwrap(), Decision::Denied);
}

#[tokio::test]
async fn a_definitive_no_ends_stale_if_error() {
    let source = Scripted::new(Some(true));
    let (list, metrics) = list(source.clone(), 50, 50);
    let name = d("gone.tenant.test");
    assert!(list.decide(&name).await.unwrap().is_allowed());
    tokio::time::sleep(Duration::from_millis(120)).await;
    source.set(Some(false)); // the company was deactivated
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    tokio::time::sleep(Duration::from_millis(120)).await;
    source.set(None); // then the database went away
    assert_eq!(list.decide(&name).await.unwrap(), Decision::Denied);
    assert_eq!(count(&metrics, "database", "stale_allowed"), 0);
    assert_eq!(count(&metrics, "database", "fail_closed"), 1);
}

#[tokio::test]
async fn forget_during_a_lookup_keeps_its_answer_out_of_the_cache() {
    let source = Arc::new(Scripted {
        answer: Mutex::new(Some(false)),
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(100),
    });
    let (list, _) = list(source.clone(), 60_000, 60_000);
    let list = Arc::new(list);
    let name = d("late.tenant.test");
    let pending = {
        let (list, name) = (list.clone(), name.clone());
        tokio::spawn(async move { list.decide(&name).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    list.forget(&name); // the row changed while the (old) answer was on its way
    source.set(Some(true));
    assert_eq!(pending.await.unwrap(), Decision::Denied);
    assert!(!list.is_known(&name));
    assert!(list.decide(&name).await.unwrap().is_allowed());
    assert_eq!(source.calls(), 2);
}
