//! `access_log:`: where the per-request lines go, and which.

use serde_yaml::Value;

use crate::config::raw;
use crate::config::values::Errors;
use crate::logging::access::{AccessLogSettings, LogTarget};

pub fn build(a: &raw::AccessLog, errs: &mut Errors<'_>) -> Option<AccessLogSettings> {
    let d = AccessLogSettings::default();
    let mut ok = true;
    let enabled = match &a.enabled {
        None => d.enabled,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            errs.push("access_log.enabled", Some(v), "expected true or false");
            ok = false;
            d.enabled
        }
    };
    let target = match &a.path {
        None => d.target,
        Some(Value::String(s)) if s == "stdout" || s == "-" => LogTarget::Stdout,
        Some(v) => match errs.path("access_log.path", v) {
            Some(p) => LogTarget::File(p),
            None => {
                ok = false;
                d.target
            }
        },
    };
    let sample = match &a.sample {
        None => d.sample,
        Some(v) => match v.as_f64() {
            Some(f) if (0.0..=1.0).contains(&f) => f,
            _ => {
                errs.push(
                    "access_log.sample",
                    Some(v),
                    "expected the share of successful requests to log, from 0 to 1 (refusals and errors are always logged)",
                );
                ok = false;
                d.sample
            }
        },
    };
    let query = match &a.query {
        None => d.query,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            errs.push("access_log.query", Some(v), "expected true or false");
            ok = false;
            d.query
        }
    };
    let refusals_per_second =
        a.refusals_per_second
            .as_ref()
            .map_or(Some(d.refusals_per_second), |v| {
                errs.uint("access_log.refusals_per_second", v, 1, 1_000_000)
                    .map(|n| n as u32)
            });
    let settings = AccessLogSettings {
        enabled,
        target,
        sample,
        query,
        refusals_per_second: refusals_per_second?,
    };
    ok.then_some(settings)
}
