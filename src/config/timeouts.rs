//! `timeouts:`: how long a client may take.

use crate::config::raw;
use crate::config::values::{opt_duration, Errors};
use crate::http::timeouts::TimeoutSettings;

pub fn build(t: &raw::Timeouts, errs: &mut Errors<'_>) -> Option<TimeoutSettings> {
    let d = TimeoutSettings::default();
    let header = opt_duration(errs, "timeouts.header", &t.header, d.header);
    let idle = opt_duration(errs, "timeouts.idle", &t.idle, d.idle);
    let h2_idle = opt_duration(errs, "timeouts.h2_idle", &t.h2_idle, d.h2_idle);
    let h2_preface = opt_duration(errs, "timeouts.h2_preface", &t.h2_preface, d.h2_preface);
    let body = opt_duration(errs, "timeouts.body", &t.body, d.body);
    let body_min_rate = t.body_min_rate.as_ref().map_or(Some(d.body_min_rate), |v| {
        errs.uint("timeouts.body_min_rate", v, 0, 1 << 30)
    });
    let send = opt_duration(errs, "timeouts.send", &t.send, d.send);
    let tcp_keepalive = opt_duration(
        errs,
        "timeouts.tcp_keepalive",
        &t.tcp_keepalive,
        d.tcp_keepalive,
    );
    for (key, value) in [
        ("timeouts.header", header),
        ("timeouts.idle", idle),
        ("timeouts.h2_idle", h2_idle),
        ("timeouts.h2_preface", h2_preface),
        ("timeouts.body", body),
        ("timeouts.send", send),
        ("timeouts.tcp_keepalive", tcp_keepalive),
    ] {
        if value.is_some_and(|v| v.is_zero()) {
            errs.push(
                key,
                None,
                "must be longer than 0s (0 would close every connection at once)",
            );
        }
    }
    Some(TimeoutSettings {
        header: header?,
        idle: idle?,
        h2_idle: h2_idle?,
        h2_preface: h2_preface?,
        body: body?,
        body_min_rate: body_min_rate?,
        send: send?,
        tcp_keepalive: tcp_keepalive?,
    })
}
