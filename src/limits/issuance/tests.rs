use super::*;
use crate::limits::orders::AccountBudget;

/// A clock tests move by hand.
struct ManualClock {
    start: Instant,
    unix_start: i64,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            unix_start: 1_750_000_000,
            offset: Mutex::new(Duration::ZERO),
        })
    }
    fn advance(&self, d: Duration) {
        *lock(&self.offset) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *lock(&self.offset)
    }
    fn unix_now(&self) -> i64 {
        self.unix_start + lock(&self.offset).as_secs() as i64
    }
}

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn limits(settings: LimitSettings) -> (Limits, Arc<ManualClock>) {
    let clock = ManualClock::new();
    (
        Limits::build(settings, None, clock.clone(), LocalOrderLog::in_memory()),
        clock,
    )
}

/// Only the limit under test is tight.
fn loose() -> LimitSettings {
    LimitSettings {
        interval: Duration::ZERO,
        burst: 1,
        max_concurrent: 1000,
        backoff_initial: Duration::ZERO,
        backoff_max: Duration::ZERO,
        backoff_capacity: 100,
        budget_per_week: None,
        account: None,
    }
}

#[test]
fn defaults_are_the_documented_ones_and_valid() {
    let s = LimitSettings::default();
    assert_eq!(s.interval, Duration::from_secs(2));
    assert_eq!(s.burst, 10);
    assert_eq!(s.max_concurrent, 10);
    assert_eq!(s.backoff_initial, Duration::from_secs(60));
    assert_eq!(s.backoff_max, Duration::from_secs(3600));
    assert_eq!(s.budget_per_week, Some(45));
    assert_eq!(s.account, Some(AccountBudget::default()));
    assert!(s.validate().is_empty());
    let bad = LimitSettings {
        burst: 0,
        max_concurrent: 0,
        backoff_initial: Duration::from_secs(7200),
        budget_per_week: Some(0),
        ..LimitSettings::default()
    };
    let fields: Vec<_> = bad.validate().into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        [
            "burst",
            "max_concurrent",
            "backoff_initial",
            "budget_per_week"
        ]
    );
}

#[test]
fn rate_burst_then_refusal_then_refill() {
    let (l, clock) = limits(LimitSettings {
        interval: Duration::from_secs(2),
        burst: 5,
        ..loose()
    });
    for i in 0..5 {
        l.try_acquire(&d(&format!("n{i}.example.com")))
            .expect("burst")
            .succeeded();
    }
    let err = l.try_acquire(&d("n5.example.com")).unwrap_err();
    assert_eq!(err.kind(), "rate");
    assert_eq!(err.retry_in(), Some(Duration::from_secs(2)));
    assert!(err.to_string().contains("next slot in 2.0s"), "{err}");

    clock.advance(Duration::from_millis(1500));
    let err = l.try_acquire(&d("n5.example.com")).unwrap_err();
    assert_eq!(err.retry_in(), Some(Duration::from_millis(500)));

    clock.advance(Duration::from_millis(500));
    l.try_acquire(&d("n5.example.com"))
        .expect("one refilled")
        .succeeded();
    assert_eq!(
        l.try_acquire(&d("n6.example.com")).unwrap_err().kind(),
        "rate"
    );

    // A long quiet period refills to `burst`, not beyond.
    clock.advance(Duration::from_secs(3600));
    for i in 0..5 {
        l.try_acquire(&d(&format!("m{i}.example.com")))
            .expect("refilled")
            .succeeded();
    }
    assert_eq!(
        l.try_acquire(&d("m5.example.com")).unwrap_err().kind(),
        "rate"
    );
}

#[test]
fn renewals_skip_the_rate_limit_and_the_weekly_budget() {
    let (l, _clock) = limits(LimitSettings {
        interval: Duration::from_secs(2),
        burst: 1,
        budget_per_week: Some(1),
        ..loose()
    });
    l.try_acquire(&d("a.example.com"))
        .expect("token")
        .succeeded();
    assert_eq!(
        l.try_acquire(&d("b.example.com")).unwrap_err().kind(),
        "budget"
    );
    assert_eq!(
        l.try_acquire(&d("b.example.org")).unwrap_err().kind(),
        "rate"
    );
    // The domain's weekly budget is spent, by new names: its renewals go on.
    for name in ["a.example.com", "b.example.com", "c.example.com"] {
        l.try_acquire_renewal(&d(name))
            .expect("renewal")
            .succeeded();
    }
    assert_eq!(l.budget_used(&d("x.example.com")), (1, Some(1)));
}

#[test]
fn zero_interval_means_no_rate_limit() {
    let (l, _clock) = limits(loose());
    for i in 0..100 {
        l.try_acquire(&d(&format!("n{i}.example.com")))
            .expect("unlimited")
            .succeeded();
    }
}

#[test]
fn concurrency_slot_is_released_on_drop() {
    let (l, _clock) = limits(LimitSettings {
        max_concurrent: 2,
        ..loose()
    });
    let a = l.try_acquire(&d("a.example.com")).expect("slot 1");
    let b = l.try_acquire(&d("b.example.com")).expect("slot 2");
    assert_eq!(l.in_flight(), 2);
    let err = l.try_acquire(&d("c.example.com")).unwrap_err();
    assert_eq!(err, Limited::Concurrency { max: 2 });
    assert_eq!(err.kind(), "concurrency");
    assert_eq!(err.retry_in(), None);
    a.succeeded();
    assert_eq!(l.in_flight(), 1);
    let c = l
        .try_acquire(&d("c.example.com"))
        .expect("freed by succeeded");
    drop(b);
    drop(c);
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn a_concurrency_refusal_burns_no_rate_token() {
    let (l, _clock) = limits(LimitSettings {
        interval: Duration::from_secs(60),
        burst: 2,
        max_concurrent: 1,
        ..loose()
    });
    let a = l.try_acquire(&d("a.example.com")).expect("first");
    for _ in 0..10 {
        assert_eq!(
            l.try_acquire(&d("b.example.com")).unwrap_err().kind(),
            "concurrency"
        );
    }
    drop(a);
    l.try_acquire(&d("b.example.com"))
        .expect("second token still there")
        .succeeded();
}

#[test]
fn backoff_grows_caps_and_resets_on_success() {
    let (l, clock) = limits(LimitSettings {
        backoff_initial: Duration::from_secs(60),
        backoff_max: Duration::from_secs(3600),
        ..loose()
    });
    let name = d("shop.example.com");
    let mut expected = Vec::new();
    for failures in 1..=9u32 {
        l.try_acquire(&name).expect("not in backoff").failed();
        let err = l.try_acquire(&name).unwrap_err();
        let Limited::Backoff {
            failures: f,
            retry_in,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*f, failures);
        expected.push(retry_in.as_secs());
        assert_eq!(err.kind(), "backoff");
        // Other names are not affected.
        l.try_acquire(&d("other.example.com"))
            .expect("other name")
            .succeeded();
        clock.advance(*retry_in);
    }
    assert_eq!(expected, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);

    l.try_acquire(&name).expect("backoff over").succeeded();
    l.try_acquire(&name).expect("reset").failed();
    assert_eq!(
        l.try_acquire(&name).unwrap_err().retry_in(),
        Some(Duration::from_secs(60)),
        "a success resets the streak"
    );
}

#[test]
fn a_permit_dropped_without_outcome_counts_as_failed() {
    let (l, _clock) = limits(LimitSettings {
        backoff_initial: Duration::from_secs(60),
        backoff_max: Duration::from_secs(3600),
        budget_per_week: Some(10),
        ..loose()
    });
    drop(l.try_acquire(&d("shop.example.com")).expect("first"));
    assert_eq!(
        l.try_acquire(&d("shop.example.com")).unwrap_err().kind(),
        "backoff"
    );
    assert_eq!(l.budget_used(&d("x.example.com")), (1, Some(10)), "kept");
}

#[test]
fn registered_domains_follow_the_public_suffix_list() {
    let cases = [
        ("shop.cartier.example.com", "example.com"),
        ("example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("www.city.kawasaki.jp", "city.kawasaki.jp"),
        ("shop.tenant.test", "tenant.test"),
        ("alice.github.io", "alice.github.io"),
        ("co.uk", "co.uk"),
        ("localhost", "localhost"),
    ];
    for (name, want) in cases {
        assert_eq!(registered_domain(&d(name)), want, "{name}");
    }
}

#[test]
fn budget_is_shared_per_registered_domain() {
    let (l, clock) = limits(LimitSettings {
        budget_per_week: Some(3),
        ..loose()
    });
    l.try_acquire(&d("a.shop.example.co.uk"))
        .expect("1")
        .succeeded();
    l.try_acquire(&d("b.shop.example.co.uk"))
        .expect("2")
        .succeeded();
    clock.advance(Duration::from_secs(3600));
    l.try_acquire(&d("example.co.uk")).expect("3").succeeded();
    let err = l.try_acquire(&d("c.example.co.uk")).unwrap_err();
    assert_eq!(
        err,
        Limited::Budget {
            registered: "example.co.uk".into(),
            used: 3,
            limit: 3,
            retry_in: BUDGET_WINDOW - Duration::from_secs(3600),
        }
    );
    assert_eq!(
        err.to_string(),
        "example.co.uk has used 3 of 3 orders this week (budget_per_week); \
         next slot in 6d23h"
    );
    // Different registered domains, including siblings under the same suffix, are apart.
    l.try_acquire(&d("shop.other.co.uk"))
        .expect("other domain")
        .succeeded();
    l.try_acquire(&d("shop.example.com"))
        .expect("other suffix")
        .succeeded();
    assert_eq!(l.budget_used(&d("x.example.co.uk")), (3, Some(3)));

    // The window slides: the first two orders leave it after 7 days.
    clock.advance(BUDGET_WINDOW - Duration::from_secs(3600));
    assert_eq!(l.budget_used(&d("x.example.co.uk")), (1, Some(3)));
    l.try_acquire(&d("c.example.co.uk"))
        .expect("slot freed")
        .succeeded();
}

#[test]
fn a_failed_order_gives_its_budget_slot_back() {
    let (l, _clock) = limits(LimitSettings {
        budget_per_week: Some(1),
        ..loose()
    });
    l.try_acquire(&d("a.example.com")).expect("1").failed();
    l.try_acquire(&d("b.example.com"))
        .expect("refunded")
        .succeeded();
    assert_eq!(
        l.try_acquire(&d("c.example.com")).unwrap_err().kind(),
        "budget"
    );
}

#[test]
fn budget_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let settings = LimitSettings {
        budget_per_week: Some(2),
        ..loose()
    };
    let load = || Limits::load_with_clock(dir.path(), settings.clone(), clock.clone()).unwrap();
    let path = dir.path().join("limits").join("budget.json");
    {
        let l = load();
        // No runtime here: the write happens inline.
        l.try_acquire(&d("a.example.com")).expect("1").succeeded();
        l.try_acquire(&d("b.example.com")).expect("2").succeeded();
        l.try_acquire(&d("a.other.com")).expect("3").failed();
    }
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dir_mode.permissions().mode() & 0o777, 0o700);

    let reloaded = load();
    assert_eq!(reloaded.budget_used(&d("x.example.com")), (2, Some(2)));
    assert_eq!(reloaded.budget_used(&d("x.other.com")), (0, Some(2)));
    assert_eq!(
        reloaded
            .try_acquire(&d("c.example.com"))
            .unwrap_err()
            .kind(),
        "budget"
    );

    // A week later the entries have expired, and the next write drops them.
    clock.advance(BUDGET_WINDOW);
    let later = load();
    assert_eq!(later.budget_used(&d("x.example.com")), (0, Some(2)));
    later.flush().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("example.com"), "{text}");
}

#[test]
fn a_corrupt_or_foreign_budget_file_is_treated_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("limits")).unwrap();
    let path = dir.path().join("limits").join("budget.json");
    let settings = LimitSettings {
        budget_per_week: Some(1),
        ..loose()
    };
    let bad: &[&[u8]] = &[
        b"",
        b"{",
        b"\xff\xfe garbage",
        b"[]",
        b"{\"version\":2,\"window_secs\":604800,\"orders\":{}}",
        b"{\"version\":1,\"window_secs\":604800,\"orders\":{\"example.com\":\"x\"}}",
        b"{\"version\":1,\"window_secs\":604800,\"orders\":{},\"extra\":1}",
    ];
    for content in bad {
        std::fs::write(&path, content).unwrap();
        let l = Limits::load(dir.path(), settings.clone()).unwrap();
        assert_eq!(l.budget_used(&d("a.example.com")), (0, Some(1)));
        l.try_acquire(&d("a.example.com"))
            .expect("empty budget")
            .succeeded();
        // ... and the file is valid again.
        let again = Limits::load(dir.path(), settings.clone()).unwrap();
        assert_eq!(again.budget_used(&d("a.example.com")), (1, Some(1)));
    }
    // A directory in place of the file: logged, empty, no panic.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let l = Limits::load(dir.path(), settings).unwrap();
    assert_eq!(l.budget_used(&d("a.example.com")), (0, Some(1)));
    let permit = l.try_acquire(&d("a.example.com")).expect("in memory");
    assert!(l.flush().is_err());
    drop(permit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_runtime_the_budget_is_written_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let settings = LimitSettings {
        budget_per_week: Some(100),
        ..loose()
    };
    let l = Limits::load(dir.path(), settings.clone()).unwrap();
    for i in 0..50 {
        l.try_acquire(&d(&format!("n{i}.example.com")))
            .expect("budget")
            .succeeded();
    }
    let path = dir.path().join("limits").join("budget.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reloaded = Limits::load(dir.path(), settings.clone()).unwrap();
        if reloaded.budget_used(&d("x.example.com")).0 == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "budget never reached the disk");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(path.is_file());
}
