//! Platform domains from the config: `example.com` or `*.example.com`.

use std::fmt;

use crate::domain::Domain;

/// An allow-list entry from the config: `example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(Domain),
    /// `*.suffix`: any name strictly below `suffix`, at any depth.
    Below(Domain),
}

impl NamePattern {
    pub fn matches(&self, name: &Domain) -> bool {
        match self {
            NamePattern::Exact(d) => d == name,
            NamePattern::Below(suffix) => name.is_strictly_under(suffix),
        }
    }

    /// The name the pattern is anchored at (`example.com` for both forms).
    pub fn base(&self) -> &Domain {
        match self {
            NamePattern::Exact(d) | NamePattern::Below(d) => d,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(d) => write!(f, "{d}"),
            NamePattern::Below(d) => write!(f, "*.{d}"),
        }
    }
}
