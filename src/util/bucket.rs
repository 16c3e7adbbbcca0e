//! A token bucket as plain data.

use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, one more every `interval`. Plain data, no lock and no clock
/// of its own (the caller passes `now`), so that it is cheap to keep one per client address.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: u32,
    /// When `tokens` was last brought up to date (only whole intervals are credited).
    refilled_at: Instant,
}

impl TokenBucket {
    /// A bucket holding `burst` tokens.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            refilled_at: now,
        }
    }

    /// Take one token; `Err(wait)` when empty, `wait` being the time until the next token.
    /// `interval == 0` means unlimited.
    pub fn try_take(
        &mut self,
        interval: Duration,
        burst: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        if interval.is_zero() {
            return Ok(());
        }
        self.refill(interval, burst, now);
        if self.tokens > 0 {
            self.tokens -= 1;
            return Ok(());
        }
        let since = now.saturating_duration_since(self.refilled_at);
        Err(interval.saturating_sub(since))
    }

    fn refill(&mut self, interval: Duration, burst: u32, now: Instant) {
        if self.tokens >= burst {
            self.tokens = burst;
            self.refilled_at = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / interval.as_nanos().max(1);
        let missing = burst - self.tokens;
        if earned >= u128::from(missing) {
            self.tokens = burst;
            self.refilled_at = now;
        } else if earned > 0 {
            // earned < missing <= u32::MAX
            let earned = earned as u32;
            self.tokens += earned;
            self.refilled_at = interval
                .checked_mul(earned)
                .and_then(|d| self.refilled_at.checked_add(d))
                .unwrap_or(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_edges() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        let i = Duration::from_secs(1);
        assert!(b.try_take(i, 2, t0).is_ok());
        assert!(b.try_take(i, 2, t0).is_ok());
        assert_eq!(b.try_take(i, 2, t0), Err(i));
        // Partial intervals are not lost: 0.6s + 0.6s = one token.
        assert!(b.try_take(i, 2, t0 + Duration::from_millis(600)).is_err());
        assert!(b.try_take(i, 2, t0 + Duration::from_millis(1200)).is_ok());
        assert_eq!(
            b.try_take(i, 2, t0 + Duration::from_millis(1200)),
            Err(Duration::from_millis(800))
        );
        // Time going backwards (a bad `now`) does not panic or credit tokens.
        assert!(b.try_take(i, 2, t0).is_err());
    }
}
