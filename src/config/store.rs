//! `store:`: the shared store of several hosts.

use serde_yaml::Value;

use crate::config::raw;
use crate::config::values::{opt_duration, secs, Errors};
use crate::shared::crypto::parse_key;
use crate::shared::SharedSettings;

pub fn build(sh: &raw::Shared, errs: &mut Errors<'_>) -> Option<SharedSettings> {
    let url = match &sh.url {
        Some(v) => errs.url("store.shared.url", v, &["postgres", "postgresql"]),
        None => {
            errs.push(
                "store.shared.url",
                None,
                "is required, for example ${DATABASE_URL}",
            );
            None
        }
    };
    let encryption_key = match &sh.encryption_key_env {
        None => Some(None),
        Some(v) => errs
            .string("store.shared.encryption_key_env", v)
            .and_then(|var| match (errs.env)(&var) {
                None => {
                    errs.push(
                        "store.shared.encryption_key_env",
                        Some(v),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
                // The one decoder of the key (`shared::crypto::parse_key`); never echo it.
                Some(value) => match parse_key(&value) {
                    Ok(key) => Some(Some((key, var))),
                    Err(e) => {
                        errs.push(
                            "store.shared.encryption_key_env",
                            Some(v),
                            format!("{var}: {e}"),
                        );
                        None
                    }
                },
            }),
    };
    let migrate_on_start = match &sh.migrate_on_start {
        None => Some(true),
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            errs.push(
                "store.shared.migrate_on_start",
                Some(v),
                "expected true or false",
            );
            None
        }
    };
    let lock_lease = opt_duration(errs, "store.shared.lock_lease", &sh.lock_lease, secs(120));
    let timeout = opt_duration(errs, "store.shared.timeout", &sh.timeout, secs(5));
    let notify_probe = opt_duration(
        errs,
        "store.shared.notify_probe",
        &sh.notify_probe,
        secs(30),
    );
    let tls_root = sh.tls_root.as_ref().map_or(Some(None), |v| {
        errs.path("store.shared.tls_root", v).map(Some)
    });
    Some(SharedSettings {
        tls_root: tls_root?,
        url: url?,
        encryption_key: encryption_key?,
        migrate_on_start: migrate_on_start?,
        lock_lease: lock_lease?,
        timeout: timeout?,
        notify_probe: notify_probe?,
    })
}
