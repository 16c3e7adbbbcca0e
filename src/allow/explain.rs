//! Why a name is allowed or refused, in words: the one explanation behind `tenant-edge allow`,
//! `certs list` and `certs issue`.

use std::fmt;

use crate::allow::decision::Source;
use crate::allow::list::AllowList;
use crate::allow::pattern::NamePattern;
use crate::domain::Domain;

/// What the allow-list says about a name, asked directly (no cache), with the reasons.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// `pattern` is the platform entry that matched (for `Source::Platform`).
    Allowed {
        source: Source,
        pattern: Option<NamePattern>,
    },
    /// Every source answered and none allows the name; `why` has one reason per source.
    Denied { why: Vec<String> },
    /// No source said yes and at least one could not answer.
    Unknown {
        why: Vec<String>,
        errors: Vec<String>,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }

    /// One sentence about `name`: `shop.example is allowed by platform (…)`,
    /// `… is not allowed: reason; reason`.
    pub fn sentence(&self, name: &Domain) -> String {
        match self {
            Verdict::Allowed {
                source,
                pattern: Some(pattern),
            } => format!(
                "{name} is allowed by {} (allow.platform_domains: {pattern})",
                source.label()
            ),
            Verdict::Allowed { source, .. } => format!("{name} is allowed by {}", source.label()),
            Verdict::Denied { why } => format!("{name} is not allowed: {}", why.join("; ")),
            Verdict::Unknown { why, errors } => format!(
                "{name} is not allowed: {}; {} (the edge refuses never-seen names then)",
                why.join("; "),
                errors.join("; ")
            ),
        }
    }
}

/// The short form for tables: `allowed by database`, `not allowed`, `unknown: …`.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allowed { source, .. } => write!(f, "allowed by {}", source.label()),
            Verdict::Denied { .. } => f.write_str("not allowed"),
            Verdict::Unknown { errors, .. } => write!(f, "unknown: {}", errors.join("; ")),
        }
    }
}

/// Ask the platform patterns, then every dynamic source directly (bypassing the cache), and
/// say why.
pub async fn explain(list: &AllowList, name: &Domain) -> Verdict {
    if let Some(pattern) = list.platform_match(name) {
        return Verdict::Allowed {
            source: Source::Platform,
            pattern: Some(pattern.clone()),
        };
    }
    let platform = list.platform();
    let mut why = vec![if platform.is_empty() {
        "allow.platform_domains is empty".to_string()
    } else {
        let patterns: Vec<String> = platform.iter().map(|p| p.to_string()).collect();
        format!(
            "no entry of allow.platform_domains matches ({})",
            patterns.join(", ")
        )
    }];
    if !list.has_sources() {
        why.push("no database or ask URL is configured".into());
    }
    let mut errors = Vec::new();
    for (source, answer) in list.ask_each_source(name).await {
        match answer {
            Ok(true) => {
                return Verdict::Allowed {
                    source,
                    pattern: None,
                }
            }
            Ok(false) => why.push(match source {
                Source::Database => "the database has no active company with this name".into(),
                other => format!("the {} source says no", other.label()),
            }),
            Err(e) => errors.push(format!("{} could not answer: {e}", source.label())),
        }
    }
    if errors.is_empty() {
        Verdict::Denied { why }
    } else {
        Verdict::Unknown { why, errors }
    }
}
