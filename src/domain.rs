//! `Domain`: a DNS name that is safe to look up, store and issue for.
//!
//! Every name that reaches the edge (SNI, `Host`, configuration, the CLI) is parsed here once,
//! by these rules: lowercase, one trailing dot stripped, IDNA to ASCII, no IP
//! literals, no empty labels, labels of at most 63 bytes, names of at most 253 bytes, no `*`,
//! letters/digits/hyphens only. Code past this module never re-validates a name.
//!
//! The hot path (an all-ASCII, already-lowercase SNI) does one pass over the bytes and one
//! allocation; only names with uppercase, non-ASCII or `xn--` labels go through `idna`.

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Longest name in presentation form without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A normalized DNS name (lowercase ASCII, no trailing dot). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(Arc<str>);

/// Why a string is not a `Domain`. The variants are stable metric/reason labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("the name is empty")]
    Empty,
    #[error("an IP address is not a DNS name")]
    IpLiteral,
    #[error("wildcard names are not served on demand")]
    Wildcard,
    #[error("the name has an empty label")]
    EmptyLabel,
    #[error("a label is longer than 63 bytes")]
    LabelTooLong,
    #[error("the name is longer than 253 bytes")]
    TooLong,
    #[error("the name contains a character that is not allowed in a host name")]
    BadCharacter,
    #[error("a label starts or ends with a hyphen")]
    BadHyphen,
    #[error("the name is not valid IDNA")]
    Idna,
    #[error("the top-level label is all digits")]
    NumericTld,
}

impl DomainError {
    /// Fixed label for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            DomainError::Empty => "empty",
            DomainError::IpLiteral => "ip_literal",
            DomainError::Wildcard => "wildcard",
            DomainError::EmptyLabel => "empty_label",
            DomainError::LabelTooLong => "label_too_long",
            DomainError::TooLong => "too_long",
            DomainError::BadCharacter => "bad_character",
            DomainError::BadHyphen => "bad_hyphen",
            DomainError::Idna => "idna",
            DomainError::NumericTld => "numeric_tld",
        }
    }
}

impl Domain {
    /// Parse and normalize a name (see the module docs for the rules).
    pub fn parse(input: &str) -> Result<Domain, DomainError> {
        // Bounded before any other work: a 1 MB Host header costs one comparison, not IDNA.
        if input.len() > MAX_NAME_LEN + 1 {
            return Err(DomainError::TooLong);
        }
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(DomainError::Empty);
        }
        if trimmed.contains('*') {
            return Err(DomainError::Wildcard);
        }
        if trimmed.parse::<IpAddr>().is_ok() || (trimmed.starts_with('[') && trimmed.ends_with(']'))
        {
            return Err(DomainError::IpLiteral);
        }
        let needs_idna = trimmed
            .bytes()
            .any(|b| !b.is_ascii() || b.is_ascii_uppercase())
            || trimmed.starts_with("xn--")
            || trimmed.contains(".xn--");
        if !needs_idna {
            check_ascii(trimmed)?;
            return Ok(Domain(Arc::from(trimmed)));
        }
        let ascii = idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::STD3)
            .map_err(|_| DomainError::Idna)?;
        let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
        if ascii.parse::<IpAddr>().is_ok() {
            return Err(DomainError::IpLiteral);
        }
        check_ascii(ascii)?;
        Ok(Domain(Arc::from(ascii)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` is `suffix` itself or a name below it (`a.b.example` under `example`).
    pub fn is_under(&self, suffix: &Domain) -> bool {
        match self.0.strip_suffix(&*suffix.0) {
            Some("") => true,
            Some(rest) => rest.ends_with('.'),
            None => false,
        }
    }

    /// True when `self` is strictly below `suffix` (what `*.suffix` in a config allows).
    pub fn is_strictly_under(&self, suffix: &Domain) -> bool {
        self.0.len() > suffix.0.len() && self.is_under(suffix)
    }
}

/// Validate a lowercase ASCII name label by label.
fn check_ascii(name: &str) -> Result<(), DomainError> {
    if name.len() > MAX_NAME_LEN {
        return Err(DomainError::TooLong);
    }
    let mut last_label = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(DomainError::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(DomainError::BadCharacter);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::BadHyphen);
        }
        last_label = label;
    }
    // `1.2.3.4.5` or `10.0.0.999` are not IP addresses but would be read as one by many
    // resolvers (WHATWG URL rules); a TLD is never all digits.
    if name.contains('.') && last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::NumericTld);
    }
    Ok(())
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", &self.0)
    }
}

impl Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalizes() {
        let cases = [
            ("shop.example.com", "shop.example.com"),
            ("Shop.Example.COM", "shop.example.com"),
            ("shop.example.com.", "shop.example.com"),
            ("localhost", "localhost"),
            ("a-b.c1.example", "a-b.c1.example"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("123.example.com", "123.example.com"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Domain::parse(input).map(|d| d.to_string()),
                Ok(want.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_with_reason() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = format!("{}.example", vec!["a".repeat(60); 5].join("."));
        let cases: Vec<(&str, DomainError)> = vec![
            ("", DomainError::Empty),
            (".", DomainError::Empty),
            ("127.0.0.1", DomainError::IpLiteral),
            ("::1", DomainError::IpLiteral),
            ("[::1]", DomainError::IpLiteral),
            ("*.example.com", DomainError::Wildcard),
            ("a..example.com", DomainError::EmptyLabel),
            ("example.com..", DomainError::EmptyLabel),
            (&long_label, DomainError::LabelTooLong),
            (&long_name, DomainError::TooLong),
            ("bad_name.example", DomainError::BadCharacter),
            ("bad name.example", DomainError::BadCharacter),
            ("-a.example", DomainError::BadHyphen),
            ("a-.example", DomainError::BadHyphen),
            ("1.2.3.4.5", DomainError::NumericTld),
            ("xn--zz.example", DomainError::Idna),
        ];
        for (input, want) in cases {
            assert_eq!(Domain::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn huge_input_is_refused_before_idna() {
        let huge = format!("{}.example", "ü".repeat(500_000));
        let started = std::time::Instant::now();
        assert_eq!(Domain::parse(&huge), Err(DomainError::TooLong));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(Domain::parse(&"a".repeat(255)), Err(DomainError::TooLong));
    }

    #[test]
    fn limits_are_inclusive() {
        let label63 = format!("{}.example", "a".repeat(63));
        assert!(Domain::parse(&label63).is_ok());
        // 253 bytes exactly: 3 labels of 63 + 1 of 61 + 3 dots.
        let name253 = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(name253.len(), 253);
        assert!(Domain::parse(&name253).is_ok());
        assert_eq!(
            Domain::parse(&format!("{name253}x")),
            Err(DomainError::TooLong)
        );
    }

    #[test]
    fn suffix_matching_respects_label_boundaries() {
        let d = |s: &str| Domain::parse(s).expect("valid");
        assert!(d("a.tenant.test").is_under(&d("tenant.test")));
        assert!(d("tenant.test").is_under(&d("tenant.test")));
        assert!(!d("eviltenant.test").is_under(&d("tenant.test")));
        assert!(!d("tenant.test").is_strictly_under(&d("tenant.test")));
        assert!(d("x.y.tenant.test").is_strictly_under(&d("tenant.test")));
    }
}
