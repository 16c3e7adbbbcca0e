//! Reading one leaf of the file into its type (`SocketAddr`, `Duration`, `Domain`, enums),
//! collecting every problem with its key path instead of stopping at the first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

use crate::allow::pattern::NamePattern;
use crate::config::errors::ConfigError;
use crate::domain::Domain;

/// The errors found so far, and how `${NAME}` is resolved.
pub struct Errors<'e> {
    pub list: &'e mut Vec<ConfigError>,
    pub env: &'e dyn Fn(&str) -> Option<String>,
    /// When set, an unset variable is no error: a placeholder of the right shape stands in and
    /// the variable's name is noted here (for commands that use no secret).
    pub missing: Option<&'e mut Vec<String>>,
}

/// A value of the right shape for the key at `path`, for an unset variable in a command that
/// does not use it.
fn placeholder(path: &str) -> &'static str {
    if path.ends_with("allow.ask.url") {
        "http://unset.invalid/"
    } else if path.ends_with(".url") {
        "postgres://unset@unset.invalid/unset"
    } else if path.contains(".contact[") {
        "unset@example.invalid"
    } else if path.ends_with("hmac_key") {
        "AAAAAAAAAAAAAAAAAAAAAA"
    } else {
        "unset"
    }
}

impl Errors<'_> {
    pub fn push(&mut self, path: &str, value: Option<&Value>, message: impl Into<String>) {
        self.list.push(ConfigError {
            path: path.to_string(),
            value: value.map(show),
            message: message.into(),
        });
    }

    /// A string leaf, with `${VAR}` expanded.
    pub fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                self.push(path, Some(v), "expected a string");
                return None;
            }
        };
        self.expand(path, &s)
    }

    pub fn expand(&mut self, path: &str, s: &str) -> Option<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.push(path, Some(&Value::String(s.into())), "unterminated ${...}");
                return None;
            };
            let name = &after[..end];
            match (self.env)(name) {
                Some(value) => out.push_str(&value),
                None if self.missing.is_some() => {
                    if let Some(missing) = self.missing.as_mut() {
                        missing.push(name.to_string());
                    }
                    return Some(placeholder(path).to_string());
                }
                None => {
                    self.push(
                        path,
                        None,
                        format!(
                            "environment variable {name} is not set (referenced as ${{{name}}})"
                        ),
                    );
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    pub fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        let s = match v {
            Value::String(s) => s.trim(),
            Value::Number(_) => {
                self.push(
                    path,
                    Some(v),
                    "a duration needs a unit, for example 5s, 10m, 1h, 90d",
                );
                return None;
            }
            _ => {
                self.push(
                    path,
                    Some(v),
                    "expected a duration such as 5s, 10m, 1h, 90d",
                );
                return None;
            }
        };
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.push(path, Some(v), "must be greater than zero");
                None
            }
            Err(_) => {
                self.push(
                    path,
                    Some(v),
                    "expected a duration such as 5s, 10m, 1h, 90d",
                );
                None
            }
        }
    }

    pub fn addr(&mut self, path: &str, v: &Value) -> Option<SocketAddr> {
        let s = self.string(path, v)?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    Some(v),
                    "expected IP:port, for example 127.0.0.1:8443 or [::]:443",
                );
                None
            }
        }
    }

    /// One address or a list of them.
    pub fn addrs(&mut self, path: &str, v: &Value) -> Vec<SocketAddr> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.addr(&format!("{path}[{i}]"), item))
                .collect(),
            _ => self.addr(path, v).into_iter().collect(),
        }
    }

    pub fn uint(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.push(
                    path,
                    Some(v),
                    format!("expected a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    pub fn domain(&mut self, path: &str, v: &Value) -> Option<Domain> {
        let s = self.string(path, v)?;
        match Domain::parse(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(path, Some(v), format!("not a valid DNS name: {e}"));
                None
            }
        }
    }

    pub fn pattern(&mut self, path: &str, v: &Value) -> Option<NamePattern> {
        let s = self.string(path, v)?;
        if let Some(suffix) = s.strip_prefix("*.") {
            match Domain::parse(suffix) {
                Ok(d) => Some(NamePattern::Below(d)),
                Err(e) => {
                    self.push(
                        path,
                        Some(v),
                        format!("not a valid `*.suffix` pattern: {e}"),
                    );
                    None
                }
            }
        } else {
            match Domain::parse(&s) {
                Ok(d) => Some(NamePattern::Exact(d)),
                Err(e) => {
                    self.push(
                        path,
                        Some(v),
                        format!("expected a DNS name or `*.suffix` pattern: {e}"),
                    );
                    None
                }
            }
        }
    }

    pub fn url(&mut self, path: &str, v: &Value, schemes: &[&str]) -> Option<String> {
        let s = self.string(path, v)?;
        let ok = schemes.iter().any(|scheme| {
            s.strip_prefix(scheme)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|r| !r.is_empty())
        });
        if ok {
            Some(s)
        } else {
            // Do not echo the value: database URLs carry passwords.
            self.push(
                path,
                None,
                format!("expected a URL starting with {}://", schemes.join("://, ")),
            );
            None
        }
    }

    pub fn choice<T: Copy>(&mut self, path: &str, v: &Value, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(path, v)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(
                    path,
                    Some(v),
                    format!("expected one of: {}", names.join(", ")),
                );
                None
            }
        }
    }

    pub fn path(&mut self, path: &str, v: &Value) -> Option<PathBuf> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            self.push(path, Some(v), "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }
}

/// Render a YAML value for an error message, quoted and shortened.
pub fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    };
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

pub fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        P::Map { parent, key } => {
            let p = format_ignored(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            format_ignored(parent)
        }
    }
}

/// A duration that may also be `off` (zero: the limit is disabled).
pub fn duration_or_off(
    errs: &mut Errors<'_>,
    path: &str,
    v: &Option<Value>,
    default: Duration,
) -> Option<Duration> {
    match v {
        Some(Value::String(s)) if s.trim() == "off" => Some(Duration::ZERO),
        Some(Value::Bool(false)) => Some(Duration::ZERO),
        other => opt_duration(errs, path, other, default),
    }
}

/// Decode base64url (padding optional); `None` on any invalid character.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

pub fn opt_duration(
    errs: &mut Errors<'_>,
    path: &str,
    v: &Option<Value>,
    default: Duration,
) -> Option<Duration> {
    match v {
        Some(v) => errs.duration(path, v),
        None => Some(default),
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
