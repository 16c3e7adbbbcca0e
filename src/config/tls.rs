//! `tls:`: how handshakes get their certificates.

use serde_yaml::Value;

use crate::certs::issuer::KeyType;
use crate::certs::manager::HandshakeSettings;
use crate::config::raw;
use crate::config::values::{opt_duration, secs, Errors};

pub fn build(t: &raw::Tls, errs: &mut Errors<'_>) -> Option<HandshakeSettings> {
    let default_name = t.default_name.as_ref().and_then(|v| match v {
        Value::Null => None,
        v => errs.domain("tls.default_name", v),
    });
    let key_type = t.key_type.as_ref().map_or(Some(KeyType::EcdsaP256), |v| {
        errs.choice(
            "tls.key_type",
            v,
            &[
                ("ecdsa_p256", KeyType::EcdsaP256),
                ("rsa2048", KeyType::Rsa2048),
            ],
        )
    });
    let issue_timeout = opt_duration(errs, "tls.issue_timeout", &t.issue_timeout, secs(10));
    if let Some(d) = issue_timeout {
        if d >= secs(50) {
            errs.push(
                "tls.issue_timeout",
                t.issue_timeout.as_ref(),
                "must be under 50s: Pingora aborts a TLS handshake after 60s",
            );
        }
    }
    let cache_capacity = t.cache_capacity.as_ref().map_or(Some(100_000), |v| {
        errs.uint("tls.cache_capacity", v, 1, 100_000_000)
    });
    let rotation = opt_duration(
        errs,
        "tls.ticket_key_rotation",
        &t.ticket_key_rotation,
        secs(12 * 3600),
    );
    if let Some(r) = rotation {
        if r > secs(24 * 3600) {
            errs.push(
                "tls.ticket_key_rotation",
                t.ticket_key_rotation.as_ref(),
                "must be at most 24h: resumed sessions are only as forward-secret as their key is short-lived",
            );
        }
    }
    Some(HandshakeSettings {
        default_name,
        key_type: key_type?,
        issue_timeout: issue_timeout?,
        cache_capacity: cache_capacity?,
        ticket_key_rotation: rotation?,
    })
}
