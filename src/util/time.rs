//! Wall-clock seconds and durations as operators read them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A duration in the short form operators read in log lines: `850ms`, `1.4s`, `42s`,
/// `3m12s`, `3h12m`, `2d3h`.
#[derive(Debug, Clone, Copy)]
pub struct ShortDuration(pub Duration);

impl fmt::Display for ShortDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        if secs == 0 {
            return write!(f, "{}ms", d.subsec_millis());
        }
        if secs < 10 {
            return write!(f, "{secs}.{}s", d.subsec_millis() / 100);
        }
        let (m, s) = (secs / 60, secs % 60);
        let (h, m_) = (m / 60, m % 60);
        let (days, h_) = (h / 24, h % 24);
        match (days, h, m) {
            (0, 0, 0) => write!(f, "{s}s"),
            (0, 0, _) if s == 0 => write!(f, "{m}m"),
            (0, 0, _) => write!(f, "{m}m{s}s"),
            (0, _, _) if m_ == 0 => write!(f, "{h}h"),
            (0, _, _) => write!(f, "{h}h{m_}m"),
            _ if h_ == 0 => write!(f, "{days}d"),
            _ => write!(f, "{days}d{h_}h"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations_read_well() {
        let cases = [
            (Duration::from_millis(850), "850ms"),
            (Duration::from_millis(1400), "1.4s"),
            (Duration::from_secs(42), "42s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(192), "3m12s"),
            (Duration::from_secs(3 * 3600 + 12 * 60 + 5), "3h12m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(2 * 86400 + 3 * 3600), "2d3h"),
            (Duration::from_secs(86400), "1d"),
        ];
        for (d, want) in cases {
            assert_eq!(ShortDuration(d).to_string(), want);
        }
    }
}
