//! `limits.issuance`: the tunables of the order limits, and their validation.

use std::time::Duration;

use crate::limits::orders::AccountBudget;
use crate::util::time::ShortDuration;

/// Tunables of [`Limits`]. `Default` is what production runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// One new order may start every `interval` on average (global token bucket refill).
    /// Default 2s, the seed's Caddy `interval 2s`. `Duration::ZERO` disables the rate limit.
    pub interval: Duration,
    /// Orders that may start at once after a quiet period (bucket capacity). Default 10: ten
    /// tenants' first requests arriving together all get certificates (the seed's Caddy used 5
    /// and refused the rest); Let's Encrypt itself allows 300 new orders per 3 hours. A
    /// handshake that finds the bucket empty waits for a token, up to `tls.issue_timeout`.
    /// At least 1.
    pub burst: u32,
    /// Orders running at the same time, new and renewals together. Default 10. At least 1.
    pub max_concurrent: usize,
    /// Wait after a name's first failed order; doubled after each further failure. Default 1m.
    /// `Duration::ZERO` disables the backoff.
    pub backoff_initial: Duration,
    /// Longest wait between two orders of a failing name. Default 1h (Let's Encrypt allows 5
    /// failed validations per name per hour).
    pub backoff_max: Duration,
    /// Names whose failure streak is remembered (LRU-ish, bounded memory). Default 10,000. A
    /// streak is forgotten `2 × backoff_max` after its last failure.
    pub backoff_capacity: u64,
    /// New orders per registered domain (`example.co.uk` for `shop.example.co.uk`) in any
    /// 7-day window. Default 45, under Let's Encrypt's 50 certificates per registered domain
    /// per week so that manual issuance and other clients keep a margin. `None` disables the
    /// budget (a private CA without such a limit).
    pub budget_per_week: Option<u32>,
    /// New orders per account in a sliding window, renewals kept a reserve
    /// (`limits::orders`). `None` disables it (a private CA without such a limit).
    pub account: Option<AccountBudget>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            interval: Duration::from_secs(2),
            burst: 10,
            max_concurrent: 10,
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3600),
            backoff_capacity: 10_000,
            budget_per_week: Some(45),
            account: Some(AccountBudget::default()),
        }
    }
}

impl LimitSettings {
    /// Every problem with these values, as `(field, message)`; empty when they are usable. The
    /// config module prefixes the field with its key path.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.burst == 0 {
            problems.push(("burst", "must be at least 1".to_string()));
        }
        if self.max_concurrent == 0 {
            problems.push(("max_concurrent", "must be at least 1".to_string()));
        }
        if self.backoff_initial > self.backoff_max {
            problems.push((
                "backoff_initial",
                format!(
                    "must not exceed backoff_max ({})",
                    ShortDuration(self.backoff_max)
                ),
            ));
        }
        if self.backoff_capacity == 0 {
            problems.push(("backoff_capacity", "must be at least 1".to_string()));
        }
        if let Some(a) = &self.account {
            if a.limit == 0 {
                problems.push((
                    "orders_per_3h",
                    "0 would refuse every order; `off` disables the account budget".to_string(),
                ));
            }
            if a.renewal_reserve >= a.limit {
                problems.push((
                    "renewal_reserve",
                    format!(
                        "must be below orders_per_3h ({}), or no new name could ever be ordered",
                        a.limit
                    ),
                ));
            }
        }
        if self.budget_per_week == Some(0) {
            problems.push((
                "budget_per_week",
                "0 would refuse every order; leave it unset to disable the budget".to_string(),
            ));
        }
        problems
    }
}
